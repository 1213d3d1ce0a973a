"""``coqat report``: figures and one self-contained HTML page from a store or a runs file.

``coqat report --experiment DIR`` first writes the experiment folder's summary, figures and
README (:mod:`coqat.sweep.experiment`, from ``DIR/analysis.yaml`` and the folder's store), then
this report of ``DIR/results.sqlite``.

The page: warnings first (refits that are no fit, step-starved curves, run groups too small to
draw), then the figures, then the tables (runs, measured f*, fit summary, fusion pairs). Sizes go
in numeric order (2m < 4m < ... < 150m < 1.2b). A figure, or a panel, with no data is not drawn.

Figures (matplotlib, Agg backend; PNGs in the output folder and embedded as base64 in
``report.html``, which references nothing outside itself):

1. ``loss_vs_fraction.png``: one panel per (size, D_total, bits) with a measured curve: the mean
   loss over seeds per fraction with +-1 sd bars, fused and standard, the measured f* marked;
   with a law JSON, the law's curve and its bootstrap CI band.
2. ``fstar_vs_S.png``: measured optimal fraction vs S_total = D / (N B / 8) with the paper's closed
   form f_hat = exp(-6.7297 / ln S) and ``a`` refitted on the measured points (MAE, as the paper),
   once per (schedule, variant) group, on the f* that are not step-starved; a refit that is no
   fit (:func:`coqat.law.analysis.degenerate_refit`, e.g. ``a`` from 2 points) is flagged in
   the page and not drawn.
3. ``pred_vs_measured.png`` (with a law): predicted vs measured loss; held-out runs (``heldout``
   column, or outside the law's fitted N range) marked.
4. ``fusion.png``: loss(standard) - loss(fused) for paired runs (same size, tokens, bits,
   requested f and seed; 0 < f < 1).
5. ``memory_frontier.png``: loss vs model bytes per bit width, with each width's lower envelope.

Measured f* per (size, D_total, bits, schedule): :mod:`coqat.law.analysis` (each seed's runs of
one call, losses averaged over seeds per fraction, the argmin refined by the parabola through it
and its two neighbours). The f = 0 and f = 1 runs are the same for both schedules (see
:mod:`coqat.sweep.spec`) and count in both. Curves of fewer than
:data:`coqat.law.analysis.MIN_STEPS` optimizer steps are step-starved: flagged, and left out of
the refits, as in the experiments.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from coqat.law.closed_form import PAPER_A, FractionClosedForm  # defined once

NUMERIC = (
    "N", "D_fp", "D_qat", "bits", "loss", "loss_fp", "loss_ptq", "D_total", "f", "f_requested",
    "S_total", "S_fp", "S_qat", "model_bytes", "seed", "wall", "flops", "steps",
)


# ----------------------------------------------------------------------------------- loading
def load_records(store: str | Path | None = None, runs: str | Path | None = None) -> list[dict]:
    """Finished runs (status done) from a store or a CSV/Parquet/JSON(L) runs file."""
    if (store is None) == (runs is None):
        raise ValueError("give exactly one of store or runs")
    if store is not None:
        from coqat.sweep.store import Store

        with Store(store, readonly=True) as st:
            recs = st.to_records(("done",))
    else:
        p = Path(runs)
        if not p.is_file():
            from coqat.errors import ConfigError

            raise ConfigError("runs", f"file not found: {p}")
        suf = p.suffix.lower()
        if suf == ".csv":
            with open(p, newline="") as fh:
                recs = list(csv.DictReader(fh))
        elif suf in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            recs = pq.read_table(p).to_pylist()
        elif suf == ".jsonl":
            recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        elif suf == ".json":
            recs = json.loads(p.read_text())
        else:
            from coqat.errors import ConfigError

            raise ConfigError("runs", f"{p}: unknown format {suf!r}; use .csv, .parquet, .jsonl")
    out = []
    for r in recs:
        r = dict(r)
        if str(r.get("status", "done")) not in ("done", ""):
            continue
        for k in NUMERIC:
            if k in r:
                try:
                    r[k] = float(r[k]) if r[k] not in (None, "") else float("nan")
                except (TypeError, ValueError):
                    r[k] = float("nan")
        if "D_total" not in r or not math.isfinite(r.get("D_total", float("nan"))):
            r["D_total"] = r["D_fp"] + r["D_qat"]
        if "f" not in r or not math.isfinite(r["f"]):
            r["f"] = r["D_qat"] / r["D_total"]
        if not math.isfinite(r.get("f_requested", float("nan"))):
            r["f_requested"] = r["f"]
        if not math.isfinite(r.get("S_total", float("nan"))):
            r["S_total"] = r["D_total"] / (r["N"] * min(r["bits"], 16.0) / 8)
        r.setdefault("seed", 0.0)
        r["size"] = str(r.get("size") or f"N={int(r['N']):,}")
        r["schedule"] = str(r.get("schedule") or "fused")
        hv = r.get("heldout", False)
        r["heldout"] = str(hv).strip().lower() in ("1", "true", "yes", "1.0")
        if math.isfinite(r.get("loss", float("nan"))):
            out.append(r)
    return label_variants(out)


def _parse_variant(v: str) -> dict[str, str]:
    return dict(x.split("=", 1) for x in v.split(",") if "=" in x)


def label_variants(records: list[dict]) -> list[dict]:
    """Keep runs of different training settings apart. Runs carry ``variant`` (settings beyond
    the grid axes that differ from the defaults, from the store export). The settings that tell
    runs apart are those whose value differs between two quantized runs of one size (a ladder's
    per-size learning rate does not; a knob or the decay basis does); runs whose values of them
    differ from the most common combination over all runs get those values appended to their
    ``size`` label (e.g. ``2m [qat.cooldown=0.1]``), the same suffix at every size, so that
    curves, f*, refits, fusion pairs and tables never mix them."""
    from collections import Counter

    parsed = [_parse_variant(str(r.get("variant") or "")) for r in records]
    keys = {k for v in parsed for k in v}
    by_size: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r, v in zip(records, parsed):
        if r.get("bits", 16) < 16:
            for k in keys:
                by_size[r["size"]][k].add(v.get(k))
    knobs = sorted({k for d in by_size.values() for k, vals in d.items() if len(vals) > 1})
    if not knobs:
        return records
    defaults = {k: _default_setting(k) for k in knobs}
    sigs = [tuple(v.get(k, defaults[k]) for k in knobs) for v in parsed]
    main = Counter(sigs).most_common(1)[0][0]
    for r, sig in zip(records, sigs):
        diff = [f"{k}={x}" for k, x, m in zip(knobs, sig, main) if x != m]
        if diff:
            r["size"] = f"{r['size']} [{','.join(diff)}]"
    return records


def _default_setting(key: str) -> str:
    """RunConfig's default of a dotted setting (``qat.cooldown_of`` -> ``total``), as text;
    ``default`` where it cannot be looked up (a setting of another schema)."""
    try:
        from coqat.config import to_dict
        from coqat.train.config import RunConfig

        v: Any = to_dict(RunConfig())
        for part in key.split("."):
            v = v[part]
        return str(v)
    except (KeyError, TypeError, ImportError):
        return "default"


# ----------------------------------------------------------------------------------- law adapter
class LawAdapter:
    """The few things the report needs from a fitted law (``coqat.law``, imported lazily)."""

    def __init__(self, law: Any):
        self.law = law

    @classmethod
    def load(cls, path: str | Path | None) -> tuple[LawAdapter | None, str]:
        """(adapter, note); adapter None (with the reason) when the law cannot be used."""
        if not path:
            return None, "no law given"
        try:
            from coqat.law import load_law
        except ImportError as e:
            return None, f"coqat.law is not available ({e}); law curves skipped"
        try:
            law = load_law(path)
        except Exception as e:  # noqa: BLE001 - any reason: report it and go on
            return None, f"could not load {path}: {e}"
        if not hasattr(law, "predict"):
            return None, f"{path} holds a {type(law).__name__} (no loss prediction)"
        return cls(law), _describe(law)

    def predict(self, N, D_fp, D_qat, bits) -> np.ndarray | None:
        try:
            return np.asarray(self.law.predict(N, D_fp, D_qat, bits), float)
        except Exception:  # noqa: BLE001 - out of the law's domain
            return None

    def curve(self, N: float, D: float, bits: float, f: np.ndarray):
        """(mean, lo, hi) of the loss at fractions ``f``; lo/hi None without bootstrap."""
        def fn(lw):
            return np.asarray(lw.predict(N, (1 - f) * D, f * D, bits), float)

        try:
            if hasattr(self.law, "ci") and getattr(self.law, "bootstrap_", None) is not None:
                ci = self.law.ci(fn)
                lo = None if ci["lo"] is None else np.asarray(ci["lo"], float)
                hi = None if ci["hi"] is None else np.asarray(ci["hi"], float)
                return np.asarray(ci["value"], float), lo, hi
            return fn(self.law), None, None
        except Exception:  # noqa: BLE001
            return None, None, None

    def fit_range_N(self) -> tuple[float, float] | None:
        fr = (getattr(self.law, "provenance", None) or {}).get("fit_range") or {}
        n = fr.get("N")
        if isinstance(n, list | tuple) and len(n) == 2:
            return float(n[0]), float(n[1])
        return None

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [("law", _describe(self.law))]
        params = getattr(self.law, "params_", None) or {}
        cis = {}
        try:
            cis = self.law.param_cis() if getattr(self.law, "bootstrap_", None) is not None else {}
        except Exception:  # noqa: BLE001
            cis = {}
        for k, v in params.items():
            ci = cis.get(k)
            rows.append((k, f"{v:.5g}" + (f"  [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")))
        return rows


def _describe(law: Any) -> str:
    try:
        return str(law.describe())
    except Exception:  # noqa: BLE001
        return type(law).__name__


# ----------------------------------------------------------------------------------- analysis
GRID_BY = ("size", "D_total", "bits", "schedule")  # one measured curve per these fields
MIN_FRACTIONS = 3  # fewer distinct fractions: no f*, no panel


def size_order(records: list[dict]) -> dict[str, tuple[float, str]]:
    """Sort key of every size label: (N, label), so that sizes go 2m < 4m < ... < 150m < 1.2b
    (numeric, not string order) and a size's variants follow it."""
    return {r["size"]: (float(r["N"]), str(r["size"])) for r in records}


def report_grids(records: list[dict], min_fractions: int = MIN_FRACTIONS) -> list:
    """The measured curves the report draws and reads f* from
    (:func:`coqat.law.analysis.grids`): one per (size, D_total, bits, schedule) with at least
    ``min_fractions`` distinct fractions, each seed's runs of one call, losses averaged over
    seeds per fraction, the f = 0 and f = 1 runs shared by both schedules (a schedule with no
    run at 0 < f < 1 has no curve). Ordered by N, size label, D_total, bits and schedule."""
    from coqat.law.analysis import grids

    gs = grids(records, by=GRID_BY, min_fractions=min_fractions, shared_endpoints=True)
    return sorted(gs, key=lambda g: (g.N, str(g.labels["size"]), g.D, g.bits,
                                     str(g.labels["schedule"])))


def measured_fstar(records: list[dict], gs: list | None = None) -> list[dict]:
    """Measured f* of every curve of :func:`report_grids` (or of ``gs``), with its steps and
    whether it is step-starved (fewer than :data:`coqat.law.analysis.MIN_STEPS` optimizer
    steps: reported and flagged, left out of the refits, as in the experiments)."""
    gs = report_grids(records) if gs is None else gs
    out = []
    for g in gs:
        o = g.optimum()
        out.append(
            {
                "size": g.labels["size"],
                "N": g.N,
                "D_total": g.D,
                "bits": g.bits,
                "schedule": g.labels["schedule"],
                "S_total": g.S_total,
                "steps": g.steps,
                "step_starved": g.step_starved(),
                "seeds": len({r.get("seed") for r in g.runs}),
                "f_star": o["f_refined"],
                "f_grid_argmin": o["f_grid"],
                "at_endpoint": o["at_endpoint"],
                "loss_min": o["loss_grid"],
                "n_fractions": len(g.f),
                "f_hat_paper": float(FractionClosedForm().predict_fraction(g.S_total)),
            }
        )
    return out


def _variant(size: str) -> str:
    """The ``[...]`` part that :func:`label_variants` appended to a size label ('' if none)."""
    return size[size.index("[") :] if "[" in size else ""


def refits(fstar: list[dict]) -> list[dict]:
    """The closed form refitted per kind of run: one ``a`` for each (schedule, variant) group of
    measured f* (the variant is the ``[...]`` part ``label_variants`` gave the size label), so
    that f* of different training settings never enter one fit
    (:func:`coqat.law.analysis.closed_form_refits`, on the f* with S > e that are not
    step-starved). ``warning`` says why a refit is no fit
    (:func:`coqat.law.analysis.degenerate_refit`: e.g. ``a`` from 2 points), '' when it is one;
    ``n_starved``: the group's step-starved f* left out. Groups with nothing to fit are left
    out."""
    from coqat.law.analysis import closed_form_refits, degenerate_refit

    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for x in fstar:
        by[(x["schedule"], _variant(str(x["size"])))].append(x)
    out = []
    for (sched, variant), xs in sorted(by.items()):
        xs = [x for x in xs if x["S_total"] > math.e]
        use = [x for x in xs if not x.get("step_starved")]
        if not use:
            continue
        S = np.array([x["S_total"] for x in use])
        fs = np.array([x["f_star"] for x in use])
        one = np.ones_like(S)
        cf = closed_form_refits(S, one, S, fs, forms=("paper", "refit_a"), loo=False)
        a = cf["refit_a"]["params"]["a"]
        out.append(
            {
                "schedule": sched,
                "variant": variant,
                "n": len(use),
                "n_starved": len(xs) - len(use),
                "a_refit": a,
                "mae_paper": cf["paper"]["mae_in_sample"],
                "mae_refit": cf["refit_a"]["mae_in_sample"],
                "warning": degenerate_refit(S, fs, {"a": a}),
            }
        )
    return out


def fusion_pairs(records: list[dict]) -> list[dict]:
    """Runs paired on (size, D_total, bits, requested f, seed) with both schedules, 0 < f < 1
    (:func:`coqat.law.analysis.fusion_pairs`; ``delta`` = standard - fused), sizes in numeric
    order."""
    from coqat.law.analysis import fusion_pairs as pairs

    order = size_order(records)
    out = pairs(records, by=("size", "D_total", "bits", "seed"))
    return sorted(out, key=lambda p: (order[p["size"]], p["D_total"], p["bits"], p["f"],
                                      p["seed"]))


def closed_form(S: Any, a: float = PAPER_A) -> Any:
    """The closed form f = exp(-a / ln S) (:class:`coqat.law.FractionClosedForm`)."""
    return FractionClosedForm(a).predict_fraction(np.asarray(S, float))


# ----------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    (out / name).write_bytes(data)
    _plt().close(fig)
    return name, data


def _title(ax, text: str, starved: bool) -> None:
    """A panel title wrapped to the panel's width; red, marked, when step-starved."""
    import textwrap

    if starved:
        text += "  step-starved"
    ax.set_title("\n".join(textwrap.wrap(text, 46)), fontsize=8,
                 color="tab:red" if starved else "black")


def _min_steps() -> int:
    from coqat.law.analysis import MIN_STEPS

    return MIN_STEPS


def _clip_ptq(ax, f: np.ndarray, y: np.ndarray, err: np.ndarray) -> list[tuple[float, float]]:
    """Limit the y axis to the curve when f = 0 (post-training quantization, often far above
    every QAT point) would squash it; returns the (f, loss) points left above the axis."""
    inner = f > 0
    if inner.sum() < 2 or (~inner).sum() == 0:
        return []
    lo = float(np.min(y - err))
    hi = float(np.max((y + err)[inner]))
    span = max(hi - lo, 1e-6)
    if float(np.max(y[~inner])) <= hi + span:
        return []
    top = hi + 0.3 * span
    ax.set_ylim(lo - 0.08 * span, top)
    return [(float(a), float(b)) for a, b in zip(f, y) if b > top]


def fig_loss_vs_fraction(gs: list, law: LawAdapter | None, out: Path):
    """One panel per (size, D_total, bits) with a measured curve (:func:`report_grids`): the
    mean loss over seeds per fraction with +-1 sd bars (fractions run with 2 or more seeds),
    one line per schedule, the measured f* dotted, the law's curve with its CI band; f = 0
    points above the axis are marked at its top with their loss. No curve, no panel."""
    panels: dict[tuple, dict[str, Any]] = {}
    for g in gs:
        panels.setdefault((g.labels["size"], g.D, g.bits), {})[g.labels["schedule"]] = g
    if not panels:
        return None
    plt = _plt()
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = {"fused": "tab:blue", "standard": "tab:orange"}
    handles: dict[str, Any] = {}
    for ax, ((size, D, bits), by_s) in zip(axes.flat, panels.items()):
        g0 = next(iter(by_s.values()))
        fs_all, y_all, e_all = [], [], []
        for sched, g in sorted(by_s.items()):
            sp = g.spread()
            err = np.nan_to_num(sp["sd"], nan=0.0)
            c = colors.get(sched, "gray")
            h = ax.errorbar(sp["f"], sp["mean"], yerr=err, fmt="o-", ms=4, capsize=2, lw=1.2,
                            color=c, alpha=0.9)
            handles.setdefault(sched, h)
            ax.axvline(g.optimum()["f_refined"], color=c, ls=":", lw=1.2)
            fs_all += list(sp["f"])
            y_all += list(sp["mean"])
            e_all += list(err)
        if law is not None:
            fgrid = np.linspace(0.0, 1.0, 101)
            mean, lo, hi = law.curve(g0.N, D, bits, fgrid)
            if mean is not None:
                handles.setdefault("law", ax.plot(fgrid, mean, "k-", lw=1)[0])
                if lo is not None and hi is not None:
                    handles.setdefault("law CI", ax.fill_between(
                        fgrid, lo, hi, color="k", alpha=0.12, lw=0))
        above = _clip_ptq(ax, np.array(fs_all), np.array(y_all), np.array(e_all))
        for x, y in above:
            top = ax.get_ylim()[1]
            ax.plot([x], [top], marker="^", color="k", ms=6, clip_on=False)
            ax.annotate(f"{y:.3g}", (x, top), xytext=(5, -9), textcoords="offset points",
                        fontsize=7)
        seeds = max(len({r.get("seed") for r in g.runs}) for g in by_s.values())
        _title(ax, f"{size}  D={D:.3g}  B={bits:g}  {g0.steps or '?'} steps"
               + (f"  {seeds} seeds" if seeds > 1 else ""), g0.step_starved())
        ax.set_xlabel("QAT fraction f", fontsize=8)
        ax.set_ylabel("val loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles),
               fontsize=8, bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * rows)))
    return _save(fig, out, "loss_vs_fraction.png")


_MARKERS = "osD^vPX*<>"
FIGURES = ("loss_vs_fraction.png", "fstar_vs_S.png", "pred_vs_measured.png", "fusion.png",
           "memory_frontier.png")


def fig_fstar(fstar: list[dict], fits: list[dict], out: Path):
    """Measured f* vs S_total: colour = bit width, marker = (schedule, variant) group, hollow =
    step-starved (not fitted); the paper's closed form and each group's refit that is a fit."""
    if not fstar:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    S = np.array([x["S_total"] for x in fstar])
    bits_c = {b: f"C{i}" for i, b in enumerate(sorted({x["bits"] for x in fstar}))}
    kinds = sorted({(x["schedule"], _variant(str(x["size"]))) for x in fstar})
    mk = {k: _MARKERS[i % len(_MARKERS)] for i, k in enumerate(kinds)}
    for x in fstar:
        c = bits_c[x["bits"]]
        starved = bool(x.get("step_starved"))
        ax.scatter([x["S_total"]], [x["f_star"]], marker=mk[(x["schedule"],
                   _variant(str(x["size"])))], s=36, facecolors="none" if starved else c,
                   edgecolors=c, linewidths=1.2, zorder=3)
    lo = max(float(S.min()) / 1.5, math.e * 1.01)
    grid = np.geomspace(lo, max(float(S.max()) * 1.5, lo * 2), 200)
    ax.plot(grid, closed_form(grid), "k-", lw=1)
    handles = [Line2D([], [], color="k", lw=1, label=f"paper a={PAPER_A}")]
    styles = ("--", "-.", ":", (0, (5, 1, 1, 1)))
    for i, g in enumerate(g for g in fits if not g["warning"]):
        what = " ".join(w for w in (g["schedule"], g["variant"]) if w)
        (h,) = ax.plot(grid, closed_form(grid, g["a_refit"]), ls=styles[i % len(styles)],
                       color="0.35", lw=1.2, label=f"refit a={g['a_refit']:.3f} ({what})")
        handles.append(h)
    handles += [Patch(color=c, label=f"B={b:g}") for b, c in bits_c.items()]
    handles += [Line2D([], [], ls="", marker=mk[k], color="0.3", label=" ".join(x for x in k if x))
                for k in kinds]
    if any(x.get("step_starved") for x in fstar):
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="0.3",
                              label=f"hollow: < {_min_steps()} steps, not fitted"))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("S_total = D / (N B / 8)")
    ax.set_ylabel("optimal QAT fraction f*")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return _save(fig, out, "fstar_vs_S.png")


def fig_pred_vs_measured(records, law: LawAdapter, out: Path):
    q = [r for r in records]
    N = np.array([r["N"] for r in q])
    pred = law.predict(N, np.array([r["D_fp"] for r in q]), np.array([r["D_qat"] for r in q]),
                       np.array([r["bits"] for r in q]))
    if pred is None:
        return None, None
    meas = np.array([r["loss"] for r in q])
    held = np.array([r["heldout"] for r in q])
    rng = law.fit_range_N()
    if rng is not None:
        held |= (N < rng[0] * (1 - 1e-9)) | (N > rng[1] * (1 + 1e-9))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.scatter(meas[~held], pred[~held], s=14, label="fitted")
    if held.any():
        ax.scatter(meas[held], pred[held], s=30, marker="*", color="tab:red", label="held out")
    lo, hi = float(min(meas.min(), pred.min())), float(max(meas.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("measured loss")
    ax.set_ylabel("predicted loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    stats = {
        "mae": float(np.mean(np.abs(pred - meas))),
        "mape_fit": float(np.mean(np.abs(pred[~held] - meas[~held]) / meas[~held]))
        if (~held).any() else float("nan"),
        "mape_heldout": float(np.mean(np.abs(pred[held] - meas[held]) / meas[held]))
        if held.any() else float("nan"),
        "n_heldout": int(held.sum()),
    }
    return _save(fig, out, "pred_vs_measured.png"), stats


def fig_fusion(pairs: list[dict], out: Path):
    if not pairs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    widths = sorted({p["bits"] for p in pairs})
    for i, bits in enumerate(widths):  # widths side by side at each fraction
        pts = [p for p in pairs if p["bits"] == bits]
        dx = (i - (len(widths) - 1) / 2) * 0.012
        ax.scatter([p["f"] + dx for p in pts], [p["delta"] for p in pts], label=f"B={bits:g}",
                   marker=_MARKERS[i % len(_MARKERS)], alpha=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("QAT fraction f")
    ax.set_ylabel("loss(standard) - loss(fused)")
    ax.set_title("cooldown & QAT fusion (> 0: fusion better)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "fusion.png")


def fig_memory(records: list[dict], out: Path):
    rs = [r for r in records if math.isfinite(r.get("model_bytes", float("nan")))]
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for bits in sorted({r["bits"] for r in rs}):
        pts = sorted((r["model_bytes"], r["loss"]) for r in rs if r["bits"] == bits)
        x, y = zip(*pts)
        ax.scatter(x, y, s=10, alpha=0.5)
        fx, fy, best = [], [], math.inf  # lower envelope: best loss at <= this many bytes
        for b, loss in pts:
            if loss < best:
                best = loss
                fx.append(b)
                fy.append(loss)
        ax.step(fx, fy, where="post", label=f"B={bits:g}" if bits < 16 else "FP (bf16)")
    ax.set_xscale("log")
    ax.set_xlabel("model bytes")
    ax.set_ylabel("val loss")
    ax.set_title("memory-budget frontier", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "memory_frontier.png")


# ----------------------------------------------------------------------------------- HTML
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "-"
        return html.escape(str(v))

    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}"
    "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"
    ".note{color:#666;font-size:13px}"
    ".warn{background:#fff4e5;border-left:4px solid #e08a00;padding:0.3em 1em;margin:1em 0}"
)


def run_counts(records: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """The runs table: per (size, bits), sizes in numeric order, the finished runs, those at
    f = 0 or 1 (one training for every schedule), those at 0 < f < 1 per schedule (only
    schedules that have such runs: a fused-only sweep has no ``standard`` column), the steps
    and the step-starved runs."""
    from coqat.law.analysis import step_starved

    order = size_order(records)
    scheds = sorted({r["schedule"] for r in records if r["bits"] < 16 and 0 < r["f"] < 1})
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by[(r["size"], float(r["bits"]))].append(r)
    rows = []
    for (size, bits), rs in sorted(by.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        q = bits < 16
        steps = [r["steps"] for r in rs if math.isfinite(r.get("steps", float("nan")))]
        span = "-" if not steps else f"{min(steps):.0f}" + (
            f"-{max(steps):.0f}" if max(steps) > min(steps) else "")
        rows.append(
            [size, int(rs[0]["N"]), f"{bits:g}" if q else "16 (FP)", len(rs),
             sum(1 for r in rs if not 0 < r["f"] < 1) if q else "-"]
            + [sum(1 for r in rs if 0 < r["f"] < 1 and r["schedule"] == s) if q else "-"
               for s in scheds]
            + [span, sum(1 for r in rs if step_starved(r.get("steps")))]
        )
    head = ["size", "N", "bits", "runs", "f = 0 or 1"] + [f"{s}, 0 < f < 1" for s in scheds]
    return head + ["steps", f"< {_min_steps()} steps"], rows


def build_report(
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    runs: str | Path | None = None,
    law: str | Path | None = None,
    title: str = "coqat sweep report",
) -> Path:
    """Write the figures and ``report.html`` into ``out_dir``; returns the HTML path.

    The page: the warnings (degenerate refits, step-starved curves, run groups too small to
    draw), the figures, then the tables (runs, measured f*, fit summary, fusion pairs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(store, runs)
    adapter, law_note = LawAdapter.load(law)
    gs = report_grids(records)
    fstar = measured_fstar(records, gs)
    fits = refits(fstar)
    pairs = fusion_pairs(records)
    figs: list[tuple[str, str, str, bytes]] = []
    notes = []
    warnings = []

    def add(caption: str, text: str, res) -> None:
        if res is not None:
            figs.append((caption, text, *res))

    ms = _min_steps()
    add("Loss vs QAT fraction",
        "Mean validation loss over seeds at each fraction (bars: +-1 sd over seeds where a "
        "fraction ran with 2 or more; each seed's runs of one call), one line per schedule "
        "(the f = 0 and f = 1 runs are shared by both), dotted: the measured f*. f = 0 is "
        "post-training quantization: a triangle at the top with its loss when off the axis. "
        f"Red titles: step-starved (< {ms} optimizer steps).",
        fig_loss_vs_fraction(gs, adapter, out))
    add("Optimal QAT fraction vs S_total",
        "Measured f* against the paper's closed form f = exp(-a / ln S) and a refitted per "
        "schedule and variant (MAE) on the f* that are not step-starved; refits that are no "
        "fit are not drawn (see the warnings).",
        fig_fstar(fstar, fits, out))
    pred_stats = None
    if adapter is not None:
        res, pred_stats = fig_pred_vs_measured(records, adapter, out)
        add("Predicted vs measured loss", "Every finished run; held-out runs starred.", res)
    else:
        notes.append(f"Law: {law_note}.")
    add("Fusion vs standard (paired runs)",
        "loss(standard) - loss(fused) of runs equal in size, tokens, bits, f and seed.",
        fig_fusion(pairs, out))
    add("Memory-budget frontier",
        "Loss vs model bytes per bit width, with each width's lower envelope.",
        fig_memory(records, out))

    drawn = {name for _, _, name, _ in figs}
    for name in FIGURES:  # a figure an earlier report drew and this one has no data for
        if name not in drawn:
            (out / name).unlink(missing_ok=True)
    for g in fits:
        if g["warning"]:
            what = " ".join(x for x in (g["schedule"], g["variant"]) if x)
            warnings.append(f"The closed form's a refitted on {what} is no fit: {g['warning']}; "
                            "it is listed but not drawn.")
    starved = [x for x in fstar if x["step_starved"]]
    if starved:
        warnings.append(f"{len(starved)} of {len(fstar)} measured curves are step-starved "
                        f"(< {ms} optimizer steps): flagged, and left out of the refits.")
    small = [g for g in report_grids(records, min_fractions=1) if len(g.f) < MIN_FRACTIONS]
    if small:
        names = sorted({f"{g.labels['size']} B={g.bits:g} ({g.labels['schedule']})"
                        for g in small}, key=str)
        warnings.append(f"{len(small)} run groups with fewer than {MIN_FRACTIONS} fractions "
                        "have no curve and no f*: " + ", ".join(names[:12])
                        + (", ..." if len(names) > 12 else "") + ".")

    parts = [f"<h1>{html.escape(title)}</h1>"]
    src = f"store {store}" if store else f"runs file {runs}"
    parts.append(f"<p class='note'>{len(records)} finished runs from {html.escape(str(src))}."
                 + "".join(f" {html.escape(n)}" for n in notes) + "</p>")
    if warnings:
        parts.append("<div class='warn'><b>Warnings</b><ul>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    parts.append("<h2>Figures</h2>")
    if not figs:
        parts.append("<p class='note'>no data to draw.</p>")
    for caption, text, name, data in figs:
        b64 = base64.b64encode(data).decode()
        parts.append(f"<h3>{html.escape(caption)}</h3><p class='note'>{html.escape(text)}</p>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Runs</h2>")
    if store:
        from coqat.sweep.store import Store

        with Store(store, readonly=True) as st:
            c = st.counts()
        parts.append(_table(list(c), [list(c.values())]))
    parts.append(_table(*run_counts(records)))
    parts.append("<h2>Measured optimal fraction</h2>")
    parts.append("<p class='note'>argmin over measured fractions (mean over seeds), refined by "
                 "the vertex of the parabola through the minimum and its two neighbours. "
                 f"Step-starved: fewer than {ms} optimizer steps (left out of the refits).</p>")
    parts.append(_table(
        ["size", "N", "D_total", "bits", "schedule", "S_total", "steps", "seeds", "f* measured",
         "grid argmin", "f_hat paper", "min loss", "fractions", "note"],
        [[x["size"], int(x["N"]), int(x["D_total"]), x["bits"], x["schedule"], x["S_total"],
          x["steps"] if x["steps"] is not None else "-", x["seeds"], x["f_star"],
          x["f_grid_argmin"], x["f_hat_paper"], x["loss_min"], x["n_fractions"],
          "step-starved" if x["step_starved"] else ""]
         for x in fstar],
    ) if fstar else f"<p class='note'>no group with {MIN_FRACTIONS} or more fractions.</p>")
    parts.append("<h2>Fit summary</h2>")
    rows: list[list[Any]] = [["closed form, paper a", PAPER_A]]
    for g in fits:  # one refit per kind of run: schedules and variants never share a fit
        what = " ".join(x for x in (g["schedule"], g["variant"]) if x)
        left = f" ({g['n_starved']} step-starved left out)" if g["n_starved"] else ""
        a = f"{g['a_refit']:.4g}" + (f" - NOT A FIT: {g['warning']}" if g["warning"] else "")
        rows.append([f"closed form, refitted a (MAE), {what}, {g['n']} f*{left}", a])
        rows.append([f"MAE of paper f_hat / of the refit vs measured f*, {what}",
                     f"{g['mae_paper']:.4g} / {g['mae_refit']:.4g}"])
    if adapter is not None:
        rows += [[k, v] for k, v in adapter.summary_rows()]
        if pred_stats:
            rows += [[f"prediction {k}", v] for k, v in pred_stats.items()]
    parts.append(_table(["quantity", "value"], rows))
    if pairs:
        d = np.array([p["delta"] for p in pairs])
        parts.append("<h2>Fusion vs standard</h2>")
        parts.append(f"<p class='note'>{len(pairs)} pairs; mean loss(standard) - loss(fused) = "
                     f"{d.mean():+.4f} (fusion better in {int((d > 0).sum())}).</p>")
        parts.append(_table(["size", "D_total", "bits", "f", "seed", "fused", "standard", "delta"],
                            [[p["size"], p["D_total"], p["bits"], p["f"], int(p["seed"]),
                              p["loss_fused"], p["loss_standard"], p["delta"]] for p in pairs]))
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    from coqat.config import atomic_write_text

    path = out / "report.html"
    atomic_write_text(path, doc)
    (out / "fstar.json").write_text(json.dumps({"fstar": fstar, "refits": fits}, indent=2))
    return path
