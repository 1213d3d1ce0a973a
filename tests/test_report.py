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


# ------------------------------------------------------------- layout, order, noise, warnings
def _curve(size, N, D=1e8, bits=4.0, steps=1000, seeds=(0,), schedule="fused", x0=0.4, noise=0.0):
    """A measured curve: fractions 0, 0.2, 0.4, 0.6, 1 at every seed (seed s adds s * noise);
    the f = 0 and f = 1 runs recorded as ``standard``, as the sweep engine does."""
    out = []
    for s in seeds:
        for f in (0.0, 0.2, 0.4, 0.6, 1.0):
            r = _rec(f, 3 + (f - x0) ** 2 + s * noise, schedule if 0 < f < 1 else "standard",
                     size=size, N=N)
            out.append(r | {"D_total": D, "D_fp": (1 - f) * D, "D_qat": f * D, "bits": bits,
                            "steps": steps, "seed": float(s), "S_total": D / (N * bits / 8)})
    return out


def _report(tmp_path, recs, **kw):
    (tmp_path / "runs.json").write_text(json.dumps(recs))
    path = build_report(tmp_path / "rep", runs=tmp_path / "runs.json", **kw)
    return path.read_text()


def _rows(html, heading):
    """The first cell of every body row of the first table after ``heading``."""
    part = html[html.index(heading):]
    body = part[part.index("<tbody>"):part.index("</tbody>")]
    return re.findall(r"<tr><td>([^<]*)</td>", body)


def test_sizes_in_numeric_order_and_figures_before_tables(tmp_path):
    sizes = {"150m": 1.5e8, "2m": 2e6, "1.2b": 1.2e9, "30m": 3e7, "4m": 4e6}
    recs = [r for k, n in sizes.items() for r in _curve(k, n, D=40 * n)]
    want = ["2m", "4m", "30m", "150m", "1.2b"]
    assert [x["size"] for x in measured_fstar(recs)] == want
    html = _report(tmp_path, recs)
    assert _rows(html, "<h2>Runs</h2>") == want
    assert _rows(html, "<h2>Measured optimal fraction</h2>") == want
    assert html.index("<img") < html.index("<table")  # figures first


def _captured_figures(monkeypatch):
    """Capture the report's figures (name -> matplotlib Figure) instead of closing them."""
    import coqat.sweep.report as rep

    figs = {}
    real = rep._save

    def save(fig, out, name):
        figs[name] = fig  # closing a figure keeps its artists
        return real(fig, out, name)

    monkeypatch.setattr(rep, "_save", save)
    return figs


def test_seed_means_with_error_bars(tmp_path, monkeypatch):
    """Two seeds at every fraction: one line per schedule through the seed means, with +-1 sd
    bars; never a line through the runs one by one."""
    from coqat.law.analysis import seed_spread

    sp = seed_spread([0.2, 0.2, 0.5], [3.0, 3.2, 2.9])
    assert sp["f"].tolist() == [0.2, 0.5] and sp["n"].tolist() == [2, 1]
    assert sp["mean"][0] == pytest.approx(3.1) and sp["sd"][0] == pytest.approx(0.1414, abs=1e-4)
    assert np.isnan(sp["sd"][1])

    figs = _captured_figures(monkeypatch)
    _report(tmp_path, _curve("2m", 2e6, seeds=(0, 1), noise=0.1))
    (ax,) = figs["loss_vs_fraction.png"].axes
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "-"]  # one curve, no zig-zag
    assert line.get_xdata().tolist() == [0.0, 0.2, 0.4, 0.6, 1.0]
    means = 3 + (np.array([0.0, 0.2, 0.4, 0.6, 1.0]) - 0.4) ** 2 + 0.05
    assert np.allclose(line.get_ydata(), means)
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    spans = [seg[1][1] - seg[0][1] for c in bars for seg in c.get_segments()]
    assert len(spans) == 5 and np.allclose(spans, 2 * 0.1 / np.sqrt(2))


def test_no_empty_panels_or_figures(tmp_path, monkeypatch):
    figs = _captured_figures(monkeypatch)
    recs = _curve("2m", 2e6)  # one curve
    recs += [r for r in _curve("4m", 4e6) if r["f"] in (0.2, 0.6)]  # two fractions: no curve
    recs += [r for r in _curve("7m", 7e6) if r["f"] in (0.0, 1.0)]  # endpoints only
    html = _report(tmp_path, recs)
    (ax,) = figs["loss_vs_fraction.png"].axes  # one panel, the unused slots removed
    assert ax.get_title().startswith("2m")
    assert "have no curve and no f*: 4m B=4 (fused)" in html
    assert "fusion.png" not in figs and not (tmp_path / "rep" / "fusion.png").exists()
    # FP runs only: no curve, no f*, no refit: only the memory frontier is drawn, and the
    # figures of the earlier report into the same folder are gone
    figs.clear()
    fp = [r | {"bits": 16.0, "model_bytes": 2 * r["N"]} for r in _curve("2m", 2e6)[:1]]
    html = _report(tmp_path, fp)
    assert set(figs) == {"memory_frontier.png"}
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["memory_frontier.png"]


def test_degenerate_refit_is_flagged_not_drawn(tmp_path, monkeypatch):
    from coqat.law.analysis import degenerate_refit

    assert degenerate_refit([40, 80, 320], [0.2, 0.3, 0.4], {"a": 5.0}) == ""
    assert "from 2 optima" in degenerate_refit([40, 80], [0.2, 0.3], {"a": 5.0})
    assert "one S_total only" in degenerate_refit([80, 80, 80], [0.2, 0.3, 0.4], {"a": 5.0})
    assert "at its bound 0" in degenerate_refit([40, 80, 320], [1, 1, 1], {"a": 0.0})

    figs = _captured_figures(monkeypatch)
    recs = _curve("2m", 2e6, D=8e7) + _curve("4m", 4e6, D=3.2e8)  # S = 80 for both
    html = _report(tmp_path, recs)
    assert "refitted on fused is no fit: 1 parameter from 2 optima" in html
    assert "NOT A FIT" in html
    labels = [t.get_text() for t in figs["fstar_vs_S.png"].axes[0].get_legend().get_texts()]
    assert not any(t.startswith("refit") for t in labels) and labels[0].startswith("paper")


def test_step_starved_curves_are_flagged_and_not_fitted(tmp_path):
    from coqat.law.analysis import MIN_STEPS

    recs = [r for k, (n, st) in {"2m": (2e6, MIN_STEPS - 1), "4m": (4e6, MIN_STEPS),
                                   "7m": (7e6, 5000), "12m": (1.2e7, 8000)}.items()
            for r in _curve(k, n, D=80 * n, steps=st)]
    fs = {x["size"]: x for x in measured_fstar(recs)}
    assert fs["2m"]["step_starved"] and not fs["4m"]["step_starved"]
    from coqat.sweep.report import refits

    (g,) = refits(measured_fstar(recs))
    assert g["n"] == 3 and g["n_starved"] == 1
    html = _report(tmp_path, recs)
    assert "1 of 4 measured curves are step-starved" in html
    assert html.count("<td>step-starved</td>") == 1 and "(1 step-starved left out)" in html


def test_fused_only_sweep_has_no_standard_rows(tmp_path):
    """The sweep engine records f = 0 and f = 1 runs as ``standard`` (one training for both
    schedules); a fused-only sweep shows no standard column, curve or f*."""
    recs = _curve("2m", 2e6) + _curve("4m", 4e6)
    assert {r["schedule"] for r in recs} == {"fused", "standard"}
    html = _report(tmp_path, recs)
    assert "standard" not in html.split("<h2>Runs</h2>")[1]
    assert {x["schedule"] for x in measured_fstar(recs)} == {"fused"}
    head = re.findall(r"<th>([^<]*)</th>", html.split("<h2>Runs</h2>")[1])
    assert head[:6] == ["size", "N", "bits", "runs", "f = 0 or 1", "fused, 0 &lt; f &lt; 1"]
