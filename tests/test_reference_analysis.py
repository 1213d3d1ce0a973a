"""Fast checks of experiments/reference/analyze.py: the f* refinement and the self-consistency of
its summary on the committed session-1 results (no loss-law fits here: those run in the script)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parents[1] / "experiments" / "reference"


@pytest.fixture(scope="module")
def an():
    spec = importlib.util.spec_from_file_location("reference_analyze", REF / "analyze.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def summary(an):
    return an.analyze(with_laws=False)


F = np.array([0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_analyze_does_not_import_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('a', {str(REF / 'analyze.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.next_session_plan(m.bench_throughput(), 0.5)\n"
        "m.fstar_table(m.dedupe_grid(m.load_records())[0])\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("x0", [0.13, 0.37, 0.5, 0.71])
def test_parabola_recovers_vertex(an, x0):
    loss = 2.0 + 3.0 * (F - x0) ** 2
    r = an.refine_fstar(F, loss)
    assert r["refined"] and not r["at_endpoint"]
    assert r["f_refined"] == pytest.approx(x0, abs=1e-9)
    assert r["loss_refined"] == pytest.approx(2.0, abs=1e-9)
    i = int(np.argmin(loss))
    assert r["f_grid"] == F[i]
    assert r["spacing"] == pytest.approx((F[i + 1] - F[i - 1]) / 2)


def test_parabola_vertex_three_points(an):
    xv, yv, a = an.parabola_vertex([0.2, 0.4, 0.6], [1.3, 1.1, 1.2])
    assert a > 0 and 0.2 <= xv <= 0.6 and yv <= 1.1
    # collinear points: no vertex, middle point returned
    assert an.parabola_vertex([0, 1, 2], [1, 2, 3])[0] == 1.0


def test_endpoints_and_order(an):
    down = 3.0 - F  # minimum at f = 1
    r = an.refine_fstar(F, down)
    assert r["at_endpoint"] and r["f_refined"] == 1.0 and not r["refined"]
    assert r["spacing"] == pytest.approx(0.2)
    r = an.refine_fstar(F[::-1], (1.0 + F)[::-1])  # unsorted input, minimum at f = 0
    assert r["f_refined"] == 0.0 and r["at_endpoint"] and r["spacing"] == pytest.approx(0.1)


def test_refined_stays_in_bracket_random(an):
    rng = np.random.default_rng(0)
    for _ in range(200):
        loss = rng.normal(size=F.size)
        r = an.refine_fstar(F, loss)
        i = int(np.argmin(loss))
        if 0 < i < F.size - 1:
            assert F[i - 1] <= r["f_refined"] <= F[i + 1]
            assert r["loss_refined"] <= loss[i] + 1e-12


def _raw_full_grids(decay: str) -> set[tuple]:
    """(size, bits, D_total, seed) of fused default-knob groups of one decay basis with >= 6
    fractions, read straight from the committed result files (independently of analyze.py)."""
    fr: dict[tuple, set] = {}
    want = {} if decay == "qat" else {"qat.cooldown_of": decay}
    for p in sorted((REF / "results").glob("session*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if (
                r["experiment"] == "grid"
                and r["schedule"] == "fused"
                and (r.get("overrides") or {}) == want
            ):
                k = (r["size"], float(r["bits"]), int(r["D_total"]), int(r["seed"]))
                fr.setdefault(k, set()).add(round(r["f"], 3))
    return {k for k, v in fr.items() if len(v) >= 6}


def test_dedupe_keeps_complete_grid_and_fills_gaps(an):
    def rec(file, order, f, loss, **kw):
        return {
            "experiment": "grid",
            "size": "2m",
            "bits": 4.0,
            "D_total": 100,
            "schedule": "fused",
            "seed": 0,
            "f": f,
            "loss": loss,
            "_file": file,
            "_order": order,
            **kw,
        }

    records = [
        rec("a.jsonl", 0, 0.0, 1.0),
        rec("a.jsonl", 1, 0.1, 2.0),  # cut short
        rec("b.jsonl", 2, 0.0, 1.1),
        rec("b.jsonl", 3, 0.2, 1.2),
        rec("b.jsonl", 4, 0.4, 1.3),
        rec("b.jsonl", 5, 0.2, 9.0, overrides={"qat.cooldown": 0.4}),  # another group
        rec("b.jsonl", 6, 0.2, 8.0, overrides={"qat.cooldown_of": "total"}),  # another decay
    ]
    kept, pairs = an.dedupe_grid(records)
    got = {(r["_file"], r["f"], r["loss"]) for r in kept}
    # b is the complete grid; a's f = 0.1 fills a gap; a's f = 0 is a replicate of b's
    assert got == {
        ("b.jsonl", 0.0, 1.1),
        ("a.jsonl", 0.1, 2.0),
        ("b.jsonl", 0.2, 1.2),
        ("b.jsonl", 0.4, 1.3),
        ("b.jsonl", 0.2, 9.0),
        ("b.jsonl", 0.2, 8.0),
    }
    assert [(a["_file"], b["_file"]) for a, b in pairs] == [("a.jsonl", "b.jsonl")]
    assert len(an.main_grid(kept)) == 4
    assert [r["loss"] for r in an.main_grid(kept, "total")] == [8.0]
    # an f* compares levels within one call's trunk: a's f = 0.1 (another trunk) is left out
    one = an.one_call(an.main_grid(kept))
    assert {(r["_file"], r["f"]) for r in one} == {
        ("b.jsonl", 0.0),
        ("b.jsonl", 0.2),
        ("b.jsonl", 0.4),
    }


def test_decay_is_an_axis_not_a_knob(an):
    r = {"overrides": {"qat.cooldown_of": "total", "qat.cooldown": 1.0}}
    assert an.decay_of(r) == "total" and an.knobs_of(r) == {"qat.cooldown": 1.0}
    assert an.decay_of({"overrides": None}) == "qat" and an.overrides_key({}) == "{}"

    def rec(file, f, loss, decay=None, seed=0):
        ov = {"qat.cooldown_of": decay} if decay else None
        return {
            "experiment": "grid",
            "size": "2m",
            "bits": 4.0,
            "D_total": 100,
            "seed": seed,
            "schedule": "fused",
            "S_total": 80.0,
            "steps": 10,
            "f": f,
            "loss": loss,
            "loss_fp": 3.0,
            "overrides": ov,
            "_file": file,
        }

    records = [
        rec("x.jsonl", 0.2, 2.0),
        rec("x.jsonl", 0.2, 1.9, "total"),  # same call: a same-trunk pair, -0.1
        rec("y.jsonl", 0.2, 2.1),
        rec("z.jsonl", 0.4, 2.2, "total"),  # no decay-qat run at f = 0.4: unpaired
        rec("z.jsonl", 0.0, 2.5, "total"),  # f = 0 does not depend on the decay: skipped
        rec("w.jsonl", 0.2, 2.05, "total", seed=1),  # no seed-1 decay-qat run: unpaired
    ]
    out = an.decay_comparison(records)
    assert [(x["file"], x["qat_file"], round(x["diff"], 6)) for x in out["rows"]] == [
        ("x.jsonl", "x.jsonl", -0.1)
    ]
    assert out["same_trunk"]["n"] == 1 and out["other_trunk"]["n"] == 0
    records.append(rec("v.jsonl", 0.2, 2.3, "total"))  # another call: pairs across trunks
    out = an.decay_comparison(records)
    assert out["other_trunk"]["n"] == 1 and out["other_trunk"]["mean_diff"] > 0


@pytest.mark.parametrize("decay", ["total", "qat"])
def test_summary_self_consistent(an, summary, decay):
    sec = summary["decay"][decay]
    rows = sec["fstar"]
    assert {(r["size"], r["bits"], r["D_total"], r["seed"]) for r in rows} == _raw_full_grids(decay)
    assert rows and all(r["decay"] == decay for r in rows)
    for r in rows:
        assert 0.0 <= r["f_grid"] <= 1.0 and 0.0 <= r["f_refined"] <= 1.0
        assert abs(r["f_refined"] - r["f_grid"]) <= r["spacing"] + 1e-12
        assert r["loss_grid"] == min(r["loss"])
        assert r["regret_baseline"] >= 0 and r["regret_f_hat_paper"] >= -1e-12
        assert r["f_hat_paper"] == pytest.approx(math.exp(-6.7297 / math.log(r["S_total"])))
        assert r["loss_ptq"] == r["loss"][0]
    cf = sec["closed_form"]
    S = np.array([r["S_total"] for r in rows])
    fs = np.array([r["f_refined"] for r in rows])
    fhat = np.exp(-6.7297 / np.log(S))
    assert cf["all"]["mae_paper"] == pytest.approx(np.mean(np.abs(fhat - fs)))
    big = np.array([r["steps"] >= an.MIN_STEPS for r in rows])
    assert cf["steps_ge_600"]["mae_paper"] == pytest.approx(np.mean(np.abs(fhat[big] - fs[big])))
    for tag in ("all", "steps_ge_600"):
        c = cf[tag]
        refit = np.exp(-c["a_refit"] / np.log(S if tag == "all" else S[big]))
        target = fs if tag == "all" else fs[big]
        assert c["mae_refit_in_sample"] == pytest.approx(np.mean(np.abs(refit - target)))
        assert c["mae_refit_in_sample"] <= c["mae_paper"] + 1e-9  # the refit minimises the MAE
    # replicates: session 1's re-run 2-bit S=20 grid, session 2's repeats of session-1 points
    pairs = summary["replicates"]["grid_pairs"]
    assert summary["n_duplicate_grid_records"] == len(pairs) >= 2
    assert all(p["diff"] != 0 for p in pairs)
    # knob and schedule comparisons pair runs of equal size, bits, D, seed and f
    for k in summary["knobs"]:
        assert k["diff"] == pytest.approx(k["loss"] - k["loss_default"])
    for r in summary["schedules"]:
        assert r["flops_standard"] == r["flops_fused"]
    seeds = summary["seeds"]
    for r in seeds["rows"]:
        assert r["sd"] == pytest.approx(np.std(r["loss"], ddof=1))


def test_committed_summary_matches(an, summary):
    p = REF / "summary.json"
    if not p.is_file():
        pytest.skip("summary.json not generated yet (python experiments/reference/analyze.py)")
    saved = json.loads(p.read_text())
    for d in ("total", "qat"):
        old, new = saved["decay"][d], summary["decay"][d]
        assert len(old["fstar"]) == len(new["fstar"])
        for a, b in zip(old["fstar"], new["fstar"]):
            assert a["f_refined"] == pytest.approx(b["f_refined"])
            assert a["regret_baseline"] == pytest.approx(b["regret_baseline"])
        for tag in ("all", "steps_ge_600"):
            assert old["closed_form"][tag]["mae_paper"] == pytest.approx(
                new["closed_form"][tag]["mae_paper"]
            )
            assert old["closed_form"][tag]["a_refit"] == pytest.approx(
                new["closed_form"][tag]["a_refit"], rel=1e-4
            )
        for q in old.get("qat_law", {}).values():
            if "error" not in q:
                assert q["mae"] > 0 and 0 <= q["f_opt_mae"] <= 1
                assert all(0 <= x["f_law"] <= 1 for x in q["f_opt"])


def test_fstar_intervals(an):
    assert an.noise_sd(145, 0.5) > an.noise_sd(600, 0.5) > an.noise_sd(1161, 0.5)
    assert an.noise_sd(5000, 0.5) == pytest.approx(0.0065)
    assert an.noise_sd(5000, 1.0) == pytest.approx(an.NOISE_SD_F1)
    sharp = {
        "size": "x",
        "bits": 4.0,
        "S_total": 100.0,
        "steps": 5000,
        "seed": 0,
        "f": F.tolist(),
        "loss": (2.0 + 3.0 * (F - 0.4) ** 2).tolist(),
    }
    flat = dict(sharp, S_total=400.0, loss=(2.0 + 0.001 * (F - 0.4) ** 2).tolist())
    out = an.fstar_intervals([sharp, flat], n=300)
    lo, hi = sharp["f_refined_ci90"]
    assert lo <= 0.4 <= hi and hi - lo < 0.15  # a sharp minimum is located tightly
    lo2, hi2 = flat["f_refined_ci90"]
    assert hi2 - lo2 > 0.5  # a flat curve is not
    assert 0.0 <= out["p_fstar_grows_steps_ge_600"]["x/4"] <= 1.0
    # a second seed at one S is a replicate, not another S: no growth is claimed from it
    twin = dict(sharp, seed=1, f_refined=0.5)
    only = an.fstar_intervals([dict(sharp), twin], n=50)
    assert only["p_fstar_grows_steps_ge_600"] == {}
    rows = [dict(sharp, f_refined=0.3), twin]
    assert an.growth_by_bits(rows) == {}
    assert list(an.growth_by_bits(rows + [dict(flat, f_refined=0.6)])) == ["x/4"]


def test_a_basis_without_grids_is_left_out(an):
    """Sessions 1-2 only ran decay qat: the decay-total section is empty instead of failing."""
    recs = an.load_records(sorted((REF / "results").glob("session[12]-*.jsonl")))
    grid, _ = an.dedupe_grid(recs)
    assert an.fstar_section(grid, "total") == {"fstar": []}
    assert an.fstar_section(grid, "qat")["fstar"]


def test_slice_logs_reads_one_worker_logs(an, tmp_path):
    multi = tmp_path / "session9-s1.log"
    multi.write_text(
        '{"w": 0}\nworker 1 done at 40 s\nslice done in 42 s, worker exit codes [0, -11]\n'
    )
    one = tmp_path / "session9-s2.log"  # a one-worker slice before run_slice printed its last line
    one.write_text('{"w": 0, "t": 530}\nworker 0 done at 532 s\n')
    cut = tmp_path / "session9-s3.log"  # killed: no worker finished, no wall time to report
    cut.write_text('{"w": 0, "t": 10}\n')
    killed = tmp_path / "session9-s4.log"  # several workers, one finished, then the call was killed
    killed.write_text('{"w": 1, "t": 300}\nworker 1 done at 300 s\n{"w": 0, "t": 500}\n')
    killed0 = tmp_path / "session9-s5.log"  # the same with worker 0 the one that finished
    killed0.write_text('{"w": 0, "t": 300}\nworker 0 done at 300 s\n{"w": 2, "t": 500}\n')
    out = an.slice_logs([multi, one, cut, killed, killed0])
    assert out["session9-s1"] == {"wall_s": 42.0, "workers": 2, "worker_exit_codes": [0, -11]}
    assert out["session9-s2"] == {"wall_s": 532.0, "workers": 1, "worker_exit_codes": [0]}
    assert not {"session9-s3", "session9-s4", "session9-s5"} & set(out)


def test_large_sizes_are_held_out_with_every_calls_runs(an, summary):
    """Sizes >= LARGE_N enter the f* table only as a full grid of one call (30m at S = 20); the
    held-out section keeps every call's quantized runs (one fraction per call at 50m and 90m)."""
    for sec in summary["decay"].values():
        for r in sec["fstar"]:
            assert r["N"] < an.LARGE_N or len(r["f"]) >= an.MIN_GRID_POINTS
    saved = REF / "summary.json"
    if not saved.is_file():
        pytest.skip("summary.json not generated yet")
    ls = json.loads(saved.read_text())["decay"]["total"].get("large_sizes")
    if not ls:
        pytest.skip("no run above LARGE_N in the committed results")
    for g in ls["groups"]:
        assert g["N"] >= an.LARGE_N and len(g["f"]) == len(g["loss"]) == len(g["law_pred"])
        assert g["rel_err"] == pytest.approx([p / y - 1 for p, y in zip(g["law_pred"], g["loss"])])
        assert g["f_best_measured"] == g["f"][int(np.argmin(g["loss"]))]
        assert len(g["calls"]) == len(g["f"]) and min(g["f"]) > 0  # no PTQ run: QATLaw omits them


def test_seed_checks_pair_a_few_fractions_with_the_seed0_grid(an):
    def rec(file, f, loss, seed=0, **kw):
        return {
            "experiment": "grid",
            "size": "2m",
            "N": 1.9e6,
            "bits": 1.0,
            "D_total": 100,
            "S_total": 1000.0,
            "steps": 3627,
            "schedule": "fused",
            "seed": seed,
            "f": f,
            "loss": loss,
            "_file": file,
            "_order": 0,
            "overrides": {"qat.cooldown_of": "total"},
            **kw,
        }

    fs = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
    grid = [rec("a.jsonl", f, 2.0 - f + f * f) for f in fs]  # seed 0, best at 0.45-0.6
    grid += [rec("b.jsonl", 0.3, 1.9, seed=1), rec("b.jsonl", 0.6, 1.7, seed=1)]
    grid += [rec("b.jsonl", 1.0, 1.8, seed=1), rec("b.jsonl", 0.7, 1.0, seed=1)]  # 0.7: no pair
    grid += [rec("c.jsonl", 0.3, 1.9, seed=2)]  # one shared fraction: nothing to compare
    (c,) = an.seed_checks(grid, "total")
    assert c["seed"] == 1 and c["f"] == [0.3, 0.6, 1.0]
    assert c["loss_seed0"] == pytest.approx([2.0 - f + f * f for f in (0.3, 0.6, 1.0)])
    assert c["diff"] == pytest.approx([a - b for a, b in zip(c["loss"], c["loss_seed0"])])
    assert c["best_f"] == 0.6 and c["best_f_seed0"] == 0.6
    assert an.seed_checks(grid, "qat") == []  # another decay basis: no grid


def test_shipped_law_intervals_one_grid(an):
    """The shipped law's optimum and 90% interval at a measured grid (17m, 1 bit, S = 80), and the
    inside test against the measured f*; not stale against the committed law runs."""
    row = {"size": "17m", "N": 17308032, "bits": 1.0, "D_total": 173080576, "S_total": 80.0}
    rows = [row | {"seed": 0, "f_refined": 0.45}, row | {"seed": 1, "f_refined": 0.0}]
    out = an.shipped_law_intervals(rows)
    assert not out["stale"] and out["n_runs"] >= 141
    a, b = out["rows"]
    lo, hi = a["ci90"]
    assert 0.0 <= lo <= a["f_law"] <= hi <= 1.0 and hi > lo
    assert a["inside"] == (lo <= 0.45 <= hi) and b["inside"] == (lo <= 0.0)
    assert out["n_inside"] == a["inside"] + b["inside"]
