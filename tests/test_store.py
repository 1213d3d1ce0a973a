"""Results store: claims, leases, completion, schema versions, export; concurrent workers and
REAL kill -9 tests with the fake engine (coqat.sweep.fake)."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers import BASE, events, fake_env, make_store, runs_of, worker_cmd

from coqat.sweep.store import SCHEMA_VERSION, Store, StoreError, new_owner


# ------------------------------------------------------------------------------ basics
def test_register_is_idempotent(tmp_path):
    st = make_store(tmp_path)
    assert st.counts()["pending"] == 8
    again = st.register(runs_of(), "t", tmp_path / "root", version="v")
    assert again["new"] == 0 and again["known"] == 8
    assert st.counts()["pending"] == 8
    # a different code version is a different set of runs
    other = st.register(runs_of(), "t", tmp_path / "root", version="w")
    assert other["new"] == 8
    assert st.counts(version="v")["pending"] == 8
    assert st.integrity_check() == "ok"


def test_claim_lease_complete(tmp_path):
    from coqat.config import from_dict
    from coqat.sweep import fake
    from coqat.train.config import RunConfig

    st = make_store(tmp_path, runs_of(fractions=[0.25], schedules=["fused"], bits=[4]))
    a, b = new_owner("a"), new_owner("b")
    c = st.claim(a, version="v")
    assert c is not None and c.kind == "run" and c.trunk is None  # a lone run has no trunk
    assert st.claim(b, version="v") is None  # the only run is leased
    assert st.heartbeat(c, 60)
    res = fake.record(from_dict(RunConfig, c.config))
    assert st.complete(c.key, res)
    assert not st.complete(c.key, res | {"loss": 0.0})  # written exactly once
    row = st.rows()[0]
    assert row["status"] == "done" and row["loss"] == res["loss"] and row["owner"] is None
    assert st.claim(b, version="v") is None  # done runs are never handed out again
    assert not st.heartbeat(c, 60)
    assert st.reset(("failed",)) == 0  # reset only touches the statuses given
    assert st.rows()[0]["status"] == "done"


def test_trunk_first_then_branches(tmp_path):
    st = make_store(tmp_path)
    o = new_owner()
    c = st.claim(o, version="v")
    assert c.kind == "trunk"
    needed = st.trunk_needed_steps(c.key)
    assert needed == [60, 75, 80]
    # while the trunk is leased, only runs without a trunk (f = 1) can be claimed
    got = []
    while (r := st.claim(new_owner(), version="v")) is not None:
        got.append(r)
    assert len(got) == 2 and all(r.trunk is None for r in got)
    st.trunk_step_ready(c, 60, tmp_path / "x60")
    r = st.claim(new_owner(), version="v")
    assert r.kind == "run" and r.branch_step == 60 and r.start_from == str(tmp_path / "x60")
    assert st.trunk_needed_steps(c.key) == [75, 80]


def test_expired_lease_is_taken_over(tmp_path):
    st = make_store(tmp_path, runs_of(fractions=[1], bits=[4]))
    remote = "some-other-host:1234:x"  # not this host: only the lease can free it
    c = st.claim(remote, version="v", lease_s=0.2)
    assert st.claim(new_owner(), version="v") is None
    time.sleep(0.3)
    c2 = st.claim(new_owner("b"), version="v")
    assert c2 is not None and c2.key == c.key
    assert st.rows()[0]["attempts"] == 2
    assert not st.heartbeat(c, 60)  # the first owner lost it


def test_dead_owner_on_this_host_is_taken_over(tmp_path):
    st = make_store(tmp_path, runs_of(fractions=[1], bits=[4]))
    code = (
        "import sys; from coqat.sweep.store import Store, new_owner; "
        "st = Store(sys.argv[1]); c = st.claim(new_owner(), version='v', lease_s=3600); "
        "print(c.key)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.db")],
                         capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    row = st.rows()[0]
    assert row["status"] == "running" and row["lease_until"] > time.time() + 3000
    c = st.claim(new_owner(), version="v")  # the owner process is gone: no need to wait
    assert c is not None and c.key == key


def test_failed_and_diverged_are_recorded(tmp_path):
    from coqat.sweep.worker import work

    runs = runs_of(fractions=[0.25], schedules=["fused"], bits=[4], seeds=[0, 7])
    runs += runs_of(fractions=[0.5], schedules=["fused"], bits=[4],
                    base=BASE | {"optim": {"batch_size": 8, "lr": 2.0}})
    st = make_store(tmp_path, runs)
    os.environ["COQAT_FAKE_FAIL_SEED"] = "7"
    try:
        work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    finally:
        del os.environ["COQAT_FAKE_FAIL_SEED"]
    by = {(r["seed"], r["f_requested"]): r for r in st.rows()}
    assert by[(0, 0.25)]["status"] == "done"
    assert by[(7, 0.25)]["status"] == "failed"
    assert "fake failure for seed 7" in by[(7, 0.25)]["error"]
    assert by[(0, 0.5)]["status"] == "diverged" and by[(0, 0.5)]["loss"] is None
    # failed runs are not retried unless reset
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    assert st.counts()["failed"] == 1
    assert st.reset() == 1
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    assert st.counts()["done"] == 2


def test_failed_trunk_runs_train_alone(tmp_path):
    from types import SimpleNamespace

    from coqat.sweep import fake
    from coqat.sweep.worker import work

    def broken_trunk(*a, **k):
        raise RuntimeError("trunk exploded")

    st = make_store(tmp_path)
    eng = SimpleNamespace(execute=fake.execute, train_trunk=broken_trunk)
    work(tmp_path / "s.db", engine=eng, version="v", poll_s=0.01, log=lambda m: None)
    assert st.counts()["done"] == 8
    assert st.trunks()[0]["status"] == "failed" and "trunk exploded" in st.trunks()[0]["error"]


def test_max_attempts(tmp_path):
    st = make_store(tmp_path, runs_of(fractions=[1], bits=[4]))
    for i in range(3):
        c = st.claim(f"gone-host:{i}:x", version="v", lease_s=0.0, max_attempts=3)
        assert c is not None
    assert st.claim(new_owner(), version="v", max_attempts=3) is None
    row = st.rows()[0]
    assert row["status"] == "failed" and "gave up after 3 attempts" in row["error"]


def test_incompatible_schema_version(tmp_path):
    make_store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError) as e:
        Store(tmp_path / "s.db")
    assert "99" in str(e.value) and f"schema version {SCHEMA_VERSION}" in str(e.value)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE x (a)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a coqat results store"):
        Store(other)
    with pytest.raises(StoreError, match="no such results store"):
        Store(tmp_path / "missing.db", create=False)


def test_export_csv_parquet_read_by_law(tmp_path):
    from coqat.sweep.worker import work

    st = make_store(tmp_path)
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    recs = st.to_records()
    assert len(recs) == 8
    assert list(recs[0])[:6] == ["N", "D_fp", "D_qat", "bits", "loss", "cluster"]
    assert len({r["cluster"] for r in recs}) == 1  # one model, data order and seed
    csv_p = st.export(tmp_path / "runs.csv")
    pq_p = st.export(tmp_path / "runs.parquet")
    from coqat.law.runs import Runs

    for p in (csv_p, pq_p):
        runs = Runs.from_any(p)
        assert len(runs) == 8
        assert sorted(runs.loss.tolist()) == sorted(r["loss"] for r in recs)
        assert (runs.D_fp + runs.D_qat == 8 * 64 * 100).all()


# ------------------------------------------------------------------------------ processes
def test_concurrent_workers_never_run_the_same_run(tmp_path):
    runs = runs_of(bits=[2, 3, 4], fractions=[0, 0.25, 0.5, 1])
    st = make_store(tmp_path, runs)
    env = fake_env(tmp_path, delay=0.05)
    procs = [subprocess.Popen(worker_cmd(tmp_path), env=env, stderr=subprocess.DEVNULL)
             for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    ev = events(tmp_path)
    starts = Counter(e[1] for e in ev if e[0] == "start")
    ends = Counter(e[1] for e in ev if e[0] == "end")
    keys = {r["key"] for r in st.rows()}
    assert set(starts) == keys and all(v == 1 for v in starts.values())
    assert all(v == 1 for v in ends.values()) and not [e for e in ev if e[0] == "double"]
    trunk_steps = Counter(e[1] for e in ev if e[0] == "trunk")
    assert all(v == 1 for v in trunk_steps.values())
    assert st.counts()["done"] == len(runs)


def test_local_executor_slots(tmp_path):
    from coqat.sweep.executor import run_sweep

    os.environ.update(COQAT_FAKE_DELAY="0.03", COQAT_FAKE_LOG=str(tmp_path / "events.log"))
    try:
        res = run_sweep(runs_of(bits=[2, 4], fractions=[0, 0.25, 0.5, 1]), tmp_path / "s.db",
                        tmp_path / "root", slots=2, progress=False, engine="fake", version="v",
                        poll_s=0.05)
    finally:
        del os.environ["COQAT_FAKE_DELAY"], os.environ["COQAT_FAKE_LOG"]
    assert res["counts"]["done"] == 12 and res["registered"] == 12
    starts = Counter(e[1] for e in events(tmp_path) if e[0] == "start")
    assert len(starts) == 12 and set(starts.values()) == {1}
    assert len(list((tmp_path / "root" / "logs").glob("worker-*.log"))) == 2
    # trunk checkpoints are dropped once all their runs are finished
    assert not list((tmp_path / "root" / "trunks").rglob("step_*"))
    # re-running the sweep trains nothing
    res2 = run_sweep(runs_of(bits=[2, 4], fractions=[0, 0.25, 0.5, 1]), tmp_path / "s.db",
                     tmp_path / "root", slots=1, progress=False, engine="fake", version="v")
    assert res2["registered"] == 0 and res2["counts"]["done"] == 12


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_random_moments_then_resume(tmp_path, seed):
    """kill -9 a worker (several times) at random moments; resume; every run done exactly once."""
    rnd = random.Random(seed)
    runs = runs_of(bits=[2, 3, 4], fractions=[0, 0.1, 0.25, 0.5, 0.75, 1])
    st = make_store(tmp_path, runs)
    env = fake_env(tmp_path, delay=0.1)
    kills = 0
    for _ in range(5):
        p = subprocess.Popen(worker_cmd(tmp_path), env=env, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.3, 1.0))
        if p.poll() is None:
            p.kill()  # SIGKILL
            kills += 1
        p.wait()
        assert st.integrity_check() == "ok"
    assert kills >= 3
    assert st.counts()["done"] < len(runs)  # the kills did interrupt the sweep
    # resume with two workers
    procs = [subprocess.Popen(worker_cmd(tmp_path), env=env, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    ev = events(tmp_path)
    assert not [e for e in ev if e[0] == "double"], "a run was completed twice"
    ends = Counter(e[1] for e in ev if e[0] == "end")
    assert all(v == 1 for v in ends.values())
    trunk_steps = Counter(e[1] for e in ev if e[0] == "trunk")
    assert all(v == 1 for v in trunk_steps.values())
    rows = st.rows()
    assert len(rows) == len(runs) and {r["status"] for r in rows} == {"done"}
    for r in rows:
        on_disk = json.loads((tmp_path / "root" / r["run_dir"] / "result.json").read_text())
        assert r["loss"] == on_disk["loss"]
        assert r["owner"] is None and r["attempts"] >= 1
    # the kills hit claimed work, which was taken over after the worker died
    assert sum(r["attempts"] - 1 for r in rows) + sum(t["attempts"] - 1 for t in st.trunks()) >= 1
    assert st.integrity_check() == "ok"
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_sigterm_gives_the_claim_back(tmp_path):
    st = make_store(tmp_path, runs_of(fractions=[1], bits=[2, 4]))
    env = fake_env(tmp_path, delay=5.0)
    p = subprocess.Popen(worker_cmd(tmp_path), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while st.counts()["running"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    p.terminate()
    assert p.wait(timeout=20) == 130
    c = st.counts()
    assert c["running"] == 0 and c["pending"] == 2
    assert all(r["attempts"] == 0 for r in st.rows())


def test_status_and_export_cli(tmp_path, capsys):
    from coqat.cli import main
    from coqat.sweep.worker import work

    make_store(tmp_path).close()
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    assert main(["sweep", "status", "--store", str(tmp_path / "s.db")]) == 0
    assert "8 done" in capsys.readouterr().out
    out = tmp_path / "r.parquet"
    assert main(["results", "export", "--store", str(tmp_path / "s.db"), "--out", str(out)]) == 0
    assert out.exists()
    assert main(["results", "export", "--store", str(tmp_path / "s.db"), "--format", "csv",
                 "--out", str(tmp_path / "r.txt")]) == 0
    assert (tmp_path / "r.txt").read_text().startswith("N,D_fp,D_qat,bits,loss,cluster")


def test_release_owner_gives_back_every_claim_of_that_owner(tmp_path):
    """A worker interrupted between a claim's commit and its own release code (a signal in that
    window) still gives the claim back: release_owner frees whatever the owner holds."""
    st = make_store(tmp_path, runs_of(fractions=[1], bits=[2, 4]))
    a = st.claim("host:1:a", version="v")
    b = st.claim("host:2:b", version="v")
    assert a is not None and b is not None
    assert st.release_owner("host:1:a") == 1
    rows = {r["key"]: r for r in st.rows()}
    assert rows[a.key]["status"] == "pending" and rows[a.key]["attempts"] == 0
    assert rows[b.key]["status"] == "running"  # another owner's claim is left alone
    assert st.release_owner("host:1:a") == 0
