"""Analysis of the reference experiment: every number and figure of experiments/reference/README.md.

    python experiments/reference/analyze.py

Reads ``results/session*.jsonl`` (+ the ``.log`` files for slice wall times) and
``bench/results/throughput-h200-*.json``; writes ``summary.json`` and ``figures/*.png`` next to this
file and prints the tables. Pure numpy/scipy/matplotlib (never imports torch). The functions are
importable (tests use them); the work runs under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
FIGURES = HERE / "figures"
SUMMARY = HERE / "summary.json"
THROUGHPUT = ROOT / "bench" / "results" / "throughput-h200-2026-11-29.json"
SESSION_FILES = ("session1-s1.jsonl", "session1-s2.jsonl")
CORPUS_TRAIN_TOKENS = 114_219_898  # experiments/reference/manifest.json, splits.train.tokens
PEAK_TFLOPS = 790.0
STEP_STARVED_S = 40.0  # S_total below this: <= 290 optimizer steps at 65,536 tokens/step
BASELINE_F = 0.1  # the "10% rule"
HOLDOUT_S = "S_total>=300 & bits<16"  # within-size extrapolation: fit S <= 80, predict S = 320


# ---- loading ------------------------------------------------------------------------------------
def load_records(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    """All records, in file order, tagged with ``_file`` and ``_order`` (global index)."""
    paths = paths or [RESULTS / f for f in SESSION_FILES]
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                r["_file"] = Path(p).name
                r["_order"] = len(out)
                out.append(r)
    return out


def grid_key(r: dict[str, Any]) -> tuple:
    return (r["size"], float(r["bits"]), int(r["D_total"]), r["schedule"], int(r["seed"]))


def dedupe_grid(records: list[dict[str, Any]]) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """Grid runs with one record per (size, bits, D_total, schedule, seed, f): the later record
    wins (session 1's s2 call re-ran the 2-bit S=20 grid that s1 cut short after two fractions).
    Returns (kept, replicate pairs (earlier, later))."""
    last: dict[tuple, dict] = {}
    pairs = []
    for r in records:
        if r["experiment"] != "grid":
            continue
        k = grid_key(r) + (round(float(r["f"]), 4),)
        if k in last:
            pairs.append((last[k], r))
        last[k] = r
    kept = sorted(last.values(), key=lambda r: r["_order"])
    return kept, pairs


# ---- the measured optimum -----------------------------------------------------------------------
def parabola_vertex(x: Any, y: Any) -> tuple[float, float, float]:
    """Exact parabola through three points: (vertex x, vertex y, curvature a of a x^2 + b x + c).
    Returns the x of the middle point when the points are collinear."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    a, b, c = np.polyfit(x, y, 2)
    if abs(a) < 1e-14:
        return float(x[1]), float(y[1]), float(a)
    xv = -b / (2 * a)
    return float(xv), float(a * xv * xv + b * xv + c), float(a)


def refine_fstar(f: Any, loss: Any) -> dict[str, Any]:
    """Measured optimal fraction (grid argmin refined by the parabola vertex): the one
    definition in ``coqat.law.optimum`` that the report and the closed-form refit use too."""
    from coqat.law.optimum import measured_optimum

    return measured_optimum(f, loss)


def measured_loss_at(f: Any, loss: Any, x: float) -> float:
    """Measured loss curve at fraction ``x`` by linear interpolation between grid points."""
    f = np.asarray(f, float)
    o = np.argsort(f)
    return float(np.interp(x, f[o], np.asarray(loss, float)[o]))


def closed_form(S: Any, a: float) -> np.ndarray:
    from coqat.law import FractionClosedForm

    return np.atleast_1d(FractionClosedForm(a).predict_fraction(np.asarray(S, float)))


def fit_a(S: Any, fstar: Any) -> float:
    from coqat.law import FractionClosedForm

    return FractionClosedForm().fit(np.asarray(S, float), np.asarray(fstar, float), "mae").a


def mae(a: Any, b: Any) -> float:
    return float(np.mean(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def fstar_table(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, D_total, bits, schedule, seed) group of grid runs."""
    from coqat.law import PAPER_A

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in grid:
        groups[grid_key(r)].append(r)
    rows = []
    for k in sorted(groups, key=lambda k: (k[0], -k[1], k[2], k[3], k[4])):
        rs = sorted(groups[k], key=lambda r: r["f"])
        f = np.array([r["f"] for r in rs])
        L = np.array([r["loss"] for r in rs])
        ref = refine_fstar(f, L)
        i10 = int(np.argmin(np.abs(f - BASELINE_F)))
        r0 = rs[0]
        S = float(r0["S_total"])
        steps = int(r0["steps"])
        fh = float(closed_form(S, PAPER_A)[0])
        rows.append(
            {
                "size": k[0],
                "N": int(r0["N"]),
                "bits": k[1],
                "D_total": k[2],
                "schedule": k[3],
                "seed": k[4],
                "S_total": S,
                "s_target": r0.get("s_target"),
                "steps": steps,
                "epochs": k[2] / CORPUS_TRAIN_TOKENS,
                "step_starved": S < STEP_STARVED_S,
                "f": f.tolist(),
                "loss": L.tolist(),
                **ref,
                "f_hat_paper": fh,
                "loss_at_f_hat_paper": measured_loss_at(f, L, fh),
                "regret_f_hat_paper": measured_loss_at(f, L, fh) - ref["loss_grid"],
                "f_at_baseline": float(f[i10]),
                "loss_baseline": float(L[i10]),
                "regret_baseline": float(L[i10] - ref["loss_grid"]),
                "loss_ptq": float(L[0]) if f[0] == 0 else None,
                "loss_fp": float(r0["loss_fp"]) if f[0] == 0 else None,
            }
        )
    return rows


def closed_form_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MAE of the paper's closed form and of our refit of ``a`` (all pairs, and S >= 40 only),
    with leave-one-out MAE of the refit, on the refined f*."""
    from coqat.law import PAPER_A

    S = np.array([r["S_total"] for r in rows])
    fs = np.array([r["f_refined"] for r in rows])
    fg = np.array([r["f_grid"] for r in rows])
    out: dict[str, Any] = {"paper_a": PAPER_A}
    for tag, m in (("all", np.ones(len(rows), bool)), ("S_ge_40", S >= STEP_STARVED_S)):
        a = fit_a(S[m], fs[m])
        loo = []
        for j in np.flatnonzero(m):
            mm = m.copy()
            mm[j] = False
            loo.append(abs(closed_form(S[j], fit_a(S[mm], fs[mm]))[0] - fs[j]))
        out[tag] = {
            "n": int(m.sum()),
            "a_refit": a,
            "mae_paper": mae(closed_form(S[m], PAPER_A), fs[m]),
            "mae_paper_grid_fstar": mae(closed_form(S[m], PAPER_A), fg[m]),
            "mae_refit_in_sample": mae(closed_form(S[m], a), fs[m]),
            "mae_refit_loo": float(np.mean(loo)),
        }
    return out


def growth_by_bits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per bit width: f* (refined) ordered by S_total, and whether it is non-decreasing in S
    over all S and over S >= 40 (tolerance 0.02)."""
    out = {}
    for b in sorted({r["bits"] for r in rows}, reverse=True):
        rs = sorted((r for r in rows if r["bits"] == b), key=lambda r: r["S_total"])
        S = [r["S_total"] for r in rs]
        fs = [r["f_refined"] for r in rs]
        nd = lambda v: bool(all(y >= x - 0.02 for x, y in zip(v, v[1:])))  # noqa: E731
        big = [f for s, f in zip(S, fs) if s >= STEP_STARVED_S]
        out[f"{b:g}"] = {
            "S_total": S,
            "f_refined": fs,
            "grows_all_S": nd(fs),
            "grows_S_ge_40": nd(big),
        }
    return out


# ---- LR sweep -----------------------------------------------------------------------------------
def lr_table(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in records:
        if r["experiment"] != "lr_sweep":
            continue
        d = out.setdefault(
            r["size"], {"N": int(r["N"]), "D_total": int(r["D_total"]), "steps": int(r["steps"])}
        )
        d.setdefault("loss", {})[f"{r['lr']:g}"] = float(r["loss"])
    for d in out.values():
        d["best_lr"] = float(min(d["loss"], key=d["loss"].get))
        d["best_at_edge"] = d["best_lr"] in (
            min(map(float, d["loss"])),
            max(map(float, d["loss"])),
        )
    return out


# ---- laws ---------------------------------------------------------------------------------------
def law_runs(grid: list[dict[str, Any]], min_S: float = 0.0):
    """Runs table for the loss laws: every grid run (quantized; f = 0 rows are PTQ) plus, for each
    f = 0 run, its FP model as a 16-bit baseline (loss_fp at D_fp = D_total). Cluster = FP trunk."""
    from coqat.law import Runs

    recs = []
    for r in grid:
        if r["S_total"] < min_S:
            continue
        c = str(r["trunk"])
        recs.append(
            {
                "N": r["N"],
                "D_fp": r["D_fp"],
                "D_qat": r["D_qat"],
                "bits": r["bits"],
                "loss": r["loss"],
                "cluster": c,
            }
        )
        if r["D_qat"] == 0 and r.get("loss_fp") is not None and math.isfinite(r["loss_fp"]):
            recs.append(
                {
                    "N": r["N"],
                    "D_fp": r["D_total"],
                    "D_qat": 0,
                    "bits": 16.0,
                    "loss": r["loss_fp"],
                    "cluster": c,
                }
            )
    return Runs.from_records(recs)


FIXED_ONE_SIZE = {"A": 1e-3, "alpha": 0.0, "psi": 0.0, "nu": 0.0}


def one_size_qat_law():
    """QATLaw with its N-dependence switched off (A at its lower bound 1e-3, alpha = psi = nu = 0):
    with a single N, E absorbs A/N^alpha and phi, lambda absorb N^psi, N^nu. Same predictions at
    this N as the full law; 12 free parameters instead of 16."""
    from coqat.law import QATLaw

    spec = []
    for n, lg, lo, hi, a, b in QATLaw._spec:
        if n in FIXED_ONE_SIZE:
            v = FIXED_ONE_SIZE[n]
            spec.append((n, lg, v, v, v, v))
        else:
            spec.append((n, lg, lo, hi, a, b))
    cls = type("QATLawOneSize", (QATLaw,), {"_spec": spec})
    return cls()


def _at_bounds(law) -> list[str]:
    out = []
    for n, _lg, lo, hi, *_ in law._spec:
        v = law.params_[n]
        if lo == hi:
            continue
        if np.isclose(v, lo, rtol=1e-3, atol=1e-6) or np.isclose(v, hi, rtol=1e-3, atol=1e-6):
            out.append(n)
    return out


def fit_qat_laws(grid: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """QATLaw fits (full, one-size constrained; all S and S >= 40), each with in-sample errors and
    its continuous optimal fraction per measured group vs the measured f*."""
    from coqat.law import QATLaw, fit_law
    from coqat.plan import optimal_fraction

    out = {}
    variants = [
        ("full_all_S", QATLaw, 0.0),
        ("one_size_all_S", one_size_qat_law, 0.0),
        ("one_size_S_ge_40", one_size_qat_law, STEP_STARVED_S),
    ]
    for name, make, min_S in variants:
        runs = law_runs(grid, min_S)
        rec: dict[str, Any] = {"min_S": min_S, "n_runs_table": len(runs)}
        try:
            law = fit_law(make(), runs, seed=0)
        except Exception as e:  # report a failed fit instead of hiding it
            rec["error"] = f"{type(e).__name__}: {e}"
            out[name] = rec
            continue
        fr = law.fit_report_
        free = sum(1 for s in law._spec if s[2] != s[3])
        rec.update(
            converged=bool(law.converged),
            n_fit=fr["n"],
            n_excluded_ptq=fr["n_excluded_ptq"],
            k_free=free,
            mae=fr["mae"],
            mean_rel_err=fr["mean_rel_err"],
            max_rel_err=fr["max_rel_err"],
            rmse_log=fr["rmse_log"],
            params=law.params_,
            params_at_bounds=_at_bounds(law),
        )
        fo = []
        for r in rows:
            if r["S_total"] < min_S:
                continue
            o = optimal_fraction(law, r["N"], r["D_total"], r["bits"], level=None)
            fo.append(
                {
                    "bits": r["bits"],
                    "S_total": r["S_total"],
                    "f_law": o["f_opt"],
                    "f_measured": r["f_refined"],
                    "loss_law_at_f_law": o["loss_opt"],
                    "regret_measured": measured_loss_at(r["f"], r["loss"], o["f_opt"])
                    - r["loss_grid"],
                    "regret_law_10pct": o["regret_loss"],
                }
            )
        rec["f_opt"] = fo
        rec["f_opt_mae"] = mae([x["f_law"] for x in fo], [x["f_measured"] for x in fo])
        rec["mean_regret_measured"] = float(np.mean([x["regret_measured"] for x in fo]))
        # predicted loss curves for the figure
        rec["curves"] = {
            f"{r['bits']:g}/{r['D_total']}": law.loss_at_fraction(
                r["N"], r["D_total"], r["bits"], np.linspace(0, 1, 51)
            ).tolist()
            for r in rows
            if r["S_total"] >= min_S
        }
        out[name] = rec
    return out


def compare_laws(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The four loss laws on the same runs (PTQ runs dropped, since QATLaw does not fit them):
    in-sample errors and a within-size extrapolation in S (rule HOLDOUT_S: fit S <= 80 plus all
    FP baselines, predict the 18 quantized S = 320 runs)."""
    from coqat.law import ChenQATLaw, KumarPrecisionLaw, PerBitChinchilla, QATLaw, compare

    runs = law_runs(grid)
    runs = runs.filter(~((runs.bits < 16) & (runs.D_qat <= 0)))
    try:
        rows = compare(
            runs,
            [QATLaw, PerBitChinchilla, ChenQATLaw, KumarPrecisionLaw],
            rule=HOLDOUT_S,
            seed=0,
        )
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"n_runs": len(runs), "rule": HOLDOUT_S, "rows": rows}


# ---- noise from incidental replicates ------------------------------------------------------------
def replicates(records: list[dict[str, Any]], pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    """Identical configurations that ran twice (no seeds were run on purpose):
    * grid runs re-run by the s2 call (same trunk, same seed);
    * the FP model at f = 0 of trunks shared across bit widths (the trunk key ignores bits; each
      call retrains its trunks), plus the 2m lr-sweep run at lr 3e-3 (same FP config, 19.0M tok).
    """
    grid_pairs = [
        {
            "bits": a["bits"],
            "D_total": a["D_total"],
            "f": a["f"],
            "loss": [a["loss"], b["loss"]],
            "diff": b["loss"] - a["loss"],
        }
        for a, b in pairs
    ]
    fp: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r["experiment"] == "grid" and r["D_qat"] == 0:
            fp[int(r["D_total"])].append(float(r["loss_fp"]))
        if r["experiment"] == "lr_sweep" and r["size"] == "2m" and np.isclose(r["lr"], 3e-3):
            fp[int(r["D_total"])].append(float(r["loss"]))
    fp_rows = [
        {
            "D_total": D,
            "steps": D // 65536,
            "loss_fp": v,
            "range": max(v) - min(v),
            "sd": float(np.std(v, ddof=1)),
        }
        for D, v in sorted(fp.items())
        if len(v) > 1
    ]
    return {"grid_pairs": grid_pairs, "fp_replicates": fp_rows}


# ---- GPU time and throughput --------------------------------------------------------------------
def slice_walls(paths: list[Path] | None = None) -> dict[str, float]:
    paths = paths or sorted(RESULTS.glob("session*.log"))
    out = {}
    for p in paths:
        m = re.search(r"slice done in (\d+) s", Path(p).read_text())
        if m:
            out[Path(p).stem] = float(m.group(1))
    return out


def gpu_time(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Device seconds by category from the per-run wall times (private part of each run) and the
    trunk times (one per (file, trunk)); throughput of the private parts of the branched runs."""
    per_file: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen_trunks = set()
    thr: dict[str, list[float]] = defaultdict(list)
    first: dict[tuple, bool] = {}
    for r in records:
        pf = per_file[r["_file"]]
        w = float(r["wall_fp"]) + float(r["wall_qat"])
        pf[r["experiment"] + "_runs_s"] += w
        if r["experiment"] == "grid":
            tk = (r["_file"], r["trunk"])
            if tk not in seen_trunks:
                seen_trunks.add(tk)
                pf["trunk_s"] += float(r["trunk_s"])
            # first QAT run of each (file, bits) carries torch.compile: excluded from throughput
            key = (r["_file"], r["bits"], r["D_qat"] > 0)
            is_first = key not in first
            first[key] = True
            priv = (int(r["steps"]) - int(r["branch_step"])) * int(r["tokens_per_step"])
            if not is_first and w > 0 and r["D_total"] >= 75e6:
                thr["qat" if r["D_qat"] > 0 else "fp_cooldown_ptq"].append(priv / w)
    walls = slice_walls()
    rows = {}
    for f, d in per_file.items():
        stem = f.replace(".jsonl", "")
        acc = d["lr_sweep_runs_s"] + d["grid_runs_s"] + d["trunk_s"]
        rows[stem] = {
            "lr_sweep_runs_s": d["lr_sweep_runs_s"],
            "grid_runs_s": d["grid_runs_s"],
            "trunk_s": d["trunk_s"],
            "accounted_s": acc,
            "slice_wall_s": walls.get(stem),
            "overhead_s": (walls[stem] - acc) if stem in walls else None,
        }
    # FP trunk throughput of the large trunks (tokens up to the latest branch step)
    trunk_thr = []
    for r in records:
        if r["experiment"] == "grid" and r["D_total"] >= 75e6 and r["D_qat"] == 0:
            # trunk trained to the largest branch step of its grid (f = 0.1 branch)
            same = [x for x in records if x.get("trunk") == r["trunk"] and x["_file"] == r["_file"]]
            b = max(int(x["branch_step"]) for x in same)
            trunk_thr.append(b * int(r["tokens_per_step"]) / float(r["trunk_s"]))
    total = sum(v["slice_wall_s"] or v["accounted_s"] for v in rows.values())
    return {
        "per_slice": rows,
        "total_slice_wall_s": total,
        "n_runs": len(records),
        "tokens_per_s_qat_private": float(np.median(thr["qat"])) if thr["qat"] else None,
        "tokens_per_s_fp_trunk": float(np.median(trunk_thr)) if trunk_thr else None,
        "n_qat_throughput_runs": len(thr["qat"]),
    }


def compile_overhead(records: list[dict[str, Any]]) -> dict[str, Any]:
    """torch.compile (and first-use) time: the first run of each (file, experiment, size, bits,
    FP-or-QAT) minus what its private tokens would take at the median tokens/s of the other runs of
    the same (file, experiment, size, bits, D_total, FP-or-QAT) family. Heuristic."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["_file"], r["experiment"], r["size"], r["bits"], r["D_qat"] > 0)].append(r)
    items = []
    for k, rs in groups.items():
        first = rs[0]
        fam = [
            x
            for x in rs[1:]
            if x["D_total"] == first["D_total"] and float(x["wall_fp"]) + float(x["wall_qat"]) > 0
        ]

        def priv(x):
            return (int(x["steps"]) - int(x.get("branch_step") or 0)) * int(x["tokens_per_step"])

        if not fam:  # fall back on the same family in another file
            fam = [
                x
                for kk, xs in groups.items()
                if kk[1:] == k[1:] and kk[0] != k[0]
                for x in xs[1:]
                if x["D_total"] == first["D_total"]
            ]
        if not fam:
            continue
        tps = float(
            np.median([priv(x) / (float(x["wall_fp"]) + float(x["wall_qat"])) for x in fam])
        )
        w = float(first["wall_fp"]) + float(first["wall_qat"])
        extra = w - priv(first) / tps
        items.append({"group": [str(v) for v in k], "wall_s": w, "extra_s": extra})
    # the first FP trunk of each file (FP model compile), at the median large-trunk throughput
    rate = gpu_time(records)["tokens_per_s_fp_trunk"]
    seen = set()
    for r in records:
        if r["experiment"] != "grid" or r["_file"] in seen:
            continue
        seen.add(r["_file"])
        same = [x for x in records if x.get("trunk") == r["trunk"] and x["_file"] == r["_file"]]
        tok = max(int(x["branch_step"]) for x in same) * int(r["tokens_per_step"])
        items.append(
            {
                "group": [r["_file"], "trunk", r["size"], str(r["bits"]), "False"],
                "wall_s": float(r["trunk_s"]),
                "extra_s": float(r["trunk_s"]) - tok / rate,
            }
        )
    return {"items": items, "total_s": float(sum(max(i["extra_s"], 0.0) for i in items))}


def bench_throughput(path: Path = THROUGHPUT) -> list[dict[str, Any]]:
    d = json.loads(Path(path).read_text())
    return [
        {
            "size": r["size"],
            "bits": r["bits"],
            "params": r["params"],
            "tokens_per_s": r["tokens_per_s"],
            "mfu": r["mfu"],
            "model_tflops": r["model_tflops"],
            "warmup_s": r["warmup_s"],
            "peak_mem_gib": r["peak_mem_gib"],
        }
        for r in d["rows"]
    ]


def next_session_plan(
    bench: list[dict[str, Any]], efficiency: float, fractions_tokens: float = 4.2
) -> list[dict[str, Any]]:
    """Device-time estimate per (size, bits, S_total) grid of 7 fused fractions: tokens =
    ``fractions_tokens`` x D (the trunk to the f = 0.1 branch, 0.9 D, plus the private parts:
    0.2 D cooldown for f = 0 and f x D for each other f: 3.3 D), at the benchmarked 4-bit QAT
    throughput (batch 256) times ``efficiency`` (measured / benchmark at 2m in session 1).
    Untested sizes: tokens/s = MFU x 790 TFLOP/s / FLOPs-per-token, MFU interpolated in log N."""
    from coqat.model.config import flops_per_token, ladder, param_counts

    b4 = sorted((r for r in bench if r["bits"] == 4.0), key=lambda r: r["params"])
    lnN = np.log([r["params"] for r in b4])
    mfu = np.array([r["mfu"] for r in b4])
    out = []
    plan = [
        ("4m", (4, 2, 1), (20, 80, 320)),
        ("7m", (4, 2, 1), (20, 80, 320)),
        ("12m", (4, 2, 1), (20, 80)),
        ("17m", (4, 2), (20, 80)),
        ("30m", (4, 2), (20, 80)),
        ("90m", (4,), (20,)),
    ]
    for size, bits_list, S_list in plan:
        cfg = ladder(size, seq_len=512, vocab_size=8192)
        N = param_counts(cfg).total
        m = float(np.interp(np.log(N), lnN, mfu))
        tps = m * PEAK_TFLOPS * 1e12 / flops_per_token(cfg)
        for b in bits_list:
            for S in S_list:
                D = S * N * b / 8
                sec = fractions_tokens * D / (tps * efficiency)
                out.append(
                    {
                        "size": size,
                        "N": N,
                        "bits": b,
                        "S_total": S,
                        "D_total": D,
                        "epochs": D / CORPUS_TRAIN_TOKENS,
                        "steps_at_65k": D / 65536,
                        "tokens_per_s_est": tps * efficiency,
                        "device_s": sec,
                    }
                )
    return out


def plan_by_size(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in plan:
        d = out.setdefault(
            r["size"],
            {"size": r["size"], "N": r["N"], "bits": [], "S_total": [], "device_s": 0.0},
        )
        d["bits"] = sorted(set(d["bits"]) | {r["bits"]}, reverse=True)
        d["S_total"] = sorted(set(d["S_total"]) | {r["S_total"]})
        d["device_s"] += r["device_s"]
        d["max_epochs"] = max(d.get("max_epochs", 0.0), r["epochs"])
        d["tokens_per_s_est"] = r["tokens_per_s_est"]
    return list(out.values())


# ---- figures ------------------------------------------------------------------------------------
def make_figures(summary: dict[str, Any], outdir: Path = FIGURES) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    rows = summary["fstar"]
    files = []
    bits_list = sorted({r["bits"] for r in rows}, reverse=True)
    Ss = sorted({r["s_target"] for r in rows})
    law = summary["qat_law"].get("one_size_S_ge_40", {})
    fig, axes = plt.subplots(len(bits_list), len(Ss), figsize=(4 * len(Ss), 3.2 * len(bits_list)))
    axes = np.atleast_2d(axes)
    for i, b in enumerate(bits_list):
        for j, s in enumerate(Ss):
            ax = axes[i, j]
            rr = [r for r in rows if r["bits"] == b and r["s_target"] == s]
            if not rr:
                ax.axis("off")
                continue
            r = rr[0]
            ax.plot(r["f"], r["loss"], "o-", color="C0", label="measured")
            ax.plot(r["f_refined"], r["loss_refined"], "r*", ms=13, label="f* (refined)")
            ax.axvline(r["f_hat_paper"], color="k", ls=":", label="paper f_hat")
            c = law.get("curves", {}).get(f"{b:g}/{r['D_total']}")
            if c:
                ax.plot(
                    np.linspace(0, 1, 51), c, "--", color="C2", label="QATLaw fit (1-size, S>=40)"
                )
            lo = min(r["loss"])
            hi = sorted(r["loss"])[-2] if len(r["loss"]) > 2 else max(r["loss"])
            ax.set_ylim(lo - 0.05 * (hi - lo) - 0.01, hi + 0.15 * (hi - lo) + 0.01)
            ax.set_title(
                f"{b:g}-bit, S={r['S_total']:.0f}, D={r['D_total'] / 1e6:.1f}M ({r['steps']} st)",
                fontsize=9,
            )
            ax.set_xlabel("QAT fraction f")
            ax.set_ylabel("val loss")
            if i == 0 and j == len(Ss) - 1:
                ax.legend(fontsize=7)
    fig.suptitle("2m: final val loss of the quantized model vs f (f=0: PTQ, may be off-scale)")
    fig.tight_layout()
    p = outdir / "loss_vs_f.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    files.append(p.name)

    cf = summary["closed_form"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    S = np.geomspace(10, 2000, 200)
    ax.plot(S, closed_form(S, cf["paper_a"]), "k-", label=f"paper a={cf['paper_a']:.3f}")
    ax.plot(
        S, closed_form(S, cf["all"]["a_refit"]), "C3--", label=f"refit a={cf['all']['a_refit']:.3f}"
    )
    ax.plot(
        S,
        closed_form(S, cf["S_ge_40"]["a_refit"]),
        "C2-.",
        label=f"refit S>=40 a={cf['S_ge_40']['a_refit']:.3f}",
    )
    for k, b in enumerate(bits_list):
        rr = [r for r in rows if r["bits"] == b]
        x = np.array([r["S_total"] for r in rr]) * (1 + 0.04 * (k - 1))
        ax.errorbar(
            x,
            [r["f_refined"] for r in rr],
            yerr=[r["spacing"] for r in rr],
            fmt="o",
            color=f"C{k}",
            capsize=3,
            label=f"{b:g}-bit f* (bar: grid spacing)",
        )
    ax.axvspan(10, STEP_STARVED_S, color="0.9", zorder=0, label="step-starved (<=290 steps)")
    ax.set_xscale("log")
    ax.set_xlim(10, 2000)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("S_total = D / (N B/8)")
    ax.set_ylabel("optimal QAT fraction")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = outdir / "fstar_vs_S.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    files.append(p.name)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for size, d in summary["lr_sweep"].items():
        lrs = sorted(d["loss"], key=float)
        ax.plot([float(x) for x in lrs], [d["loss"][x] for x in lrs], "o-", label=size)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("FP val loss (10 tokens/param)")
    ax.legend()
    fig.tight_layout()
    p = outdir / "lr_sweep.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    files.append(p.name)
    return files


# ---- driver -------------------------------------------------------------------------------------
def analyze(with_laws: bool = True) -> dict[str, Any]:
    records = load_records()
    grid, pairs = dedupe_grid(records)
    rows = fstar_table(grid)
    summary: dict[str, Any] = {
        "inputs": list(SESSION_FILES),
        "n_records": len(records),
        "n_grid_runs_used": len(grid),
        "n_duplicate_grid_records": len(pairs),
        "lr_sweep": lr_table(records),
        "fstar": rows,
        "closed_form": closed_form_summary(rows),
        "growth": growth_by_bits(rows),
        "mean_regret_baseline": float(np.mean([r["regret_baseline"] for r in rows])),
        "mean_regret_baseline_S_ge_40": float(
            np.mean([r["regret_baseline"] for r in rows if r["S_total"] >= STEP_STARVED_S])
        ),
        "mean_regret_f_hat_paper_S_ge_40": float(
            np.mean([r["regret_f_hat_paper"] for r in rows if r["S_total"] >= STEP_STARVED_S])
        ),
        "replicates": replicates(records, pairs),
        "gpu_time": gpu_time(records),
        "compile_overhead": compile_overhead(records),
        "bench": bench_throughput(),
    }
    bench2 = [r for r in summary["bench"] if r["size"] == "2m" and r["bits"] == 4.0][0]
    eff = summary["gpu_time"]["tokens_per_s_qat_private"] / bench2["tokens_per_s"]
    summary["efficiency_vs_bench_2m"] = eff
    summary["next_plan"] = next_session_plan(summary["bench"], eff)
    summary["next_plan_by_size"] = plan_by_size(summary["next_plan"])
    if with_laws:
        summary["qat_law"] = fit_qat_laws(grid, rows)
        summary["law_comparison"] = compare_laws(grid)
    return summary


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def print_tables(s: dict[str, Any]) -> None:
    print("== LR sweep (FP, 10 tokens/param) ==")
    for size, d in s["lr_sweep"].items():
        cells = "  ".join(
            f"lr {k}: {v:.4f}" for k, v in sorted(d["loss"].items(), key=lambda x: float(x[0]))
        )
        edge = " (at sweep edge)" if d["best_at_edge"] else ""
        print(
            f"{size:>4} D={d['D_total'] / 1e6:.1f}M steps={d['steps']}  {cells}  "
            f"best {d['best_lr']:g}{edge}"
        )
    print("\n== measured f* (2m, fused, seed 0) ==")
    print(
        "bits  S_tot  D(M)  steps  f*grid  f*ref  +-sp   f_hat_paper  refit_all  refit_S>=40  "
        "L(f*)   L(0.1)  regret10  L_PTQ   regret(f_hat)"
    )
    a_all = s["closed_form"]["all"]["a_refit"]
    a_40 = s["closed_form"]["S_ge_40"]["a_refit"]
    for r in s["fstar"]:
        print(
            f"{r['bits']:>4g} {r['S_total']:6.1f} {r['D_total'] / 1e6:6.1f} {r['steps']:5d} "
            f"{r['f_grid']:7.3f} {r['f_refined']:6.3f} {r['spacing']:5.2f} "
            f"{r['f_hat_paper']:11.3f} {closed_form(r['S_total'], a_all)[0]:10.3f} "
            f"{closed_form(r['S_total'], a_40)[0]:12.3f} "
            f"{r['loss_grid']:7.4f} {r['loss_baseline']:7.4f} {r['regret_baseline']:8.4f} "
            f"{r['loss_ptq']:7.4f} {r['regret_f_hat_paper']:8.4f}"
        )
    print(
        f"mean regret (S>=40): 10% rule {s['mean_regret_baseline_S_ge_40']:.4f}, "
        f"paper f_hat {s['mean_regret_f_hat_paper_S_ge_40']:.4f} nats (all S, 10% rule: "
        f"{s['mean_regret_baseline']:.4f})"
    )
    cf = s["closed_form"]
    print("\n== closed form MAE on refined f* ==")
    for tag in ("all", "S_ge_40"):
        c = cf[tag]
        print(
            f"{tag:8s} n={c['n']}  paper a={cf['paper_a']}: MAE {c['mae_paper']:.3f}   "
            f"refit a={c['a_refit']:.3f}: MAE {c['mae_refit_in_sample']:.3f} "
            f"(leave-one-out {c['mae_refit_loo']:.3f})"
        )
    print("\n== does f* grow with S_total? ==")
    for b, g in s["growth"].items():
        pts = ", ".join(f"S={x:.0f}: {y:.2f}" for x, y in zip(g["S_total"], g["f_refined"]))
        print(f"{b}-bit  {pts}   all S: {g['grows_all_S']}  S>=40: {g['grows_S_ge_40']}")
    if "qat_law" in s:
        print("\n== QATLaw fits (in-sample) ==")
        for name, q in s["qat_law"].items():
            if "error" in q:
                print(f"{name}: FAILED {q['error']}")
                continue
            print(
                f"{name}: converged={q['converged']} n={q['n_fit']} k_free={q['k_free']} "
                f"MAE={q['mae']:.4f} mean rel={q['mean_rel_err']:.4f} "
                f"max rel={q['max_rel_err']:.4f} "
                f"f_opt MAE vs f*={q['f_opt_mae']:.3f} measured regret of f_opt="
                f"{q['mean_regret_measured']:.4f} at bounds={q['params_at_bounds']}"
            )
            print(
                "   f_law vs f*: "
                + ", ".join(
                    f"{x['bits']:g}b S{x['S_total']:.0f}: {x['f_law']:.2f}/{x['f_measured']:.2f}"
                    for x in q["f_opt"]
                )
            )
        lc = s["law_comparison"]
        print(f"\n== law comparison (PTQ runs dropped; held out: {HOLDOUT_S}) ==")
        if "error" in lc:
            print("FAILED", lc["error"])
        else:
            for r in lc["rows"]:
                print(
                    f"{r['law']:>20s} k={r['k']:2d} conv={r['converged']} MAE={r['mae']:.4f} "
                    f"rel={r['mean_rel_err']:.4f} AIC={r['aic']:.1f} | held-out rel "
                    f"{r['heldout_mean_rel_err']:.4f} max {r['heldout_max_rel_err']:.4f} "
                    f"(n={r['n_heldout']}) {r['note']}"
                )
    rp = s["replicates"]
    print("\n== incidental replicates ==")
    for p in rp["grid_pairs"]:
        print(
            f"grid {p['bits']:g}b D={p['D_total'] / 1e6:.1f}M f={p['f']:.3f}: {p['loss']} "
            f"diff {p['diff']:+.4f}"
        )
    for p in rp["fp_replicates"]:
        print(
            f"FP D={p['D_total'] / 1e6:.1f}M ({p['steps']} steps): {p['loss_fp']} "
            f"range {p['range']:.4f}"
        )
    g = s["gpu_time"]
    print("\n== GPU time ==")
    for k, v in g["per_slice"].items():
        print(k, {a: (round(b, 1) if isinstance(b, float) else b) for a, b in v.items()})
    print(
        f"total {g['total_slice_wall_s']:.0f} s; "
        f"QAT private tokens/s {g['tokens_per_s_qat_private']:.3g}, "
        f"FP trunk tokens/s {g['tokens_per_s_fp_trunk']:.3g}; efficiency vs bench "
        f"{s['efficiency_vs_bench_2m']:.2f}"
    )
    print(f"estimated torch.compile / first-use overhead: {s['compile_overhead']['total_s']:.0f} s")
    print("\n== next-session device-time estimate (7 fractions, 1 seed) ==")
    for r in s["next_plan"]:
        print(
            f"{r['size']:>4} {r['bits']}b S={r['S_total']:4d} D={r['D_total'] / 1e6:8.1f}M "
            f"epochs={r['epochs']:5.1f} steps@65k={r['steps_at_65k']:7.0f} {r['device_s']:7.0f} s"
        )
    for d in s["next_plan_by_size"]:
        print(
            f"{d['size']:>4} bits {d['bits']} S {d['S_total']}: {d['device_s'] / 60:6.1f} min "
            f"(max {d['max_epochs']:.1f} epochs, {d['tokens_per_s_est'] / 1e6:.2f}M tok/s)"
        )
    print(f"total {sum(r['device_s'] for r in s['next_plan']) / 3600:.2f} h")


def main() -> None:
    s = analyze()
    s["figures"] = make_figures(s)
    SUMMARY.write_text(json.dumps(_jsonable(s), indent=1) + "\n")
    print_tables(s)
    print(
        f"\nwrote {SUMMARY.relative_to(ROOT)} and {len(s['figures'])} figures "
        f"in {FIGURES.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
