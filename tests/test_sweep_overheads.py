"""Overheads in the time estimates (coqat.sweep.throughput.overheads): a GPU piece pays the
compilation of each graph its worker process has not trained yet, plus a per-piece overhead;
deadline claims and ``sweep plan --estimate`` count them. CPU only: the configs say
``device: cuda`` and nothing trains on it."""

from __future__ import annotations

import time

import pytest
from helpers import BASE, make_store, runs_of

from coqat.sweep.estimate import Estimator, simulate
from coqat.sweep.store import new_owner
from coqat.sweep.throughput import bench_table, overheads
from coqat.sweep.tree import plan_sweep

GPU = BASE | {"device": "cuda"}
STEP = 8 * 64
RATE = STEP * 100.0  # --tokens-per-s: a 100-step run trains in 1 s


def gpu_runs(**kw):
    return runs_of(**({"base": GPU} | kw))


def test_the_table_holds_the_overheads_per_size():
    rows = {r["size"]: r for r in bench_table()["overheads"]["rows"]}
    ladder = GPU | {"model": {"vocab_size": 8192, "seq_len": 512}}  # the table's shapes
    cfg = gpu_runs(sizes=["17m"], bits=[4], fractions=[0.25], schedules=["fused"],
                   base=ladder)[0]
    ov = overheads(cfg)
    assert ov["compile_qat_s"] == rows["17m"]["compile_qat_s"] > 0
    assert ov["compile_fp_s"] == rows["17m"]["compile_fp_s"] > 0
    assert ov["piece_s"] == rows["17m"]["piece_s"] > 0
    assert ov["process_start_s"] == bench_table()["overheads"]["process_start_s"]
    cpu = runs_of(sizes=["17m"], bits=[4], fractions=[0.25], schedules=["fused"],
                  base=ladder | {"device": "cpu"})[0]
    assert set(overheads(cpu).values()) == {0.0}  # CPU_FLOPS already includes them


def test_first_run_of_a_shape_in_a_worker_includes_its_compile_time():
    r4, r4b, r2 = gpu_runs(bits=[4, 2], fractions=[0.25], schedules=["fused"], seeds=[0, 1])[:3]
    assert (r4.qat.bits, r4b.qat.bits, r2.qat.bits) == (4, 4, 2) and r4b.seed == 1
    est = Estimator(table=RATE)
    ov = overheads(r4)
    # not branched: FP steps and QAT steps, two graphs to compile
    first = est.overhead_s("run", r4)
    assert first == pytest.approx(ov["piece_s"] + ov["compile_fp_s"] + ov["compile_qat_s"])
    est.trained("run", r4)
    assert est.overhead_s("run", r4b) == pytest.approx(ov["piece_s"])  # same graphs: compiled
    # another bit width: its QAT graph is new, the FP graph of the shape is not
    assert est.overhead_s("run", r2) == pytest.approx(ov["piece_s"] + ov["compile_qat_s"])
    # a trunk of the shape: its FP graph is compiled already
    assert est.overhead_s("trunk", r2) == pytest.approx(ov["piece_s"])
    assert Estimator(table=RATE).overhead_s("trunk", r2) == pytest.approx(
        ov["piece_s"] + ov["compile_fp_s"])
    off = gpu_runs(bits=[4], fractions=[0.25], schedules=["fused"],
                   base=GPU | {"compile": "off"})[0]
    assert Estimator(table=RATE).overhead_s("run", off) == pytest.approx(ov["piece_s"])


def test_deadline_claim_refuses_work_whose_compile_would_overrun(tmp_path):
    runs = gpu_runs(bits=[4], fractions=[1], schedules=["fused"])  # QAT only, 1 s of tokens
    st = make_store(tmp_path, runs)
    est = Estimator(table=RATE, efficiency=1.0)
    ov = overheads(runs[0])
    with_compile = 1.0 + ov["piece_s"] + ov["compile_qat_s"]
    budget = 1.0 + ov["piece_s"] + 1.0  # the tokens fit; with the compile they do not
    assert st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=budget,
                    overhead=est.row_overhead_s) is None
    assert [(x["kind"], pytest.approx(x["est_s"])) for x in st.left] == [("run", with_compile)]
    # a worker process that trained this graph already claims it
    est.trained("run", runs[0])
    c = st.claim(new_owner(), version="v", seconds=est.seconds, budget_s=budget,
                 overhead=est.row_overhead_s)
    assert c is not None and c.kind == "run"


def test_worker_under_a_deadline_leaves_a_run_whose_compile_does_not_fit(tmp_path):
    from coqat.sweep.worker import work

    st = make_store(tmp_path, gpu_runs(bits=[4], fractions=[1], schedules=["fused"]))
    ov = overheads(gpu_runs(bits=[4], fractions=[1], schedules=["fused"])[0])
    deadline = time.time() + ov["compile_qat_s"] / 2  # the tokens (0.01 s) fit, the compile not
    stats = work(tmp_path / "s.db", engine="fake", version="v", poll_s=0.01, log=lambda m: None,
                 deadline=deadline, tokens_per_s=RATE * 100, efficiency=1.0)
    assert stats == {} and time.time() < deadline
    assert st.counts()["pending"] == 1 and st.counts()["done"] == 0


def test_plan_estimate_counts_process_start_and_compile_once_per_worker():
    runs = gpu_runs(bits=[4], fractions=[1], schedules=["fused"], seeds=[0, 1, 2])
    est = Estimator(table=RATE, efficiency=1.0)
    ov = overheads(runs[0])
    sched = simulate(plan_sweep(runs), est, workers=1)
    pieces = sorted(sched.pieces, key=lambda p: p.start)
    assert pieces[0].start == pytest.approx(ov["process_start_s"])
    assert pieces[0].est_s == pytest.approx(1.0 + ov["piece_s"] + ov["compile_qat_s"])
    assert [p.est_s for p in pieces[1:]] == pytest.approx([1.0 + ov["piece_s"]] * 2)
    # two workers: each process compiles the graph once
    two = simulate(plan_sweep(runs), est, workers=2)
    firsts = {}
    for p in sorted(two.pieces, key=lambda p: p.start):
        firsts.setdefault(p.worker, p.est_s)
    assert set(firsts) == {0, 1}
    assert all(s == pytest.approx(1.0 + ov["piece_s"] + ov["compile_qat_s"])
               for s in firsts.values())
    # a limit the tokens fit in but not the compile: nothing is claimed
    short = simulate(plan_sweep(runs), est, workers=1,
                     budget_s=ov["process_start_s"] + 3 * (1.0 + ov["piece_s"]))
    assert len(short.left) == 3 and not short.pieces
