"""``coqat report``: figures and one self-contained HTML page from a store or a runs file.

``coqat report --experiment DIR`` first writes the experiment folder's summary, figures and
README (:mod:`coqat.sweep.experiment`, from ``DIR/analysis.yaml`` and the folder's store), then
this report of ``DIR/results.sqlite``.

Figures (matplotlib, Agg backend; PNGs in the output folder and embedded as base64 in
``report.html``, which references nothing outside itself):

1. ``loss_vs_fraction.png``: validation loss vs QAT fraction per (size, D_total, bits), fused and
   standard, the measured f* marked; with a law JSON, the law's curve and its bootstrap CI band.
2. ``fstar_vs_S.png``: measured optimal fraction vs S_total = D / (N B / 8) with the paper's closed
   form f_hat = exp(-6.7297 / ln S) and ``a`` refitted on the measured points (MAE, as the paper),
   once per (schedule, variant) group.
3. ``pred_vs_measured.png`` (with a law): predicted vs measured loss; held-out runs (``heldout``
   column, or outside the law's fitted N range) marked.
4. ``fusion.png``: loss(standard) - loss(fused) for paired runs (same size, tokens, bits,
   requested f and seed; 0 < f < 1).
5. ``memory_frontier.png``: loss vs model bytes per bit width, with each width's lower envelope.

Measured f* per (size, D_total, bits, schedule): :mod:`coqat.law.analysis` (each seed's runs of
one call, losses averaged over seeds per fraction, the argmin refined by the parabola through it
and its two neighbours). The f = 0 and f = 1 runs are the same for both schedules (see
:mod:`coqat.sweep.spec`) and count in both.
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
    "S_total", "S_fp", "S_qat", "model_bytes", "seed", "wall", "flops",
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
def _schedules_of(r: dict) -> list[str]:
    """Endpoint runs (f = 0 or f = 1) belong to both schedules."""
    if r["bits"] >= 16:
        return []
    if r["f"] <= 0 or r["f"] >= 1:
        return ["fused", "standard"]
    return [r["schedule"]]


def groups(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """{(size, D_total, bits): {schedule: [records]}} for quantized runs."""
    g: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for s in _schedules_of(r):
            g[(r["size"], int(r["D_total"]), float(r["bits"]))][s].append(r)
    return g


def measured_fstar(records: list[dict]) -> list[dict]:
    """Measured f* per (size, D_total, bits, schedule) with >= 3 distinct fractions
    (:func:`coqat.law.analysis.grids`: each seed's runs of one call, seed means, endpoints shared
    by both schedules)."""
    from coqat.law.analysis import grids

    out = []
    for g in grids(records, by=("size", "D_total", "bits", "schedule"), min_fractions=3,
                   shared_endpoints=True):
        o = g.optimum()
        out.append(
            {
                "size": g.labels["size"],
                "N": g.N,
                "D_total": g.D,
                "bits": g.bits,
                "schedule": g.labels["schedule"],
                "S_total": g.S_total,
                "f_star": o["f_refined"],
                "f_grid_argmin": o["f_grid"],
                "loss_min": o["loss_grid"],
                "n_fractions": len(g.f),
                "f_hat_paper": float(FractionClosedForm().predict_fraction(g.S_total)),
            }
        )
    out.sort(key=lambda x: (x["size"], x["D_total"], x["bits"], x["schedule"]))
    return out


def refits(fstar: list[dict]) -> list[dict]:
    """The closed form refitted per kind of run: one ``a`` for each (schedule, variant) group of
    measured f* (the variant is the ``[...]`` part ``label_variants`` gave the size label), so
    that f* of different training settings never enter one fit
    (:func:`coqat.law.analysis.closed_form_refits`, on the pairs with S > e). Groups with no
    S > e are left out."""
    from coqat.law.analysis import closed_form_refits

    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for x in fstar:
        size = str(x["size"])
        by[(x["schedule"], size[size.index("[") :] if "[" in size else "")].append(x)
    out = []
    for (sched, variant), xs in sorted(by.items()):
        xs = [x for x in xs if x["S_total"] > math.e]
        if not xs:
            continue
        S = np.array([x["S_total"] for x in xs])
        fs = np.array([x["f_star"] for x in xs])
        one = np.ones_like(S)
        cf = closed_form_refits(S, one, S, fs, forms=("paper", "refit_a"), loo=False)
        out.append(
            {
                "schedule": sched,
                "variant": variant,
                "n": len(xs),
                "a_refit": cf["refit_a"]["params"]["a"],
                "mae_paper": cf["paper"]["mae_in_sample"],
                "mae_refit": cf["refit_a"]["mae_in_sample"],
            }
        )
    return out


def fusion_pairs(records: list[dict]) -> list[dict]:
    """Runs paired on (size, D_total, bits, requested f, seed) with both schedules, 0 < f < 1
    (:func:`coqat.law.analysis.fusion_pairs`; ``delta`` = standard - fused)."""
    from coqat.law.analysis import fusion_pairs as pairs

    out = pairs(records, by=("size", "D_total", "bits", "seed"))
    return sorted(out, key=lambda p: (p["size"], p["D_total"], p["bits"], p["f"], p["seed"]))


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


def fig_loss_vs_fraction(records, law: LawAdapter | None, fstar: list[dict], out: Path):
    plt = _plt()
    g = groups(records)
    keys = sorted(g, key=lambda k: (records_N(g[k]), k[1], k[2]))
    if not keys:
        return None
    n = len(keys)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colors = {"fused": "tab:blue", "standard": "tab:orange"}
    fs_idx = {(x["size"], x["D_total"], x["bits"], x["schedule"]): x for x in fstar}
    for ax, k in zip(axes.flat, keys):
        size, D, bits = k
        N = records_N(g[k])
        for sched, rs in sorted(g[k].items()):
            rs = sorted(rs, key=lambda r: r["f"])
            if not any(0.0 < r["f"] < 1.0 for r in rs):
                continue  # only the shared endpoints: no curve of this schedule was run
            ax.plot([r["f"] for r in rs], [r["loss"] for r in rs], "o-", ms=4,
                    color=colors.get(sched, "gray"), label=sched, alpha=0.85)
            fsx = fs_idx.get((size, D, bits, sched))
            if fsx:
                ax.axvline(fsx["f_star"], color=colors.get(sched, "gray"), ls=":", lw=1)
        if law is not None:
            fgrid = np.linspace(0.0, 1.0, 101)
            mean, lo, hi = law.curve(N, D, bits, fgrid)
            if mean is not None:
                ax.plot(fgrid, mean, "k-", lw=1, label="law")
                if lo is not None and hi is not None:
                    ax.fill_between(fgrid, lo, hi, color="k", alpha=0.12, lw=0, label="law CI")
        ax.set_title(f"{size}  D={D:.3g}  B={bits:g}", fontsize=9)
        ax.set_xlabel("QAT fraction f")
        ax.set_ylabel("val loss")
        if ax.get_legend_handles_labels()[0]:  # a panel may hold unlabelled points only
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out, "loss_vs_fraction.png")


def records_N(by_s: dict[str, list[dict]]) -> float:
    for rs in by_s.values():
        if rs:
            return rs[0]["N"]
    return 0.0


def fig_fstar(fstar: list[dict], fits: list[dict], out: Path):
    if not fstar:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    S = np.array([x["S_total"] for x in fstar])
    for bits in sorted({x["bits"] for x in fstar}):
        for sched, m in (("fused", "o"), ("standard", "s")):
            pts = [x for x in fstar if x["bits"] == bits and x["schedule"] == sched]
            if pts:
                ax.scatter([x["S_total"] for x in pts], [x["f_star"] for x in pts], marker=m,
                           label=f"B={bits:g} {sched}")
    grid = np.geomspace(max(S.min() / 2, 1.01), S.max() * 2, 200)
    ax.plot(grid, closed_form(grid), "k-", lw=1, label=f"paper a={PAPER_A}")
    for i, g in enumerate(fits):
        what = " ".join(x for x in (g["schedule"], g["variant"]) if x)
        ax.plot(grid, closed_form(grid, g["a_refit"]), ls="--", color=f"C{7 + i % 3}", lw=1,
                label=f"refit a={g['a_refit']:.3f} ({what})")
    ax.set_xscale("log")
    ax.set_xlabel("S_total = D / (N B / 8)")
    ax.set_ylabel("optimal QAT fraction f*")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
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
    for bits in sorted({p["bits"] for p in pairs}):
        pts = [p for p in pairs if p["bits"] == bits]
        ax.scatter([p["f"] for p in pts], [p["delta"] for p in pts], label=f"B={bits:g}")
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
)


def build_report(
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    runs: str | Path | None = None,
    law: str | Path | None = None,
    title: str = "coqat sweep report",
) -> Path:
    """Write the figures and ``report.html`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(store, runs)
    adapter, law_note = LawAdapter.load(law)
    fstar = measured_fstar(records)
    fits = refits(fstar)
    pairs = fusion_pairs(records)
    figs: list[tuple[str, str, bytes]] = []
    notes = []

    def add(caption: str, res) -> None:
        if res is not None:
            figs.append((caption, *res))

    add("Loss vs QAT fraction", fig_loss_vs_fraction(records, adapter, fstar, out))
    add("Optimal QAT fraction vs S_total", fig_fstar(fstar, fits, out))
    pred_stats = None
    if adapter is not None:
        res, pred_stats = fig_pred_vs_measured(records, adapter, out)
        add("Predicted vs measured loss", res)
    else:
        notes.append(f"Law: {law_note}.")
    add("Fusion vs standard (paired runs)", fig_fusion(pairs, out))
    add("Memory-budget frontier", fig_memory(records, out))

    parts = [f"<h1>{html.escape(title)}</h1>"]
    src = f"store {store}" if store else f"runs file {runs}"
    parts.append(f"<p class='note'>{len(records)} finished runs from {html.escape(str(src))}."
                 + "".join(f" {html.escape(n)}" for n in notes) + "</p>")
    # run counts
    counts: dict[tuple, int] = defaultdict(int)
    for r in records:
        counts[(r["size"], r["bits"], r["schedule"])] += 1
    parts.append("<h2>Runs</h2>")
    if store:
        from coqat.sweep.store import Store

        with Store(store, readonly=True) as st:
            c = st.counts()
        parts.append(_table(list(c), [list(c.values())]))
    parts.append(_table(["size", "bits", "schedule", "runs"],
                        [[k[0], k[1], k[2], v] for k, v in sorted(counts.items())]))
    parts.append("<h2>Measured optimal fraction</h2>")
    parts.append("<p class='note'>argmin over measured fractions (mean over seeds), refined by "
                 "the vertex of the parabola through the minimum and its two neighbours.</p>")
    parts.append(_table(
        ["size", "N", "D_total", "bits", "schedule", "S_total", "f* measured", "grid argmin",
         "f_hat paper", "min loss", "fractions"],
        [[x["size"], int(x["N"]), int(x["D_total"]), x["bits"], x["schedule"], x["S_total"],
          x["f_star"], x["f_grid_argmin"], x["f_hat_paper"], x["loss_min"], x["n_fractions"]]
         for x in fstar],
    ) if fstar else "<p class='note'>no group with 3 or more fractions.</p>")
    parts.append("<h2>Fit summary</h2>")
    rows: list[list[Any]] = [["closed form, paper a", PAPER_A]]
    for g in fits:  # one refit per kind of run: schedules and variants never share a fit
        what = " ".join(x for x in (g["schedule"], g["variant"]) if x)
        rows.append([f"closed form, refitted a (MAE), {what}, {g['n']} f*", g["a_refit"]])
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
    parts.append("<h2>Figures</h2>")
    for caption, name, data in figs:
        b64 = base64.b64encode(data).decode()
        parts.append(f"<h3>{html.escape(caption)}</h3>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    from coqat.config import atomic_write_text

    path = out / "report.html"
    atomic_write_text(path, doc)
    (out / "fstar.json").write_text(json.dumps({"fstar": fstar, "refits": fits}, indent=2))
    return path
