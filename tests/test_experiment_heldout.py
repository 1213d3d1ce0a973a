"""``coqat report --experiment experiments/heldout-python``: the pre-registered rules scored on a
corpus nothing was fitted to, beside their scores on Linux C (design.compare_with)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coqat.errors import ConfigError
from coqat.law.analysis import regret
from coqat.sweep.experiment import analyze, load_experiment
from coqat.sweep.experiment.spec import DesignSpec, NoiseSpec

ROOT = Path(__file__).resolve().parents[1] / "experiments"
HELD = ROOT / "heldout-python"


@pytest.fixture(scope="module")
def summary():
    _, spec = load_experiment(HELD)
    s, files = analyze(HELD, noise=NoiseSpec(spec.noise.steps_sd, spec.noise.sd_f1, draws=50))
    return s, files


def _raw_curves() -> dict[tuple, dict[float, float]]:
    out: dict[tuple, dict[float, float]] = {}
    for p in sorted((HELD / "results").glob("*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            out.setdefault((r["size"], float(r["bits"])), {})[r["f"]] = r["loss"]
    return out


def test_heldout_rows_are_the_raw_curves(summary):
    s, files = summary
    d = s["design"]
    raw = _raw_curves()
    assert {(r["size"], r["bits"]) for r in d["rows"]} == set(raw)
    for r in d["rows"]:
        curve = raw[(r["size"], r["bits"])]
        assert r["f"] == pytest.approx(sorted(curve), abs=1e-11)  # the summary keeps 12 digits
        assert r["loss"] == pytest.approx([curve[f] for f in sorted(curve)], abs=1e-11)
        assert r["f_grid"] == pytest.approx(min(curve, key=curve.get), abs=1e-11)
        lo, hi = r["f_refined_ci90"]
        assert lo <= hi and r["steps"] == 763 and r["basis"] == "fixed"
    # a check, not a fit: no contrasts without a reference grid, no rule comparison, no files
    assert "contrasts" not in d and "default_rule" not in d and "rule_grids" not in d
    assert files == {}


def test_heldout_predictions_scored(summary):
    s, _ = summary
    p = s["design"]["preregistered"]
    pred = json.loads((HELD / "predictions" / "fstar-heldout-python.json").read_text())
    assert len(p["grids"]) == len(pred["grids"]) == 5
    rows = {(r["size"], r["bits"]): r for r in s["design"]["rows"]}
    for g in p["grids"]:
        r = rows[(g["size"], g["bits"])]
        for x in g["rules"].values():
            assert x["hit"] == (abs(x["f"] - r["f_refined"]) <= p["hit_within"])
            assert x["regret"] == pytest.approx(regret(x["f"], r["f"], r["loss"]), abs=1e-12)
            assert x["regret"] >= -1e-12
            assert x["outside"] == (x["f"] > max(r["f"]) or x["f"] < min(r["f"]))
        assert g["rules"]["default"]["f"] == pytest.approx(g["rules"]["tpb"]["f"], abs=1e-6)
    for name, t in p["rules"].items():
        assert t["n"] == 5 and t["hits"] == sum(g["rules"][name]["hit"] for g in p["grids"])
        assert t["mae"] == pytest.approx(
            sum(abs(g["rules"][name]["f"] - g["fstar"]) for g in p["grids"]) / 5)


def test_heldout_compared_with_linux_c(summary):
    s, _ = summary
    c = s["design"]["compared"]["linux_c"]
    ref = json.loads((ROOT / "reference" / "summary.json").read_text())["design"]
    assert c["rules"] == ref["preregistered"]["rules"] and c["n_grids"] == len(
        ref["preregistered"]["grids"])
    assert c["default_rule"] == ref["default_rule"]["evidence"]
    # the Linux C prediction files used the same rules; the default was pre-registered there
    # only in the last one (fstar-design-seed1, commit c027ebb), as it stood for these (8351014)
    assert c["same_rule"] == {"default": True, "paper": True, "tpb": True, "sized": True,
                              "refit": True, "qat": True}
    assert c["same_noise"]  # the noise model is the reference experiment's, as analysis.yaml says


def test_committed_heldout_readme_is_the_analysis(summary):
    from coqat.sweep.experiment.render import render_readme

    s, _ = summary
    saved = json.loads((HELD / "summary.json").read_text())
    keys = ("size", "bits", "f_refined", "loss_refined", "f_grid")
    assert [[r[k] for k in keys] for r in s["design"]["rows"]] == [
        [r[k] for k in keys] for r in saved["design"]["rows"]]
    assert s["design"]["preregistered"]["rules"] == saved["design"]["preregistered"]["rules"]
    # the Linux C scores beside them are the reference summary's current ones (a re-run of
    # coqat report --experiment experiments/reference that moves them needs one here too)
    assert s["design"]["compared"] == saved["design"]["compared"]
    text = render_readme(HELD / "README.in.md", saved, "experiments/heldout-python")
    assert text == (HELD / "README.md").read_text()


def test_design_figure(summary, tmp_path):
    from coqat.sweep.experiment.figures import make_figures

    s, _ = summary
    assert make_figures(s, tmp_path) == []  # no basis tables: no figure unless one is named
    (p,) = make_figures(s, tmp_path, design_figure="pre.png")
    assert p == tmp_path / "pre.png" and p.stat().st_size > 0


def test_design_spec_checks(tmp_path):
    with pytest.raises(ConfigError, match="design.default_rule"):
        DesignSpec(compare_rules=False, default_rule="x.json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "analysis.yaml").write_text("bases: []\n")
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(HELD / "results.sqlite", exp / "results.sqlite")
    shutil.copytree(HELD / "predictions", exp / "predictions")
    (exp / "analysis.yaml").write_text(
        (HELD / "analysis.yaml").read_text().replace("../reference", "../other"))
    with pytest.raises(ConfigError, match="design.compare_with.linux_c.*does not exist"):
        analyze(exp, noise=NoiseSpec(((100, 0.01),), draws=10))
    (other / "summary.json").write_text('{"design": {}}')
    with pytest.raises(ConfigError, match="no scored pre-registered predictions"):
        analyze(exp, noise=NoiseSpec(((100, 0.01),), draws=10))
