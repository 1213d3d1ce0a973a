"""``coqat report --experiment``: the reference experiment's analysis (without the law fits) and a
small experiment folder end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coqat.sweep.experiment import analyze
from coqat.sweep.experiment.spec import NoiseSpec, load_experiment

REF = Path(__file__).resolve().parents[1] / "experiments" / "reference"


@pytest.fixture(scope="module")
def summary():
    _, spec = load_experiment(REF)
    noise = NoiseSpec(spec.noise.steps_sd, spec.noise.sd_f1, draws=50, seed=0)
    s, files = analyze(REF, with_laws=False, noise=noise)
    return s, files


def _raw_full_grids(basis: str) -> set[tuple]:
    """(size, bits, D_total, seed) of the fused default-knob grids of one basis with >= 6
    fractions in one call, read straight from the raw records."""
    fr: dict[tuple, set] = {}
    want = {} if basis == "qat" else {"qat.cooldown_of": basis}
    for p in sorted((REF / "results").glob("*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if "slice" not in r:  # the designed grids' calls (coqat sweep run): their own section
                continue
            if r["experiment"] == "grid" and r["schedule"] == "fused" and (
                r.get("overrides") or {}) == want:
                k = (r["size"], float(r["bits"]), int(r["D_total"]), int(r["seed"]), r["slice"])
                fr.setdefault(k, set()).add(round(r["f"], 3))
    return {k[:4] for k, v in fr.items() if len(v) >= 6}


def test_analysis_does_not_import_torch():
    code = (
        "import sys\n"
        "from coqat.sweep.experiment import analyze\n"
        "from coqat.sweep.experiment.spec import NoiseSpec\n"
        f"analyze({str(REF)!r}, with_laws=False, noise=NoiseSpec(((100, 0.01),), draws=10))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("basis", ["total", "qat"])
def test_reference_summary_is_consistent(summary, basis):
    s, _ = summary
    sec = s["basis"][basis]
    rows = sec["fstar"]
    assert {(r["size"], r["bits"], r["D_total"], r["seed"]) for r in rows} == _raw_full_grids(basis)
    for r in rows:
        assert 0.0 <= r["f_grid"] <= 1.0 and 0.0 <= r["f_refined"] <= 1.0
        assert abs(r["f_refined"] - r["f_grid"]) <= r["spacing"] + 1e-12
        assert r["loss_grid"] == min(r["loss"]) and r["loss_refined"] <= r["loss_grid"]
        assert r["regret_baseline"] >= -1e-12 and r["regret_paper"] >= -1e-12
        assert r["f_paper"] == pytest.approx(math.exp(-6.7297 / math.log(r["S_total"])))
        assert r["loss_ptq"] == r["loss"][0] and r["step_starved"] == (r["steps"] < 600)
        assert r["f_refined_ci90"][0] <= r["f_refined_ci90"][1]
    cf = sec["closed_form"]
    big = [r for r in rows if not r["step_starved"]]
    S = np.array([r["S_total"] for r in big])
    fs = np.array([r["f_refined"] for r in big])
    assert cf["trained"]["n"] == len(big)
    assert cf["trained"]["paper"]["mae_in_sample"] == pytest.approx(
        np.mean(np.abs(np.exp(-6.7297 / np.log(S)) - fs)))
    refit = cf["trained"]["refit_a"]
    assert refit["mae_in_sample"] <= cf["trained"]["paper"]["mae_in_sample"] + 1e-9


def test_committed_summary_and_readme_are_the_analysis(summary):
    """summary.json holds the f* tables this analysis computes from the store, and README.md is
    its template rendered with summary.json (no hand edits)."""
    from coqat.sweep.experiment.render import render_readme

    s, _ = summary
    saved = json.loads((REF / "summary.json").read_text())
    keys = ("size", "bits", "S_total", "seed", "call", "f_refined", "loss_refined", "regret_paper")
    for b in ("total", "qat"):
        got = [[r[k] for k in keys] for r in s["basis"][b]["fstar"]]
        assert got == [[r[k] for k in keys] for r in saved["basis"][b]["fstar"]]
    text = render_readme(REF / "README.in.md", saved, "experiments/reference")
    assert text == (REF / "README.md").read_text()


def test_reference_comparisons_and_noise(summary):
    s, files = summary
    for x in s["schedules"]:  # standard vs fused at equal tokens: equal FLOPs
        assert x["flops_equal"] and x["diff"] == pytest.approx(x["loss_standard"] - x["loss_fused"])
    assert {k["knob"] for k in s["knobs"]["summary"]} >= {"qat.cooldown", "schedule.cooldown"}
    assert s["bases_compared"]["same_call"]["n"] == 8
    for x in s["noise"]["repeats"]:
        assert len(set(x["calls"])) >= 2
        assert x["diff"] == pytest.approx(x["loss"][-1] - x["loss"][0])
    lines = sum(len(p.read_text().splitlines()) for p in (REF / "results").glob("*.jsonl"))
    assert s["counts"]["n_records"] == lines  # every raw record is in the store
    # 35 before the designed grids; then 2026-11-30-c11 repeated three runs of -c9 (the 7m seed-1
    # grid again) and -c8 one of -c5 (4m 2-bit f = 0.45)
    assert s["counts"]["n_repeats"] == 39
    assert s["memory_check"]["measured_best"] == s["memory_check"]["predicted_best"] == "17m"
    assert s["law_runs_csv"]["total"] == len(files[REF / "law_runs_total.csv"].splitlines()) - 1
    # the committed law runs are what the analysis writes
    assert files[REF / "law_runs_total.csv"] == (REF / "law_runs_total.csv").read_text()


@pytest.mark.slow
def test_a_small_experiment_end_to_end(fake_sweep_store, tmp_path, capsys):
    """--experiment DIR writes DIR's summary, figures and README from its analysis.yaml and
    store, then the sweep report; a second run writes the same bytes."""
    from coqat.cli import main

    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(fake_sweep_store, exp / "results.sqlite")
    (exp / "analysis.yaml").write_text(
        "min_fractions: 4\nbases: [total]\nlaws: []\n"
        "noise: {steps_sd: [[10, 0.01], [1000, 0.001]], draws: 20}\n"
    )
    (exp / "README.in.md").write_text(
        "{% set T = s.basis.total %}# f*\n"
        "{% for r in T.fstar %}| {{ r.size }} | {{ r.bits }} | {{ r.f_refined|f('.3f') }} |\n"
        "{% endfor %}records: {{ s.counts.n_records }}\n"
    )
    assert main(["report", "--experiment", str(exp)]) == 0
    readme = (exp / "README.md").read_text()
    assert readme.startswith("<!-- Generated by `coqat report --experiment")
    assert "| tiny | 2.0 |" in readme and "records:" in readme
    first = {p: p.read_bytes() for p in sorted(exp.rglob("*")) if p.is_file()
             and p.suffix in (".md", ".json", ".png")}
    assert any(p.name == "fstar_vs_S.png" for p in first) and (exp / "report/report.html").exists()
    assert main(["report", "--experiment", str(exp)]) == 0
    assert {p: p.read_bytes() for p in first} == first  # byte-identical
    (exp / "README.in.md").write_text("{{ s.no_such_key }}\n")
    assert main(["report", "--experiment", str(exp)]) == 2  # a missing number is an error
    assert "README.in.md:1" in capsys.readouterr().err
    shutil.rmtree(exp)
    exp.mkdir()
    assert main(["report", "--experiment", str(exp)]) == 2
    assert "analysis.yaml does not exist" in capsys.readouterr().err
