"""Report: measured f*, figures, a self-contained HTML page (from a store or an exported file)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from coqat.sweep.report import build_report, closed_form, measured_fstar
from coqat.sweep.store import Store

# a law fitted once on a fake sweep (coqat.law.QATLaw), to avoid a minute of fitting in tests
LAW_PARAMS = {
    "E": 1.5214,
    "A": 26.166,
    "alpha": 0.27317,
    "B": 35.335,
    "beta": 0.26554,
    "theta": 0.017089,
    "kappa": 0.0,
    "phi": 3.3483,
    "chi": 1.7498,
    "psi": -0.0063407,
    "omega": 0.50729,
    "lambda": 83.801,
    "mu": 0.0,
    "nu": 0.54954,
    "xi": 0.64257,
    "rho": 0.34744,
}


@pytest.fixture(scope="module")
def fake_store(fake_sweep_store):
    """The folder of the shared fake sweep's store (conftest.fake_sweep_store), as s.db."""
    return fake_sweep_store.parent


def _rec(f, loss, schedule="fused", size="x", N=1e6, variant=None):
    """One finished run as the report reads it."""
    r = {"size": size, "N": N, "D_total": 1e8, "D_fp": (1 - f) * 1e8, "D_qat": f * 1e8,
         "bits": 4.0, "f": f, "f_requested": f, "loss": loss, "schedule": schedule, "seed": 0.0}
    return r if variant is None else r | {"variant": variant}


def test_measured_fstar_endpoints_count_for_both_schedules():
    recs = [
        _rec(f, 3 + (f - 0.35) ** 2, s)
        for f, s in [(0.0, "standard"), (0.3, "fused"), (0.3, "standard"), (1.0, "standard")]
    ]
    fs = {x["schedule"]: x for x in measured_fstar(recs)}
    assert set(fs) == {"fused", "standard"}
    assert fs["fused"]["f_star"] == pytest.approx(0.35)
    assert closed_form(np.e) == 0.0 and 0 < closed_form(100.0) < 1


def _check_html(path):
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # self-contained: every src is a data URI, no links or external references
    srcs = re.findall(r"""src=['"]([^'"]*)""", html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "href=" not in html and "http://" not in html and "https://" not in html
    assert "<script" not in html
    return html


def test_report_from_store_with_law(fake_store, tmp_path):
    from coqat.law import QATLaw

    law = QATLaw(params=LAW_PARAMS)
    d = law.to_json()
    rng = np.random.default_rng(0)
    d["bootstrap"] = {
        "n_boot": 5,
        "level": 0.9,
        "samples": [
            [v * (1 + 0.01 * rng.standard_normal()) for v in LAW_PARAMS.values()] for _ in range(5)
        ],
    }
    (tmp_path / "law.json").write_text(json.dumps(d))
    out = build_report(tmp_path / "rep", store=fake_store / "s.db", law=tmp_path / "law.json")
    html = _check_html(out)
    for name in ("loss_vs_fraction", "fstar_vs_S", "pred_vs_measured", "fusion", "memory_frontier"):
        assert (tmp_path / "rep" / f"{name}.png").stat().st_size > 1000
        assert f"alt='{name}.png'" in html
    assert html.count("data:image/png;base64,") == 5
    assert "Measured optimal fraction" in html and "refitted a" in html
    assert "Fusion vs standard" in html and "QATLaw" in html
    fstar = json.loads((tmp_path / "rep" / "fstar.json").read_text())["fstar"]
    # 2 sizes x 2 budgets x 2 quantized widths x 2 schedules
    assert len(fstar) == 16 and all(0 <= x["f_star"] <= 1 for x in fstar)


def test_report_from_exported_file_without_law(fake_store, tmp_path):
    from coqat.cli import main

    with Store(fake_store / "s.db") as st:
        st.export(tmp_path / "runs.parquet")
    rc = main(
        [
            "report",
            "--runs",
            str(tmp_path / "runs.parquet"),
            "--out",
            str(tmp_path / "o"),
            "--law",
            str(tmp_path / "missing.json"),
        ]
    )
    assert rc == 0
    html = _check_html(tmp_path / "o" / "report.html")
    assert html.count("data:image/png;base64,") == 4  # no predicted-vs-measured without a law
    assert "could not load" in html


def test_variant_of_keeps_knobs_and_drops_axes():
    from coqat.config import to_dict
    from coqat.sweep.keys import variant_of
    from coqat.train.config import RunConfig

    base = to_dict(RunConfig())
    assert variant_of(base) == ""
    axes = json.loads(json.dumps(base))
    axes["qat"] |= {"bits": 2.0, "fraction": 0.3, "schedule": "standard"}
    axes |= {"tokens": 123, "seed": 7, "size": "7m"}
    assert variant_of(axes) == ""  # grid axes are not a variant
    knob = json.loads(json.dumps(base))
    knob["qat"]["cooldown"] = 0.1
    knob["optim"]["lr"] = 1e-3
    assert variant_of(knob) == "optim.lr=0.001,qat.cooldown=0.1"
    old = json.loads(json.dumps(base))
    del old["compile_mode"]  # a config written before a field existed: filled with the default
    assert variant_of(old) == ""


def test_knob_runs_are_kept_apart_from_the_main_grid():
    from coqat.sweep.report import fusion_pairs, label_variants

    def rec(f, sched, variant, loss):
        return _rec(f, loss, sched, size="2m", variant=variant)

    recs = [rec(f, "fused", "", 3 + f) for f in (0.0, 0.2, 0.5, 1.0)]
    recs += [rec(0.2, "standard", "", 3.5), rec(0.2, "fused", "qat.cooldown=0.1", 9.0)]
    recs = label_variants(recs)
    assert {r["size"] for r in recs} == {"2m", "2m [qat.cooldown=0.1]"}
    (pair,) = fusion_pairs(recs)  # the standard run pairs with the default fused run only
    assert pair["loss_fused"] == pytest.approx(3.2)
    fs = {(x["size"], x["schedule"]) for x in measured_fstar(recs)}
    assert ("2m", "fused") in fs and not any("[" in s for s, _ in fs)
    # a minority of runs at the defaults, where most set a knob: labelled with the default value
    recs = [rec(f, "fused", "qat.cooldown_of=qat", 3 + f) for f in (0.0, 0.2, 0.5)]
    recs = label_variants(recs + [rec(0.2, "fused", "", 3.1)])
    assert sorted({r["size"] for r in recs}) == ["2m", "2m [qat.cooldown_of=total]"]


def test_refits_keep_schedules_and_variants_apart():
    """One closed-form refit per (schedule, variant): f* of another training setting (a size
    label with a [...] suffix from label_variants) or schedule never enters the main fit."""
    from coqat.sweep.report import closed_form, refits

    def pt(size, S, a, sched="fused"):
        return {"size": size, "schedule": sched, "S_total": S, "f_star": closed_form(S, a)}

    fstar = [pt("2m", S, 6.7) for S in (40, 80, 320)]
    fstar += [pt("2m [qat.cooldown_of=qat]", S, 3.0) for S in (80, 320)]
    fstar += [pt("2m", 80, 2.0, "standard")]
    got = {(g["schedule"], g["variant"]): g for g in refits(fstar)}
    assert set(got) == {("fused", ""), ("fused", "[qat.cooldown_of=qat]"), ("standard", "")}
    assert got[("fused", "")]["a_refit"] == pytest.approx(6.7, abs=0.01)
    assert got[("fused", "[qat.cooldown_of=qat]")]["a_refit"] == pytest.approx(3.0, abs=0.01)
    assert got[("fused", "")]["n"] == 3 and got[("fused", "")]["mae_refit"] < 1e-3


def test_variant_labels_are_the_same_at_every_size():
    """2m mostly decay qat, 4m as many of each, each size with its own lr: the decay-total
    runs carry the same label at both sizes (the lr, constant within a size, is no label), so
    that no refit or curve mixes the two bases."""
    from coqat.sweep.report import label_variants, measured_fstar, refits

    def rec(size, f, variant, loss):
        return _rec(f, loss, size=size, N=1e6 if size == "2m" else 2e6, variant=variant)

    F = (0.0, 0.2, 0.5, 1.0)
    recs = [rec("2m", f, "optim.lr=0.003,qat.cooldown_of=qat", 3 + (f - 0.5) ** 2) for f in F]
    recs += [rec("2m", f, "optim.lr=0.003", 3 + (f - 0.2) ** 2) for f in F[:3]]
    recs += [rec("4m", f, "optim.lr=0.0015,qat.cooldown_of=qat", 2 + (f - 0.5) ** 2) for f in F]
    recs += [rec("4m", f, "optim.lr=0.0015", 2 + (f - 0.2) ** 2) for f in F]
    recs = label_variants(recs)
    assert {r["size"] for r in recs} == {"2m", "4m", "2m [qat.cooldown_of=total]",
                                         "4m [qat.cooldown_of=total]"}
    groups = {g["variant"]: g["n"] for g in refits(measured_fstar(recs))}
    assert groups == {"": 2, "[qat.cooldown_of=total]": 2}


def test_report_needs_an_output_folder_for_a_store(fake_store, capsys):
    from coqat.cli import main

    assert main(["report", "--store", str(fake_store / "s.db")]) == 2
    assert "--out: required" in capsys.readouterr().err
