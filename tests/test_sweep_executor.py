"""Executors (local slots are in test_store.py): SLURM via submitit, progress output."""

from __future__ import annotations

import io
import os
import sys

import pytest
from helpers import make_store, runs_of


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch):
    from coqat.errors import CoqatError
    from coqat.sweep.executor import run_sweep

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(CoqatError, match="pip install submitit"):
        run_sweep(runs_of(), tmp_path / "s.db", tmp_path / "root", executor="slurm",
                  progress=False, engine="fake")
    assert not (tmp_path / "s.db").exists()  # nothing registered before the check


def test_slurm_job_array_with_submitit_local_cluster(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from coqat.sweep.executor import run_sweep

    monkeypatch.setenv("COQAT_FAKE_DELAY", "0.02")
    res = run_sweep(runs_of(), tmp_path / "s.db", tmp_path / "root", slots=2, progress=False,
                    engine="fake", executor="slurm", version="v", poll_s=0.05,
                    slurm={"cluster": "local", "timeout_min": 5})
    assert len(res["jobs"]) == 2 and res["counts"]["done"] == 8


def test_progress_snapshot_and_log_lines(tmp_path):
    from coqat.sweep.progress import Monitor, log_line, render, snapshot
    from coqat.sweep.store import new_owner

    st = make_store(tmp_path)
    c = st.claim(new_owner(), version="v")
    assert c.kind == "trunk"
    r = st.claim(new_owner(), version="v")  # an f = 1 run
    snap = snapshot(tmp_path / "s.db", tokens_per_s=1000.0)
    assert snap["counts"]["running"] == 1 and snap["counts"]["pending"] == 7
    assert snap["running"][0]["key"] == r.key
    # remaining tokens: 2 lone runs of 100 steps + 6 branches after steps 60/75/80 (twice)
    own = (2 * 100 + 2 * (40 + 25 + 20)) * 512
    assert snap["eta_s"] == pytest.approx(own / 1000.0)
    assert "1 running, 7 pending" in log_line(snap)
    render(snap)  # a rich renderable
    buf = io.StringIO()
    with Monitor(tmp_path / "s.db", interval=0.05, stream=buf):
        import time

        time.sleep(0.2)
    assert "0 done, 1 running, 7 pending" in buf.getvalue()


def test_engine_names():
    from coqat.sweep import fake
    from coqat.sweep.worker import engine_name, load_engine

    assert load_engine("fake") is fake
    assert engine_name("real") == "coqat.train.run"
    assert engine_name(fake) == "coqat.sweep.fake"
    assert os.path.basename(fake.__file__) == "fake.py"


def test_parse_devices(monkeypatch):
    from coqat.errors import CoqatError
    from coqat.sweep.executor import parse_devices, worker_env

    assert parse_devices("0, 2") == ["0", "2"] and parse_devices(["1"]) == ["1"]
    assert parse_devices("none") is None and parse_devices(None) is None
    with pytest.raises(CoqatError, match="--devices: 'cuda:0' is not allowed"):
        parse_devices("cuda:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # auto keeps the parent's GPUs
    assert parse_devices("auto") == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")  # one GPU: nothing to spread
    assert parse_devices("auto") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU
    assert parse_devices("auto") is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setitem(sys.modules, "torch", None)  # no torch: the environment as is
    assert parse_devices("auto") is None
    gpus = ["0", "1"]
    assert [worker_env(i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, None)


def test_local_workers_spread_over_devices(tmp_path, monkeypatch):
    """--devices 0,1 with three slots: the workers see GPU 0, 1, 0 (their logs say so) and the
    sweep finishes as without devices; SLURM refuses an explicit list."""
    from coqat.errors import CoqatError
    from coqat.sweep.executor import run_sweep

    monkeypatch.setenv("COQAT_FAKE_DELAY", "0.02")
    res = run_sweep(runs_of(), tmp_path / "s.db", tmp_path / "root", slots=3, progress=False,
                    engine="fake", version="v", poll_s=0.05, devices="0,1")
    assert res["counts"]["done"] == 8
    logs = tmp_path / "root" / "logs"
    seen = [(logs / f"worker-{i}.log").read_text() for i in range(3)]
    for text, gpu in zip(seen, ("0", "1", "0")):
        assert f"on CUDA_VISIBLE_DEVICES={gpu}\n" in text
    with pytest.raises(CoqatError, match="devices: only for the local executor"):
        run_sweep(runs_of(), tmp_path / "t.db", tmp_path / "root2", slots=2, progress=False,
                  engine="fake", executor="slurm", devices="0,1")
