"""The figures of an experiment's README, drawn from its summary (matplotlib, Agg backend).

* ``loss_vs_f_<basis>.png``: every f* grid's measured curve, its refined optimum, the paper's
  closed form and the QATLaw fit's curve;
* ``fstar_vs_S.png``: measured f* against S_total with the paper's closed form and the refits;
* ``law_heldout.png``: the largest sizes predicted by QATLaw fitted on the smaller ones;
* ``fusion_<basis>.png``: standard minus fused loss of the same-call pairs;
* ``lr_sweep.png``: FP loss against the peak learning rate;
* ``design.figure`` (when analysis.yaml names one): the designed grids' curves, each f* with its
  90% interval and the fraction each pre-registered rule predicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from coqat.law import PAPER_A, FractionClosedForm


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    _plt().close(fig)
    return path


def _closed(S: np.ndarray, a: float) -> np.ndarray:
    return np.asarray(FractionClosedForm(a).predict_fraction(S), float)


def loss_vs_f(sec: dict[str, Any], basis: str, path: Path) -> Path:
    plt = _plt()
    rows = sec["fstar"]
    curves = {(x["size"], x["bits"], x["S_total"], x["seed"]): x["curve"]
              for x in sec.get("qat_law", {}).get("trained", {}).get("f_opt", [])}
    fig, panels = _curve_panels(plt, rows, ncol=4, size=(4, 3.1))
    for i, (ax, r) in enumerate(panels):
        ax.plot(r["f"], r["loss"], "o-", color="C0", label="measured")
        ax.plot(r["f_refined"], r["loss_refined"], "r*", ms=13, label="f* (refined)")
        ax.axvline(r["f_paper"], color="k", ls=":", label="paper f_hat")
        c = curves.get((r["size"], r["bits"], r["S_total"], r["seed"]))
        if c:
            ax.plot(np.linspace(0, 1, 51), c, "--", color="C2", label="QATLaw fit (trained)")
        ax.set_ylim(*_curve_ylim(r, top=0.15, pad=0.01))
        seed = f", seed {r['seed']}" if r["seed"] else ""
        _label_panel(ax, i, f"{r['size']} {r['bits']:g}-bit, S={r['S_total']:.0f}, "
                            f"D={r['D_total'] / 1e6:.0f}M ({r['steps']} st{seed})")
    fig.suptitle(f"final val loss of the quantized model vs f; basis {basis} "
                 "(f=0: PTQ, may be off-scale)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path, 80)


def _curve_panels(plt: Any, rows: list, ncol: int, size: tuple[float, float]):
    """A grid of ``ncol`` columns with one panel per row (the spare panels hidden): the figure
    and the (axes, row) pairs."""
    nrow = -(-len(rows) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(size[0] * ncol, size[1] * nrow))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(rows):]:
        ax.axis("off")
    return fig, list(zip(axes, rows, strict=False))


def _label_panel(ax: Any, i: int, title: str) -> None:
    """Title and axis labels of a loss-vs-f panel; the first panel carries the legend."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("QAT fraction f", fontsize=8)
    ax.set_ylabel("val loss", fontsize=8)
    if i == 0:
        ax.legend(fontsize=7)


def _curve_ylim(r: dict[str, Any], top: float, pad: float) -> tuple[float, float]:
    """Y limits of a loss-vs-f panel: from just below the best loss (measured or refined) to
    ``top`` of the range above the second-worst loss (the worst, often PTQ at f = 0, may be
    off-scale), plus ``pad`` nats either side."""
    lo = min(min(r["loss"]), r["loss_refined"])
    hi = sorted(r["loss"])[-2] if len(r["loss"]) > 2 else max(r["loss"])
    return lo - 0.05 * (hi - lo) - pad, hi + top * (hi - lo) + pad


def fstar_vs_S(s: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    S = np.geomspace(10, 2000, 200)
    ax.plot(S, _closed(S, PAPER_A), "k-", label=f"paper a={PAPER_A:.3f}")
    bases = list(s["basis"])
    styles = ("C3--", "C7-.")
    for b, ls in zip(bases, styles):
        cf = s["basis"][b]["closed_form"].get("trained")
        if cf:
            a = cf["refit_a"]["params"]["a"]
            ax.plot(S, _closed(S, a), ls, label=f"refit (trained), {b}: a={a:.2f}")
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    sizes = [x["size"] for x in s["counts"]["sizes"]]
    rows_all = [r for b in bases for r in s["basis"][b]["fstar"]]
    bits_list = sorted({r["bits"] for r in rows_all}, reverse=True)
    for bi, b in enumerate(bases):
        for k, bits in enumerate(bits_list):
            for size in sizes:
                rr = [r for r in s["basis"][b]["fstar"] if r["bits"] == bits and r["size"] == size]
                if not rr:
                    continue
                ax.errorbar(np.array([r["S_total"] for r in rr]) * (1 + 0.04 * (k - 1)),
                            [r["f_refined"] for r in rr], yerr=[r["spacing"] for r in rr],
                            fmt=markers[sizes.index(size) % len(markers)], color=f"C{k}",
                            mfc=f"C{k}" if bi == 0 else "none", alpha=1.0 if bi == 0 else 0.45,
                            capsize=3, label=f"{size} {bits:g}-bit" if bi == 0 else None)
    if bases:
        starved = [r for r in s["basis"][bases[0]]["fstar"] if r["step_starved"]]
        if starved:
            ax.plot([r["S_total"] for r in starved], [r["f_refined"] for r in starved], "k+",
                    ms=12, label=f"< {s['spec']['min_steps']} steps (step-starved)")
    ax.set_xscale("log")
    ax.set_xlim(10, 2000)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("S_total = D / (N B/8)")
    ax.set_ylabel("optimal QAT fraction")
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    ax.set_title("measured f* (bars: grid spacing); filled: basis "
                 + (" / hollow: ".join(bases[:2]) if bases else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path, 90)


def law_heldout(ls: dict[str, Any], path: Path, basis: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    ft = ls["fitted"]
    ax.scatter(ft["compute"], 100 * np.array(ft["rel_err"]), s=10, c="0.6",
               label="fitted (smaller sizes)")
    for k, g in enumerate(ls["groups"]):
        ax.scatter([6 * g["N"] * g["D_total"]] * len(g["f"]), 100 * np.array(g["rel_err"]), s=40,
                   color=f"C{k + 3}", label=f"held out: {g['size']} {g['bits']:g}-bit, f = "
                   + "/".join(f"{f:.2f}" for f in g["f"]))
    for y in (-3, -1, 1, 3):
        ax.axhline(y, color="k", lw=0.5, ls=":" if abs(y) == 3 else "--")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-15, 15)
    ax.set_xlabel("training compute 6 N D (FLOPs)")
    ax.set_ylabel("QATLaw predicted / measured - 1 (%)")
    ax.set_title(f"QATLaw fitted on {ls['n_fit']} runs of the smaller sizes (basis {basis}); "
                 "lines: 1% and 3%", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path, 90)


def fusion(pairs: list[dict[str, Any]], path: Path, basis: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    mk = {"2m": "o", "4m": "s", "7m": "^"}
    for k, b in enumerate(sorted({x["bits"] for x in pairs})):
        for size in sorted({x["size"] for x in pairs if x["bits"] == b}):
            xx = sorted((x for x in pairs if x["bits"] == b and x["size"] == size),
                        key=lambda x: x["f"])
            ax.plot([x["f"] for x in xx], [x["diff"] for x in xx], mk.get(size, "o") + "-",
                    color=f"C{k}", label=f"{size} {b:g}-bit (S = {xx[0]['S_total']:.0f}, one call)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("QAT fraction f")
    ax.set_ylabel("loss(standard) - loss(fused)")
    ax.set_title(f"cooldown & QAT fusion, basis {basis} (> 0: fusion better)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, 90)


def lr_sweep(sweep: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for size, d in sweep.items():
        lrs = sorted(d["loss"], key=float)
        ax.plot([float(x) for x in lrs], [d["loss"][x] for x in lrs], "o-", label=size)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("FP val loss")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, 90)


RULE_COLORS = ("C0", "C1", "C2", "C4", "C5", "C7", "C8", "C9")  # not red: the measured f*


def preregistered(design: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = design["rows"]
    pre = {(g["size"], g["bits"], g["D"], g["steps"], g["seed"]): g
           for g in design.get("preregistered", {}).get("grids", [])}
    fig, panels = _curve_panels(plt, rows, ncol=min(len(rows), 3), size=(4.2, 3.2))
    for i, (ax, r) in enumerate(panels):
        ax.plot(r["f"], r["loss"], "o-", color="k", label="measured")
        a, b = r["f_refined_ci90"]
        ax.errorbar([r["f_refined"]], [r["loss_refined"]],
                    xerr=[[r["f_refined"] - a], [b - r["f_refined"]]], fmt="*", color="r",
                    ms=12, capsize=3, label="f* [90%]")
        g = pre.get((r["size"], r["bits"], r["D_total"], r["steps"], r["seed"]))
        for k, (rule, p) in enumerate((g or {}).get("rules", {}).items()):  # the first: solid
            ax.axvline(p["f"], color=RULE_COLORS[k % len(RULE_COLORS)], lw=2.4 if k == 0 else 1.2,
                       ls="-" if k == 0 else ("--" if k % 2 else ":"), alpha=0.6 if k == 0 else 1,
                       label=rule)
        ax.set_ylim(*_curve_ylim(r, top=0.3, pad=0.002))
        ax.set_xlim(0, 1)
        _label_panel(ax, i, f"{r['size']} {r['bits']:g}-bit, D={r['D_total'] / 1e6:.0f}M, "
                            f"S={r['S_total']:.0f} ({r['steps']} steps)")
    fig.suptitle("final val loss vs f, the measured optimum and the pre-registered predictions")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path, 80)


def make_figures(s: dict[str, Any], outdir: Path, design_figure: str = "") -> list[Path]:
    """Every figure the summary has data for, into ``outdir`` (the design's curves as
    ``design_figure`` when that is named); returns their paths."""
    out = []
    for b, sec in s["basis"].items():
        out.append(loss_vs_f(sec, b, outdir / f"loss_vs_f_{b}.png"))
    if s["basis"]:
        out.append(fstar_vs_S(s, outdir / "fstar_vs_S.png"))
    first = next(iter(s["basis"]), None)
    if first and s["basis"][first].get("large_sizes"):
        out.append(law_heldout(s["basis"][first]["large_sizes"], outdir / "law_heldout.png", first))
    pairs = [x for x in s.get("schedules", []) if x["basis"] == first and x["same_call"]]
    if pairs:
        out.append(fusion(pairs, outdir / f"fusion_{first}.png", first))
    if s.get("lr_sweep"):
        out.append(lr_sweep(s["lr_sweep"], outdir / "lr_sweep.png"))
    if design_figure and s.get("design", {}).get("rows"):
        out.append(preregistered(s["design"], outdir / design_figure))
    return out
