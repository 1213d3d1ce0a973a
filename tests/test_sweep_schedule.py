"""Claim order (longest first), time limits, efficiency measurement, ``sweep plan --estimate``
and attempts under preemption, with the fake engine (``COQAT_FAKE_TOKENS_PER_S`` makes its
runs take tokens / rate seconds, so the estimates can be exact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from helpers import BASE, events, make_store, runs_of

from coqat.sweep.estimate import Estimator, format_schedule, left_over, simulate
from coqat.sweep.store import Store, new_owner, own_tokens
from coqat.sweep.throughput import tokens_per_s
from coqat.sweep.tree import plan_sweep

STEP = 8 * 64  # tokens per step of the helpers' runs


def exact_efficiency(rate: float, slots_per_device: int = 1) -> float:
    """The efficiency that makes the estimate of a fake run at ``rate`` exact."""
    return rate / tokens_per_s(runs_of()[0]) * slots_per_device


def fake_rate(monkeypatch, tmp_path, rate: float, **extra) -> None:
    monkeypatch.setenv("COQAT_FAKE_TOKENS_PER_S", str(rate))
    monkeypatch.setenv("COQAT_FAKE_LOG", str(tmp_path / "events.log"))
    for k, v in extra.items():
        monkeypatch.setenv(k, str(v))


def labels_of(st: Store) -> dict[str, str]:
    return {r["key"]: f"B={r['bits']:g} f={r['f_requested']:g} {r['schedule']} D={r['D_total']}"
            for r in st.rows()}


# ---------------------------------------------------------------------- claim order
def test_longest_run_first_ties_in_registration_order(tmp_path):
    runs = runs_of(bits=[4], fractions=[1], tokens=[STEP * 50, STEP * 200, STEP * 100],
                   seeds=[0, 1])
    st = make_store(tmp_path, runs)
    got = []
    while (c := st.claim(new_owner(), version="v")) is not None:
        cfg = c.config
        got.append((cfg["tokens"] // STEP, cfg["seed"]))
    assert got == [(200, 0), (200, 1), (100, 0), (100, 1), (50, 0), (50, 1)]


def test_trunk_with_its_runs_against_a_longer_lone_run(tmp_path):
    st = make_store(tmp_path)  # trunk to step 80 + 6 branches (250 steps) vs lone runs of 100
    assert st.claim(new_owner(), version="v").kind == "trunk"
    runs = runs_of() + runs_of(bits=[4], fractions=[1], tokens=[STEP * 400])
    st2 = make_store(tmp_path / "b", runs)
    first = st2.claim(new_owner(), version="v")
    assert first.kind == "run" and first.config["tokens"] == STEP * 400
    assert st2.claim(new_owner(), version="v").kind == "trunk"


def test_branches_are_claimed_while_the_trunk_trains_on(tmp_path):
    st = make_store(tmp_path)
    t = st.claim(new_owner(), version="v")
    lone = [st.claim(new_owner(), version="v") for _ in range(2)]
    assert all(c.kind == "run" and c.trunk is None for c in lone)
    assert st.claim(new_owner(), version="v") is None  # the rest waits for checkpoints
    st.trunk_step_ready(t, 60, tmp_path / "c60")
    r = st.claim(new_owner(), version="v")  # the trunk is still running: its branch goes now
    assert r.branch_step == 60 and r.start_from == str(tmp_path / "c60")
    assert st.trunks()[0]["status"] == "running"


def test_budget_leaves_what_does_not_fit(tmp_path):
    st = make_store(tmp_path)
    est = Estimator(efficiency=exact_efficiency(STEP * 100))  # 100 steps = 1 s
    assert st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=0.5) is None
    left = {(x["kind"], round(x["est_s"], 3)) for x in st.left}
    assert left == {("trunk", 0.6), ("run", 1.0)}  # the trunk's first segment: 60 steps
    c = st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=0.7)
    assert c.kind == "trunk" and c.est_s == pytest.approx(0.6)
    assert st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=0.7) is None
    c = st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=1.0)
    assert c.kind == "run" and c.trunk is None


# ---------------------------------------------------------------------- estimates
def test_efficiency_is_measured_from_finished_runs(tmp_path, monkeypatch):
    from coqat.sweep.worker import work

    rate = 200_000.0
    fake_rate(monkeypatch, tmp_path, rate)
    st = make_store(tmp_path, runs_of(bits=[4], fractions=[1, 0.25], schedules=["fused"]))
    est = Estimator(efficiency=0.123, device_of=lambda d: "fake")
    row = st.rows()[0]
    guess = est.seconds(row, 1000)
    assert guess == pytest.approx(1000 / (tokens_per_s(runs_of()[0]) * 0.123))
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None)
    measured = est.measure(st)
    assert measured[("fake", "tiny")] == pytest.approx(exact_efficiency(rate), rel=1e-6)
    assert est.seconds(row, 1000) == pytest.approx(1000 / rate, rel=1e-6)
    # a worker that shared its device with another records it: the device did twice the work
    half = Estimator(slots_per_device=2, device_of=lambda d: "fake")
    with st.tx() as db:
        for r in st.rows(("done",)):
            res = json.loads(r["result"]) | {"slots_per_device": 2}
            db.execute("UPDATE runs SET result=? WHERE key=?", (json.dumps(res), r["key"]))
    half.measure(st)
    assert half.seconds(row, 1000) == pytest.approx(1000 / rate, rel=1e-6)
    # a run that does not say how many workers shared its device (imported) is no measurement
    with st.tx() as db:
        for r in st.rows(("done",)):
            res = {k: v for k, v in json.loads(r["result"]).items() if k != "slots_per_device"}
            db.execute("UPDATE runs SET result=? WHERE key=?", (json.dumps(res), r["key"]))
    assert Estimator(device_of=lambda d: "fake").measure(st) == {}


def test_simulation_matches_the_claim_order_of_a_worker(tmp_path, monkeypatch):
    """One worker, no limit: the runs train in the order simulate() predicts."""
    from coqat.sweep.worker import work

    rate = STEP * 2000.0  # a 100-step run takes 0.05 s
    fake_rate(monkeypatch, tmp_path, rate)
    runs = runs_of() + runs_of(bits=[3], fractions=[1], tokens=[STEP * 150])
    st = make_store(tmp_path, runs)
    est = Estimator(efficiency=exact_efficiency(rate))
    sched = simulate(plan_sweep(runs), est, workers=1)
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None,
         efficiency=exact_efficiency(rate))
    label = labels_of(st)
    ran = [label[e[1]] for e in events(tmp_path) if e[0] == "start"]

    def lab(cfg):
        return f"B={cfg.qat.bits:g} f={cfg.qat.fraction:g} {cfg.qat.schedule} D={cfg.tokens}"

    predicted = [lab(plan_sweep(runs).runs[int(p.key)].cfg) for p in sched.pieces
                 if p.kind == "run"]
    assert ran == predicted and len(ran) == len(runs)
    assert sched.pieces[0].kind == "trunk" and not sched.left
    assert sched.wall_s == pytest.approx((80 + 2 * 85 + 200 + 150) * STEP / rate)


def test_simulation_leaves_what_does_not_fit():
    runs = runs_of()
    est = Estimator(efficiency=exact_efficiency(STEP * 100))  # 100 steps = 1 s
    sched = simulate(plan_sweep(runs), est, workers=2, budget_s=1.5)
    # worker 0: trunk to 60/75/80 (0.8 s), then branches; worker 1: a lone run (1 s)
    by = Counter(p.worker for p in sched.pieces)
    assert by[0] >= 3 and by[1] >= 1
    assert all(p.end <= 1.5 + 1e-9 for p in sched.pieces)
    assert sched.left and all("does not fit" in why for _, why in sched.left)
    text = format_schedule(sched)
    assert "estimate on 2 worker(s)" in text and "would not fit" in text


def test_plan_estimate_cli(tmp_path, capsys):
    from coqat.cli import main

    spec = {"name": "est", "base": BASE, "sizes": ["tiny"], "bits": [2, 4],
            "fractions": [0, 0.25, 1], "schedules": ["fused", "standard"]}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    rate = STEP * 100
    assert main(["sweep", "plan", str(f), "--estimate", "--slots", "2", "--devices", "2",
                 "--time-limit", "1.5", "--tokens-per-s", str(rate), "--efficiency", "1"]) == 0
    out = capsys.readouterr().out
    assert "estimate on 2 worker(s)" in out and "left:" in out and "worker 1:" in out
    assert main(["sweep", "plan", str(f), "--estimate", "--slots", "4", "--devices", "2",
                 "--tokens-per-s", str(rate), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["estimate"]["workers"] == 4 and d["estimate"]["left"] == []
    assert d["estimate"]["runs"] == 8


# ---------------------------------------------------------------------- time limits
def test_time_limit_checks_each_trunk_segment(tmp_path, monkeypatch):
    """The trunk's first segment fits, its second does not: the trunk goes back to pending
    with its first checkpoint ready; everything left is pending and says why; the next call
    resumes the trunk from that checkpoint."""
    from coqat.sweep.worker import work

    rate = STEP / 0.02  # 0.02 s a step: segments 0-50 1.0 s, 50-75 0.5 s, 75-80 0.1 s
    fake_rate(monkeypatch, tmp_path, rate)
    st = make_store(tmp_path, runs_of(bits=[4], fractions=[0, 0.25, 0.5], schedules=["fused"]))
    eff = exact_efficiency(rate)
    deadline = time.time() + 1.45
    stats = work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01,
                 log=lambda m: None, deadline=deadline, efficiency=eff)
    assert stats == {"trunk_steps": 1, "trunk_left": 1}
    assert time.time() < deadline  # it stopped, it did not wait
    t = st.trunks()[0]
    assert t["status"] == "pending" and t["owner"] is None and t["attempts"] == 0
    assert sorted(st.trunk_ready_steps(t["key"])) == [50]
    assert st.counts()["pending"] == 3 and st.counts()["running"] == 0
    est = Estimator(efficiency=eff)
    left = {round(x["est_s"], 2): x["reason"] for x in left_over(st, est, budget_s=0.2)}
    # f = 0.5 branches at 50: 50 steps of its own; the others wait for the segments 50-75/80
    assert left[1.0] == "not started (est. 1.0s, 0.2s left)"
    assert left[0.5].startswith("waits for trunk") and left[0.6].startswith("waits for trunk")
    assert "step 75: est. 0.5s, 0.2s left" in left[0.5]
    work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None,
         efficiency=eff)
    assert st.counts()["done"] == 3
    segs = [e[1].split("@")[1] for e in events(tmp_path) if e[0] == "segment"]
    assert segs == ["0-50", "50-75", "75-80"]


def test_cli_time_limit_two_workers_two_gpus(tmp_path, monkeypatch, capsys):
    """The lead's command: --slots 2 --devices auto --time-limit T on a machine of two GPUs
    (CUDA_VISIBLE_DEVICES=0,1; the fake engine ignores it): what fits is done before the
    limit, the rest is left pending with reasons, exit 0; the next call finishes the sweep and
    trains nothing twice."""
    from coqat.cli import main

    rate = STEP * 100 / 0.4  # a 100-step run: 0.4 s; all the work: 0.32 + 6 x 0.34 + 4 x 0.4
    fake_rate(monkeypatch, tmp_path, rate)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    spec = {"name": "lim", "base": BASE, "sizes": ["tiny"], "bits": [2, 4],
            "fractions": [0, 0.25, 1], "schedules": ["fused", "standard"], "seeds": [0, 1]}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    store, root = tmp_path / "s.db", tmp_path / "root"
    t0 = time.time()
    args = ["sweep", "run", str(f), "--store", str(store), "--root", str(root), "--slots", "2",
            "--devices", "auto", "--engine", "fake", "--no-progress",
            "--efficiency", str(exact_efficiency(rate))]
    assert main([*args, "--time-limit", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "runs left pending" in out
    assert "the time limit was reached" in out or "s left)" in out  # the reason is given
    with Store(store, readonly=True) as st:
        rows = st.rows()
        assert {r["status"] for r in rows} <= {"done", "pending"}
        done = [r for r in rows if r["status"] == "done"]
        # the estimates are exact; what ends later is overhead (a loaded 2-core machine), far
        # less than the ~3 s more the whole sweep takes
        late = max(r["finished"] for r in done) - (t0 + 1.5)
        assert late <= 0.8, late
        assert len(done) < len(rows)
    logs = [(root / "logs" / f"worker-{i}.log").read_text() for i in range(2)]
    assert "CUDA_VISIBLE_DEVICES=0\n" in logs[0] and "CUDA_VISIBLE_DEVICES=1\n" in logs[1]
    assert main(args) == 0
    with Store(store, readonly=True) as st:
        assert st.counts()["done"] == 16
    ends = Counter(e[1] for e in events(tmp_path) if e[0] == "end")
    assert len(ends) == 16 and set(ends.values()) == {1}


def test_kill_at_the_deadline_loses_nothing_completed(tmp_path):
    """kill -9 the whole `coqat sweep run` (driver and workers) as an outer time limit would;
    every run whose result was written is done after the next call, none trained twice."""
    spec = {"name": "kill", "base": BASE, "sizes": ["tiny"], "bits": [2, 4],
            "fractions": [0, 0.25, 1], "schedules": ["fused", "standard"]}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    store, root = tmp_path / "s.db", tmp_path / "root"
    env = os.environ | {"COQAT_FAKE_TOKENS_PER_S": str(STEP * 100 / 0.3),
                        "COQAT_FAKE_LOG": str(tmp_path / "events.log")}
    cmd = [sys.executable, "-m", "coqat.cli", "sweep", "run", str(f), "--store", str(store),
           "--root", str(root), "--slots", "2", "--devices", "none", "--engine", "fake",
           "--no-progress", "--time-limit", "600"]
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(e[0] == "end" for e in events(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    finished = {e[1] for e in events(tmp_path) if e[0] == "end"}
    assert finished
    with Store(store, readonly=True) as st:
        assert st.integrity_check() == "ok"
        assert st.counts()["done"] < 8
    r = subprocess.run(cmd[:-2] + ["--slots", "1"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    ends = Counter(e[1] for e in events(tmp_path) if e[0] == "end")
    assert len(ends) == 8 and set(ends.values()) == {1}  # nothing completed was lost
    with Store(store, readonly=True) as st:
        for row in st.rows():
            disk = json.loads((root / row["run_dir"] / "result.json").read_text())
            assert row["status"] == "done" and row["loss"] == disk["loss"]


# ---------------------------------------------------------------------- preemption
def test_attempts_count_only_deaths_without_a_new_checkpoint(tmp_path):
    from coqat.sweep.worker import progress_marker

    st = make_store(tmp_path, runs_of(fractions=[1], bits=[4]))
    root = tmp_path / "root"

    def progress_of(kind, folder):
        return progress_marker(root / folder)

    def die(n):  # n claims whose (remote) worker dies: the lease ends at once
        for i in range(n):
            c = st.claim(f"gone-host:{i}:x", version="v", lease_s=0.0, max_attempts=2,
                         progress_of=progress_of)
            assert c is not None
        return c

    c = die(2)
    rdir = root / c.run_dir
    rdir.mkdir(parents=True)
    (rdir / "checkpoint.pt").write_text("step 10")  # the attempts made progress
    c = die(2)  # the limit is reached again, but a checkpoint was written: a new count
    assert st.rows()[0]["attempts"] == 2 and st.rows()[0]["status"] == "running"
    # two more deaths without a new checkpoint: a crash loop, given up
    assert st.claim(new_owner(), version="v", max_attempts=2, progress_of=progress_of) is None
    row = st.rows()[0]
    assert row["status"] == "failed" and "without progress" in row["error"]
    assert own_tokens(row, branched=False) == STEP * 100


def _kill_loop(tmp_path, env, max_attempts, rounds, window):
    cmd = [sys.executable, "-m", "coqat.sweep.worker", str(tmp_path / "s.db"),
           str(tmp_path / "root"), "--engine", "fake", "--code-version", "v", "--poll", "0.05",
           "--lease", "30", "--max-attempts", str(max_attempts)]
    kills = 0
    with Store(tmp_path / "s.db", readonly=True) as st:
        for _ in range(rounds):
            c = st.counts()
            if c["pending"] + c["running"] == 0:
                break
            p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
            time.sleep(window)
            if p.poll() is None:
                p.kill()
                kills += 1
            p.wait()
    return kills


def test_preempted_trunk_resumes_from_its_periodic_checkpoint(tmp_path):
    """A worker killed every ~0.9 s (a preemptible cluster): the trunk needs 1.6 s to its first
    branch, so without periodic checkpoints it would restart from zero every time; with them
    every kill loses at most 0.1 s, nothing uses up its 2 attempts, and the sweep finishes."""
    st = make_store(tmp_path, runs_of(bits=[4], fractions=[0, 0.25], schedules=["fused"]))
    env = os.environ | {"COQAT_FAKE_TOKENS_PER_S": str(STEP / 0.02),  # trunk to 75: 1.5 s
                        "COQAT_FAKE_CHECKPOINT_S": "0.1",
                        "COQAT_FAKE_LOG": str(tmp_path / "events.log")}
    kills = _kill_loop(tmp_path, env, max_attempts=2, rounds=30, window=0.9)
    assert kills >= 2
    assert st.counts()["done"] == 2 and st.counts()["failed"] == 0
    segs = [e[1].split("@")[1] for e in events(tmp_path) if e[0] == "segment"]
    assert any(not s.startswith("0-") for s in segs), segs  # resumed past step 0
    assert st.trunks()[0]["status"] in ("done", "pending")


def test_kill_loop_without_checkpoints_gives_up(tmp_path):
    """The same kill loop without checkpoints: no attempt makes progress, so after 2 the trunk
    fails (its runs then train alone) -- attempts still stop a crash loop."""
    st = make_store(tmp_path, runs_of(bits=[4], fractions=[0, 0.25], schedules=["fused"]))
    env = os.environ | {"COQAT_FAKE_TOKENS_PER_S": str(STEP / 0.02),
                        "COQAT_FAKE_LOG": str(tmp_path / "events.log")}
    _kill_loop(tmp_path, env, max_attempts=2, rounds=3, window=0.9)
    t = st.trunks()[0]
    assert t["status"] == "failed" and "without progress" in t["error"]


def test_real_engine_leaves_what_cannot_fit(tiny_data, tmp_path, capsys):
    """The real engine on CPU under a time limit nothing fits in: nothing is claimed, every run
    is left pending with its reason, the command exits 0 and the store stays consistent."""
    pytest.importorskip("torch")
    from coqat.cli import main

    spec = {"name": "real", "base": {
        "model": {"vocab_size": 512, "seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2},
        "data": {"path": str(tiny_data), "val_tokens": 2048}, "optim": {"batch_size": 8},
        "tokens": 8 * 32 * 40, "device": "cpu", "compile": "off"},
        "bits": [4], "fractions": [0, 0.25, 1], "schedules": ["fused"]}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    store = tmp_path / "s.db"
    assert main(["sweep", "run", str(f), "--store", str(store), "--root", str(tmp_path / "r"),
                 "--no-progress", "--time-limit", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "3 runs left pending" in out and out.count("not started (est.") >= 1
    with Store(store, readonly=True) as st:
        assert st.counts()["pending"] == 3 and st.counts()["running"] == 0
        assert all(r["attempts"] == 0 for r in st.rows())
        assert st.trunks()[0]["status"] == "pending"


def test_one_worker_finishes_a_grid_before_the_next_trunk(tmp_path):
    """Branches whose checkpoint is ready go before another trunk: a single worker under a time
    limit banks whole grids one after another instead of training every trunk first."""
    runs = runs_of(bits=[4], fractions=[0.25, 0.5], schedules=["fused"])
    runs += runs_of(bits=[4], fractions=[0.25, 0.5], schedules=["fused"], tokens=[STEP * 120])
    st = make_store(tmp_path, runs)
    t1 = st.claim(new_owner(), version="v")
    assert t1.kind == "trunk"
    for s in st.trunk_needed_steps(t1.key):
        st.trunk_step_ready(t1, s, tmp_path / f"c{s}")
    st.finish_trunk(t1)
    nxt = st.claim(new_owner(), version="v")
    assert nxt.kind == "run" and nxt.trunk == t1.key  # not the other grid's trunk


def test_cli_several_sweep_files_two_gpus(tmp_path, monkeypatch, capsys):
    """`coqat sweep run A.yaml B.yaml --slots 2 --devices auto`: both files registered under
    their own names, one pool of workers trains every run of both exactly once, the summary
    counts both; a third sweep already in the store is left as it is."""
    from coqat.cli import main

    monkeypatch.setenv("COQAT_FAKE_DELAY", "0.01")
    monkeypatch.setenv("COQAT_FAKE_LOG", str(tmp_path / "events.log"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    files = []
    for name, bits in (("a", [2]), ("b", [4]), ("other", [3])):
        spec = {"name": name, "base": BASE, "sizes": ["tiny"], "bits": bits,
                "fractions": [0, 0.25, 1], "schedules": ["fused"]}
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(spec))
    store, root = tmp_path / "s.db", tmp_path / "root"
    with Store(store) as st:  # registered earlier, not named in the command: stays pending
        from coqat.sweep.spec import load_runs

        st.register(load_runs(files[2])[1], "other", root, version="v")
    args = ["sweep", "run", str(files[0]), str(files[1]), "--store", str(store), "--root",
            str(root), "--slots", "2", "--devices", "auto", "--engine", "fake", "--no-progress",
            "--code-version", "v"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep a, b: 6 new runs registered; 6 done" in out
    with Store(store, readonly=True) as st:
        assert st.sweeps() == ["a", "b", "other"]
        assert st.counts(sweep="a")["done"] == 3 and st.counts(sweep="b")["done"] == 3
        assert st.counts(sweep="other")["pending"] == 3
    ends = Counter(e[1] for e in events(tmp_path) if e[0] == "end")
    assert len(ends) == 6 and set(ends.values()) == {1}
