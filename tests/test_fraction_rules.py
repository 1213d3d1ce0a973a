"""Fraction rules beyond the paper's: tokens per bit, bootstrap intervals, the hand-over to the
paper's rule, and pre-registered sweep predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coqat.law.closed_form import (
    PAPER_A,
    FractionClosedForm,
    SizedFractionClosedForm,
    TokensPerBitClosedForm,
)
from coqat.law.handover import HandoverRule
from coqat.law.registry import load_law


def test_tokens_per_bit_is_flat_in_N_and_the_sized_form_at_g_1():
    t = TokensPerBitClosedForm(4.2)
    s = SizedFractionClosedForm(4.2, 1.0)
    paper = FractionClosedForm()
    D, b = 5e7, 1
    fs = [t.optimal_fraction(N, D, b) for N in (4e6, 3e7, 9e7)]
    assert fs[0] == pytest.approx(fs[1]) == pytest.approx(fs[2])
    assert fs[0] == pytest.approx(s.optimal_fraction(3e7, D, b))
    assert fs[0] == pytest.approx(math.exp(-4.2 / math.log(D / (b * 1.25e6))))
    p = [paper.optimal_fraction(N, D, b) for N in (4e6, 3e7, 9e7)]
    assert p[0] > p[1] > p[2]  # the paper's rule falls with N at fixed D
    # doubling the bits halves the tokens per bit
    assert t.optimal_fraction(3e7, 2 * D, 2) == pytest.approx(fs[0])


def test_tokens_per_bit_fit_recovers_a_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    N = rng.uniform(2e6, 9e7, 20)
    D = rng.uniform(3e7, 3e8, 20)
    b = rng.choice([1.0, 2.0, 4.0], 20)
    true = TokensPerBitClosedForm(3.7)
    f = np.array([true.optimal_fraction(n, d, bb) for n, d, bb in zip(N, D, b)])
    S = D / (N * b / 8)
    law = TokensPerBitClosedForm().fit(S, f, N=N)
    assert law.a == pytest.approx(3.7, abs=1e-3)
    assert law.provenance["fit_range"]["D_per_bit"][0] == pytest.approx((D / b).min())
    law.bootstrap(S, N, f + rng.normal(0, 0.03, 20), n_boot=50, seed=1)
    assert len(law.bootstrap_samples_) == 50
    ci = law.fraction_ci(1e7, 1e8, 1)
    assert ci[0] < law.optimal_fraction(1e7, 1e8, 1) < ci[1]
    back = load_law(json.loads(json.dumps(law.to_json())))
    assert isinstance(back, TokensPerBitClosedForm) and back.a == law.a
    assert back.fraction_ci(1e7, 1e8, 1) == ci


def test_handover_blends_in_log_N_and_names_its_basis(tmp_path):
    inner = TokensPerBitClosedForm(4.0)
    outer = FractionClosedForm()
    rule = HandoverRule(inner, outer, 1e8, 1e9, evidence={"heldout_mae": 0.05})
    D, b = 2e10, 4
    assert rule.optimal_fraction(5e7, D, b) == pytest.approx(inner.optimal_fraction(5e7, D, b))
    assert rule.optimal_fraction(2e9, D, b) == pytest.approx(outer.optimal_fraction(2e9, D, b))
    mid = math.sqrt(1e8 * 1e9)
    assert rule.weight(mid) == pytest.approx(0.5)
    want = 0.5 * inner.optimal_fraction(mid, D, b) + 0.5 * outer.optimal_fraction(mid, D, b)
    assert rule.optimal_fraction(mid, D, b) == pytest.approx(want)
    assert "only the paper" in rule.basis(2e9) and "hand-over" in rule.basis(mid)
    # continuous at both ends
    for n in (1e8, 1e9):
        assert rule.optimal_fraction(n * 0.999, D, b) == pytest.approx(
            rule.optimal_fraction(n * 1.001, D, b), abs=2e-3
        )
    p = rule.save(tmp_path / "rule.json")
    back = load_law(p)
    assert isinstance(back, HandoverRule) and back.evidence == {"heldout_mae": 0.05}
    assert back.optimal_fraction(mid, D, b) == pytest.approx(want)
    with pytest.raises(Exception, match="N_lo"):
        HandoverRule(inner, outer, 1e9, 1e8)


def test_planner_reports_the_rules_interval_and_basis():
    from coqat.plan.planner import optimal_fraction

    rng = np.random.default_rng(2)
    N = rng.uniform(2e6, 9e7, 12)
    D = rng.uniform(3e7, 3e8, 12)
    f = np.clip(0.3 + rng.normal(0, 0.05, 12), 0, 1)
    inner = TokensPerBitClosedForm().fit(D / (N / 8), f, N=N)
    inner.bootstrap(D / (N / 8), N, f, n_boot=40)
    rule = HandoverRule(inner, FractionClosedForm(), 9.2e7, 9.2e8, evidence={"regret": 0.01})
    small = optimal_fraction(rule, 3e7, 1e8, 1)
    assert small["f_opt_ci"] is not None and small["f_opt_ci"][0] <= small["f_opt"]
    assert "measured range" in small["basis"] and small["evidence"] == {"regret": 0.01}
    mid = optimal_fraction(rule, 3e8, 1e10, 1)
    assert any("hand-over" in w for w in mid["warnings"])
    big = optimal_fraction(rule, 2e9, 1e11, 1)
    assert big["f_opt"] == pytest.approx(FractionClosedForm(PAPER_A).optimal_fraction(2e9, 1e11, 1))


def test_sweep_predict_writes_every_grid_once(tmp_path):
    from coqat.sweep.predict import format_predictions, predict

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\nbase: {model: {vocab_size: 8192, seq_len: 512}, optim: {batch_size: 128}}\n"
        "sizes: [4m, 30m]\ntokens: [50003968]\nbits: [1]\nfractions: [0.1, 0.3]\n"
        "seeds: [0, 1]\ninclude:\n  - {size: 4m, seed: 0, override: {optim: {batch_size: 64}}}\n"
    )
    laws = {"paper": FractionClosedForm(), "tpb": TokensPerBitClosedForm(4.0)}
    pred = predict(sweep, laws, train_split_tokens=100_000_000)
    g = pred["grids"]
    assert [(x["size"], x["steps"]) for x in g] == [("4m", 763), ("30m", 763), ("4m", 1526)]
    assert g[0]["seeds"] == [0, 1] and g[0]["fractions"] == pytest.approx([0.1, 0.3], abs=1e-3)
    assert g[0]["epochs"] == pytest.approx(50003968 / 1e8)
    assert "optim.batch_size=64" in g[2]["variant"]
    tp = [x["predictions"]["tpb"]["f"] for x in g]
    pp = [x["predictions"]["paper"]["f"] for x in g]
    assert tp[0] == pytest.approx(tp[1]) and pp[0] > pp[1]
    text = format_predictions(pred)
    assert "tpb" in text and "30m" in text
    # each rule is recorded whole: loaded back from the prediction file, it predicts the same
    import json

    from coqat.law.registry import load_law

    back = json.loads(json.dumps(pred))
    for label in laws:
        law = load_law(back["rules"][label]["record"])
        for x in g:
            assert law.optimal_fraction(x["N"], x["D"], x["bits"]) == pytest.approx(
                x["predictions"][label]["f"])
