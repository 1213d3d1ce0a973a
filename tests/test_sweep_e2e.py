"""End to end with the real trainer on CPU: plan -> run -> kill -9 -> resume -> export -> report,
and runs branched from shared trunks equal (bit for bit) the same runs trained alone."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("torch")


def _sweep_file(tmp_path, data):
    spec = {
        "name": "e2e",
        "base": {
            "model": {"vocab_size": 512, "seq_len": 32, "d_model": 32, "n_layers": 2,
                      "n_heads": 2},
            "data": {"path": str(data), "val_tokens": 2048},
            "optim": {"lr": 3e-3, "batch_size": 8},
            "tokens": 8 * 32 * 40,
            "eval_every": 8 * 32 * 40,  # evaluate at the end only (fast)
            "device": "cpu",
            "compile": "off",
        },
        "bits": [4],
        "fractions": [0, 0.25, 1],
        "schedules": ["fused", "standard"],
    }
    p = tmp_path / "e2e.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_real_sweep_kill_resume_export_report(tiny_data, tmp_path, capsys):
    from coqat.cli import main
    from coqat.sweep.executor import register, run_sweep
    from coqat.sweep.store import Store

    sweep = _sweep_file(tmp_path, tiny_data)
    assert main(["sweep", "plan", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 1 shared FP trunks" in out and "branch steps [24, 30, 32]" in out

    store, root = tmp_path / "s.db", tmp_path / "root"
    info = register(sweep, store, root, version="e2e")
    assert info["new"] == 4
    cmd = [sys.executable, "-m", "coqat.sweep.worker", str(store), str(root),
           "--code-version", "e2e", "--poll", "0.1"]
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    st = Store(store)
    deadline = time.time() + 120
    while st.counts()["done"] < 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    p.kill()  # kill -9 in the middle of the sweep
    p.wait()
    assert st.integrity_check() == "ok"
    c = st.counts()
    assert 1 <= c["done"] < 4, c

    res = run_sweep(sweep, store, root, progress=False, version="e2e", poll_s=0.1)
    assert res["counts"]["done"] == 4 and res["registered"] == 0
    rows = st.rows()
    for r in rows:  # the store holds exactly what the run folder says
        disk = json.loads((root / r["run_dir"] / "result.json").read_text())
        assert r["loss"] == disk["loss"] and r["D_qat"] == disk["D_qat"]
        assert r["device"] == "cpu"
    assert sum(1 for r in rows if r["trunk"]) == 3
    assert all(json.loads(r["result"])["branched_from"] for r in rows if r["trunk"])

    # export -> law runs table -> report
    assert main(["results", "export", "--store", str(store), "--out",
                 str(tmp_path / "runs.csv")]) == 0
    from coqat.law import Runs

    assert len(Runs.from_any(tmp_path / "runs.csv")) == 4
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and "href=" not in html

    # branch == independent: the same sweep trained with no sharing gives identical losses
    alone = run_sweep(sweep, tmp_path / "alone.db", tmp_path / "alone", progress=False,
                      version="e2e", share=False)
    assert alone["counts"]["done"] == 4
    with Store(tmp_path / "alone.db") as st2:
        rows2 = {r["key"]: r for r in st2.rows()}
    assert set(rows2) == {r["key"] for r in rows}  # keys do not depend on sharing
    for r in rows:
        a = rows2[r["key"]]
        assert a["trunk"] is None
        assert r["loss"] == a["loss"], (r["f"], r["schedule"], r["loss"], a["loss"])
        assert r["loss_fp"] == a["loss_fp"] or (r["loss_fp"] is None and a["loss_fp"] is None)
    st.close()
