"""coqat.law.analysis on synthetic data whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coqat.law import FractionClosedForm, KumarPrecisionLaw
from coqat.law.analysis import (
    StepNoise,
    closed_form_refits,
    diff_stats,
    fstar_bootstrap,
    fstar_table,
    fusion_pairs,
    grids,
    heldout_comparison,
    interval,
    law_runs,
    leave_one_out,
    measured_loss_at,
    pair_runs,
    pooled_sd,
    regret,
    regret_detail,
    repeat_groups,
    representative_call,
    representatives,
    rule_fraction,
    rule_summary,
    seed_means,
    spread,
    step_starved,
    without_ptq,
)
from coqat.law.optimum import measured_optimum

F = np.array([0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])


def quad(f, x0=0.37, c=2.0, a=3.0):
    return c + a * (np.asarray(f, float) - x0) ** 2


# ---------------------------------------------------------------- the measured curve and regret
def test_curve_is_the_parabola_in_the_bracket_and_linear_elsewhere():
    L = quad(F)  # argmin 0.4, bracket [0.2, 0.6]: the parabola through three exact points
    x = np.array([0.25, 0.37, 0.5, 0.6])
    assert measured_loss_at(F, L, x) == pytest.approx(quad(x))
    # outside the bracket: the straight line between measured points
    assert measured_loss_at(F, L, 0.05) == pytest.approx((L[0] + L[1]) / 2)
    assert measured_loss_at(F, L, 0.9) == pytest.approx((L[5] + L[6]) / 2)
    # the curve's minimum is the refined optimum's loss
    o = measured_optimum(F, L)
    assert o["f_refined"] == pytest.approx(0.37) and o["loss_refined"] == pytest.approx(2.0)


def test_outside_the_measured_fractions():
    f = np.array([0.1, 0.3, 0.5])
    L = np.array([2.0, 1.9, 2.2])
    assert measured_loss_at(f, L, 0.9) == pytest.approx(2.2)  # clip: the nearest end
    assert math.isnan(measured_loss_at(f, L, 0.9, outside="nan"))
    assert measured_loss_at(f, L, 0.0, outside="nan") != measured_loss_at(f, L, 0.0)
    d = regret_detail(0.9, f, L)
    assert d["outside"] and d["regret"] == pytest.approx(2.2 - d["loss_min"])
    assert not regret_detail(0.3, f, L)["outside"]
    with pytest.raises(ValueError, match="outside"):
        measured_loss_at(f, L, 0.2, outside="extrapolate")


def test_regret_of_a_quadratic_curve():
    L = quad(F)
    assert regret(0.37, F, L) == pytest.approx(0.0, abs=1e-12)  # the optimum costs nothing
    assert regret(0.5, F, L) == pytest.approx(3.0 * 0.13**2)  # inside the bracket: exact
    # outside the bracket: linear between f = 0 and 0.2 at 0.1 (a measured point: exact)
    assert regret(0.1, F, L) == pytest.approx(3.0 * 0.27**2)
    assert regret(0.0, F, L) == pytest.approx(3.0 * 0.37**2)
    # a dense grid converges to the true curve at any fraction
    fd = np.linspace(0, 1, 201)
    assert regret(0.1, fd, quad(fd)) == pytest.approx(3.0 * 0.27**2, abs=1e-4)


def test_regret_is_nonnegative_inside_and_zero_at_the_optimum():
    rng = np.random.default_rng(1)
    for _ in range(100):
        L = 2.0 + rng.normal(scale=0.05, size=F.size)
        o = measured_optimum(F, L)
        assert regret(o["f_refined"], F, L) == pytest.approx(0.0, abs=1e-12)
        for x in rng.uniform(0, 1, 5):
            assert regret(float(x), F, L) >= -1e-12


def test_rules_of_every_kind():
    N, D, bits = 2e7, 2e7 * 80 * 4 / 8, 4
    paper = FractionClosedForm()
    expect = math.exp(-6.7297 / math.log(80))
    assert rule_fraction(paper, N=N, D=D, bits=bits) == pytest.approx(expect)
    assert rule_fraction(0.1) == 0.1
    assert rule_fraction(lambda N, D, bits: D / (N * 1000), N=N, D=D, bits=bits) == 0.04
    assert rule_fraction(lambda N, D, bits: {"f_opt": 0.3}) == 0.3  # coqat.plan's answer
    L = quad(F)
    assert regret(paper, F, L, N=N, D=D, bits=bits) == pytest.approx(regret(expect, F, L))
    with pytest.raises(TypeError, match="rule"):
        rule_fraction("0.1")


# ---------------------------------------------------------------- grids from records
def rec(call, f, loss, time, seed=0, **kw):
    r = {"size": "2m", "N": 2e6, "bits": 4.0, "D_total": 1e8, "schedule": "fused", "seed": seed,
         "variant": "", "f": f, "loss": loss, "call": call, "time": time, "steps": 1500,
         "trunk": f"t-{call}"}
    return r | kw


def test_grid_uses_one_call_the_one_with_most_fractions():
    records = [rec("a", f, quad(f), f"2026-01-01T00:00:0{i}") for i, f in enumerate(F[:4])]
    records += [rec("b", f, quad(f) + 0.05, f"2026-01-02T00:00:0{i}") for i, f in enumerate(F)]
    (g,) = grids(records)
    assert g.call == "b" and g.f.tolist() == F.tolist()
    assert g.loss == pytest.approx(quad(F) + 0.05)  # no fraction borrowed from call a's trunk
    assert g.trunks == ["t-b"]
    # a tie in fractions: the call that finished later
    tie = [rec("a", f, 1.0, "2026-01-03") for f in F[:3]] + [rec("b", f, 1.0, "2026-01-02")
                                                              for f in F[:3]]
    assert representative_call(tie) == "a"


def test_grids_group_filter_and_order():
    records = [rec("a", f, quad(f), "t") for f in F]
    records += [rec("a", f, quad(f), "t", bits=2.0) for f in F[:2]]  # too few fractions
    records += [rec("a", f, 1.0, "t", bits=16.0) for f in F]  # FP: not a grid
    records += [rec("a", f, quad(f), "t", size="4m", N=4e6) for f in F]
    gs = grids(records, min_fractions=3)
    assert [(g.labels["size"], g.bits) for g in gs] == [("2m", 4.0), ("4m", 4.0)]
    assert grids(records, where=lambda r: r["size"] == "4m")[0].N == 4e6


def test_seed_means_when_seed_is_not_a_grid_field():
    records = [rec("a", f, quad(f), "t", seed=0) for f in F]
    records += [rec("b", f, quad(f) + 0.1, "t", seed=1) for f in F]
    (g,) = grids(records, by=("size", "bits", "D_total", "schedule"))
    assert g.loss == pytest.approx(quad(F) + 0.05) and g.call == ""
    f, L = seed_means([0.1, 0.10001, 0.2], [1.0, 3.0, 5.0])
    assert f.tolist() == pytest.approx([0.100005, 0.2]) and L.tolist() == [2.0, 5.0]


def test_shared_endpoints_join_every_schedule():
    records = [rec("a", f, quad(f), "t", schedule="standard") for f in (0.0, 1.0)]
    records += [rec("a", f, quad(f), "t") for f in (0.2, 0.4, 0.6)]
    records += [rec("a", f, quad(f) + 0.1, "t", schedule="standard") for f in (0.2, 0.4, 0.6)]
    gs = grids(records, shared_endpoints=True, min_fractions=5)
    assert sorted(g.labels["schedule"] for g in gs) == ["fused", "standard"]
    assert all(g.f.tolist() == [0.0, 0.2, 0.4, 0.6, 1.0] for g in gs)
    (alone,) = grids(records, min_fractions=5)  # unshared, the fused curve has 3 fractions
    assert alone.labels["schedule"] == "standard"


def test_representatives_and_repeats():
    records = [rec("a", f, 1.0 + f, "2026-01-01") for f in (0.1, 0.2)]
    records += [rec("b", f, 2.0 + f, "2026-01-02") for f in (0.0, 0.1, 0.2, 0.4)]
    records += [rec("c", 0.8, 3.0, "2026-01-03"), rec("d", 0.8, 4.0, "2026-01-04")]
    reps, pairs = representatives(records)
    got = sorted((r["call"], r["f"]) for r in reps)
    # b ran most of the grid; 0.8 (not in b): the earliest record, c
    assert got == [("b", 0.0), ("b", 0.1), ("b", 0.2), ("b", 0.4), ("c", 0.8)]
    assert sorted((a["call"], b["call"], b["f"]) for a, b in pairs) == [
        ("b", "a", 0.1), ("b", "a", 0.2), ("c", "d", 0.8)]


def test_fstar_table_and_rule_summary():
    S = 80.0
    N = 2e6
    D = S * N * 4 / 8
    short = [rec("a", f, quad(f, 0.3), "t", D_total=D, S_total=S, steps=400) for f in F]
    long = [rec("a", f, quad(f, 0.5), "t", D_total=2 * D, S_total=2 * S) for f in F]
    rows = fstar_table(grids(short + long), rules={"paper": FractionClosedForm(), "ten": 0.1})
    assert [r["step_starved"] for r in rows] == [True, False]
    assert [r["f_refined"] for r in rows] == pytest.approx([0.3, 0.5])
    assert rows[1]["regret_ten"] == pytest.approx(regret(0.1, F, quad(F, 0.5)))
    assert rows[1]["f_paper"] == pytest.approx(math.exp(-6.7297 / math.log(160)))
    summ = rule_summary(rows, ["paper", "ten"])
    assert summ["ten"]["n"] == 1 and summ["ten"]["mae"] == pytest.approx(0.4)
    assert summ["ten"]["mean_regret"] == pytest.approx(rows[1]["regret_ten"])
    assert rule_summary(rows, ["ten"], include_starved=True)["ten"]["n"] == 2
    assert step_starved(599) and not step_starved(600) and not step_starved(None)


# ---------------------------------------------------------------- closed forms
def test_refits_recover_known_forms():
    rng = np.random.default_rng(0)
    S = rng.uniform(20, 1000, 12)
    N = rng.uniform(2e6, 5e7, 12)
    D = S * N * 2 / 8
    f = np.exp(-5.0 / np.log(S))
    out = closed_form_refits(S, N, D, f)
    assert out["refit_a"]["params"]["a"] == pytest.approx(5.0, abs=1e-3)
    assert out["refit_a"]["mae_in_sample"] < 1e-4 and out["refit_a"]["mae_loo"] < 1e-4
    assert out["paper"]["mae_in_sample"] == pytest.approx(
        np.mean(np.abs(np.exp(-6.7297 / np.log(S)) - f)))
    fs = np.exp(-4.0 / np.log(S * (N / 1e7) ** 0.8))
    sized = closed_form_refits(S, N, D, fs, forms=("refit_a", "sized"))
    assert sized["sized"]["params"]["g"] == pytest.approx(0.8, abs=0.02)
    assert sized["sized"]["mae_loo"] < sized["refit_a"]["mae_loo"]


def test_leave_one_out_uses_every_other_point():
    y = np.array([1.0, 2.0, 6.0])
    pred = leave_one_out(lambda m, idx: np.array([y[m].mean()]), 3)
    assert pred.tolist() == [4.0, 3.5, 1.5]


# ---------------------------------------------------------------- noise
def test_step_noise_and_bootstrap():
    noise = StepNoise(((100, 0.04), (1000, 0.004)), sd_f1=0.03)
    assert noise.sd(100, 0.5) == pytest.approx(0.04)
    assert noise.sd(np.sqrt(100 * 1000), 0.5) == pytest.approx(np.sqrt(0.04 * 0.004))
    assert noise.sd(10_000, 0.5) == pytest.approx(0.004) and noise.sd(10_000, 1.0) == 0.03
    sharp = {"f": F, "loss": quad(F, 0.4, a=3.0), "steps": 5000}
    flat = {"f": F, "loss": quad(F, 0.4, a=0.001), "steps": 5000}
    d = fstar_bootstrap([sharp, flat], noise, n=200, seed=1)
    assert d.shape == (200, 2)
    lo, hi = interval(d[:, 0])
    assert lo <= 0.4 <= hi and hi - lo < 0.1
    assert np.ptp(d[:, 1]) > 0.5  # a flat curve locates no optimum
    assert np.array_equal(d, fstar_bootstrap([sharp, flat], noise, n=200, seed=1))
    quiet = fstar_bootstrap([sharp], StepNoise(((1, 1e-12),)), n=5)
    assert quiet[:, 0] == pytest.approx(0.4)


def test_spreads_and_repeats():
    s = spread([1.0, 2.0, 3.0])
    assert s == {"n": 3, "mean": 2.0, "sd": 1.0, "range": 2.0}
    assert spread([1.0])["sd"] is None and pooled_sd([3.0, 4.0, None]) == pytest.approx(
        math.sqrt(12.5))
    d = diff_stats([-1.0, -2.0, 3.0])
    assert d["n"] == 3 and d["mean_diff"] == 0.0 and d["share_negative"] == pytest.approx(2 / 3)
    records = [rec("a", 0.1, 1.0, "2"), rec("b", 0.1, 1.2, "1"), rec("a", 0.2, 1.0, "1")]
    (g,) = repeat_groups(records, key=lambda r: r["f"])
    assert g["values"] == [1.2, 1.0] and g["range"] == pytest.approx(0.2)


# ---------------------------------------------------------------- pairs
def test_pairs_prefer_the_same_call_then_the_nearest_in_time():
    base = {"size": "2m", "N": 2e6, "bits": 4.0, "D_total": 1e8, "seed": 0, "variant": ""}
    std = base | {"schedule": "standard", "f": 0.2, "loss": 1.8, "call": "b",
                  "time": "2026-01-01T05:00:00"}
    fa = base | {"schedule": "fused", "f": 0.2, "loss": 1.7, "call": "a",
                 "time": "2026-01-01T01:00:00"}
    fc = base | {"schedule": "fused", "f": 0.2, "loss": 1.75, "call": "c",
                 "time": "2026-01-01T06:00:00"}
    fb = base | {"schedule": "fused", "f": 0.2, "loss": 1.79, "call": "b",
                 "time": "2026-01-01T04:00:00"}
    (p,) = fusion_pairs([std, fa, fc])
    assert p["fused_call"] == "c" and not p["same_call"] and p["delta"] == pytest.approx(0.05)
    (p,) = fusion_pairs([std, fa, fc, fb])
    assert p["fused_call"] == "b" and p["same_call"] and p["delta"] == pytest.approx(0.01)
    assert pair_runs([std], treated=lambda r: True, control=lambda r: True,
                     match=lambda r: 0) == []  # never its own partner


# ---------------------------------------------------------------- laws
def test_law_runs_adds_fp_baselines_and_drops_short_runs():
    recs = [
        {"N": 2e6, "D_fp": 1e8, "D_qat": 0, "D_total": 1e8, "bits": 4, "loss": 2.1,
         "loss_fp": 2.0, "steps": 1500, "trunk": "t1"},
        {"N": 2e6, "D_fp": 8e7, "D_qat": 2e7, "D_total": 1e8, "bits": 4, "loss": 2.05,
         "loss_fp": 2.2, "steps": 1500, "trunk": "t1"},
        {"N": 2e6, "D_fp": 8e6, "D_qat": 2e6, "D_total": 1e7, "bits": 4, "loss": 3.0,
         "loss_fp": 3.2, "steps": 150, "trunk": "t2"},
    ]
    runs = law_runs(recs, min_steps=600)
    assert len(runs) == 3 and sorted(runs.bits.tolist()) == [4.0, 4.0, 16.0]
    fp = runs.filter(runs.bits == 16)
    assert fp.loss.tolist() == [2.0] and fp.D_fp.tolist() == [1e8]
    assert set(runs.cluster.tolist()) == {"t1"}
    assert len(without_ptq(runs)) == 2 and len(law_runs(recs)) == 4


def test_heldout_comparison_on_a_known_law():
    from coqat.law.synthetic import synthetic_runs

    truth = KumarPrecisionLaw().set_params(
        {"E": 1.7, "A": 200.0, "alpha": 0.35, "B": 300.0, "beta": 0.3, "gamma": 1.5,
         "C": 0.05, "gD": 0.1, "gN": 0.2, "gamma_post": 1.0}
    )
    runs = synthetic_runs(truth, sizes=(2e6, 4e6, 8e6), S_totals=(30, 300), bits=(2, 4),
                          fractions=(0.1, 0.5, 1.0), fp_S=(15, 150), noise=0.0)
    out = heldout_comparison(runs, [KumarPrecisionLaw], {"big": "largest-N", "none": "N>1e12"},
                             n_restarts=1, n_stage=1)
    (row,) = out["big"]["rows"]
    assert row["law"] == "kumar" and row["n_heldout"] == int(np.sum(runs.N == 8e6))
    assert row["heldout_mean_rel_err"] < 0.01  # the law that drew the data predicts it
    assert "holds out no runs" in out["none"]["error"]
