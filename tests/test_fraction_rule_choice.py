"""Fraction rules compared on held-out grids (coqat.law.analysis.rules) and the designed grids
of the reference experiment (coqat.sweep.experiment.design): the shipped default rule is what
the analysis chooses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coqat.law.analysis import Grid
from coqat.law.analysis.rules import choose_rule, fit_form, heldout_scores, score, splits
from coqat.law.closed_form import TokensPerBitClosedForm

REF = Path(__file__).resolve().parents[1] / "experiments" / "reference"


def _grid(N, D, bits, f_opt, curvature=2.0):
    f = np.array([0.05, 0.15, 0.3, 0.45, 0.6])
    loss = 2.0 + curvature * (f - f_opt) ** 2
    return Grid(labels={"size": f"{N / 1e6:.0f}m", "N": N, "D_total": D, "bits": bits,
                        "steps": 1000}, call="c", f=f, loss=loss)


def _tpb_world():
    """Grids whose optima follow tokens per bit (a = 4): at fixed D the optimum is flat in N."""
    true = TokensPerBitClosedForm(4.0)
    gs = []
    for N in (2e6, 4e6, 7e6, 17e6, 30e6, 90e6):
        for D, b in ((5e7, 1), (2e8, 1), (1e8, 2)):
            gs.append(_grid(N, D, b, float(true.optimal_fraction(N, D, b))))
    return gs


def test_splits_hold_out_every_size_once_and_the_largest_together():
    gs = _tpb_world()
    sp = splits(gs, largest=2)
    held = sorted(i for _, test in sp["leave-one-size-out"] for i in test)
    assert held == list(range(len(gs)))
    (train, test), = sp["largest"]
    assert {round(gs[i].N) for i in test} == {30_000_000, 90_000_000}
    assert not set(train) & set(test)


def test_the_rule_that_generated_the_optima_wins_on_held_out_grids():
    gs = _tpb_world()
    held = heldout_scores(gs, largest=1)
    choice = choose_rule(held)
    assert choice["form"] == "tokens_per_bit"
    t = held["leave-one-size-out"]["tokens_per_bit"]
    p = held["leave-one-size-out"]["paper"]
    assert t["mae"] < 0.01 and t["mean_regret"] < 1e-4 < p["mean_regret"]
    assert fit_form("tokens_per_bit", gs).a == pytest.approx(4.0, abs=0.05)


def test_score_is_zero_regret_at_the_measured_optimum():
    gs = _tpb_world()
    sc = score(TokensPerBitClosedForm(4.0), gs)
    assert sc["mae"] < 1e-3 and sc["max_regret"] < 1e-5 and sc["n_outside"] == 0
    far = score(0.6, gs)
    assert far["mean_regret"] > 0.01


def test_reference_design_section_and_the_shipped_default():
    """The designed grids are read from the store as the raw records hold them, every
    pre-registered grid is scored, and the shipped default rule is the analysis' choice."""
    from coqat.law.registry import load_law
    from coqat.sweep.experiment.design import design_section
    from coqat.sweep.experiment.records import load_records
    from coqat.sweep.experiment.spec import load_experiment

    folder, spec = load_experiment(REF)
    sec, files = design_section(load_records(folder / spec.store, spec), spec, folder)
    raw = {}
    for call in spec.design.calls:
        for line in (REF / "results" / f"{call}.jsonl").read_text().splitlines():
            r = json.loads(line)
            cfg = json.loads(r["config"]) if isinstance(r["config"], str) else r["config"]
            if cfg["qat"]["cooldown_of"] == spec.design.basis:
                k = (r["size"], float(r["bits"]), int(r["seed"]), cfg["optim"]["batch_size"],
                     cfg["data"]["train_tokens"], r["D_total"])
                raw.setdefault(k, set()).add(round(r["f"], 3))
    full = {k for k, v in raw.items() if len(v) >= spec.design.min_fractions}
    got = {(r["size"], float(r["bits"]), int(r["seed"]), r["tokens_per_step"] // 512,
            r["train_tokens"], int(r["D_total"])) for r in sec["rows"]}
    assert got == full
    for r in sec["rows"]:
        assert min(r["f"]) <= r["f_refined"] <= max(r["f"])
        assert r["f_refined_ci90"][0] <= r["f_refined_ci90"][1]
    # the seed pairs: every seed-1 grid against its seed-0 twin, and what they measure
    pairs = sec["contrasts"]["seeds"]
    assert {x["size"] for x in pairs} == {r["size"] for r in sec["rows"] if r["seed"] == 1}
    for x in pairs:
        a, b = (sec["rows"][j] for j in x["rows"])
        assert (a["seed"], b["seed"]) == (0, 1) and a["size"] == b["size"] == x["size"]
        assert abs(x["delta"] - (b["f_refined"] - a["f_refined"])) < 1e-12
        assert abs(x["offset"] - sum(x["loss_diff"]) / len(x["loss_diff"])) < 1e-12
    sn = sec["seed_noise"]
    assert 0 < sn["loss_sd"] < sn["loss_sd_upper95"] and 0 < sn["fstar_sd"] < sn["fstar_sd_upper95"]
    sizes = {c["bits"]: c for c in sec["contrasts"]["size_by_bits"] if c["seed"] == 0}
    assert sec["contrasts"]["size"] is sizes[1.0] and 2.0 in sizes
    pre = sec["preregistered"]
    assert {g["size"] for g in pre["grids"]} == {r["size"] for r in sec["rows"]}
    for rule in pre["rules"].values():
        assert 0 <= rule["hits"] <= rule["n"] and rule["mean_regret"] >= -1e-12
    shipped = load_law(REF / spec.design.default_rule)
    (path, text), = files.items()
    assert json.loads(text) == json.loads((REF / spec.design.default_rule).read_text())
    assert shipped.inner.name == {"tokens_per_bit": "closed-form-tpb", "sized":
                                  "closed-form-sized", "refit_a": "closed-form",
                                  "paper": "closed-form"}[sec["default_rule"]["choice"]["form"]]


def test_seed_pairs_split_a_curve_offset_from_the_noise_that_moves_the_optimum():
    """A second seed that moves the whole curve by 0.03 leaves f* where it was: the pair
    reports the offset, zero fraction-specific spread and a zero f* difference."""
    import numpy as np

    from coqat.law.analysis import StepNoise
    from coqat.sweep.experiment.design import seed_noise, seed_pairs

    f = [0.05, 0.15, 0.3, 0.45]
    base = {"size": "7m", "bits": 1.0, "D_total": 5e7, "tokens_per_step": 65536,
            "train_tokens": 0, "basis": "fixed", "steps": 763, "f": f}
    curve = [1.9, 1.75, 1.74, 1.745]
    rows = [dict(base, seed=0, loss=curve, f_refined=0.30, at_endpoint=False),
            dict(base, seed=1, loss=[x + 0.03 for x in curve], f_refined=0.30,
                 at_endpoint=False),
            dict(base, size="4m", seed=1, loss=curve, f_refined=0.3, at_endpoint=False)]
    draws = np.full((10, 3), 0.3)
    pairs = seed_pairs(rows, draws, StepNoise(((763, 0.01),)))
    assert len(pairs) == 1  # the 4m seed-1 grid has no seed-0 twin
    (p,) = pairs
    assert p["rows"] == [0, 1] and abs(p["offset"] - 0.03) < 1e-12
    assert p["sd_about_offset"] < 1e-12 and p["delta"] == 0.0
    assert abs(p["noise_model_sd"] - 0.01) < 1e-12
    rows[1]["loss"] = [x + 0.03 + e for x, e in zip(curve, [0.002, -0.002, 0.002, -0.002])]
    sn = seed_noise(seed_pairs(rows, draws, StepNoise(((763, 0.01),))))
    # deviations +-0.002 about the offset: per run 0.002 * sqrt(4/3) / sqrt(2)
    assert abs(sn["loss_sd"] - 0.002 * np.sqrt(4 / 3) / np.sqrt(2)) < 1e-12
    assert sn["loss_df"] == 3 and sn["fstar_pairs"] == 1 and sn["fstar_sd"] == 0.0
