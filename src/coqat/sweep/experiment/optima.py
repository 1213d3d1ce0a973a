"""The measured optima of one basis: the f* table with the rules' regrets, the closed forms
refitted on it, bootstrap intervals, and how f* moves with S_total and with N."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from coqat.law import FractionClosedForm
from coqat.law.analysis import (
    closed_form_refits,
    fstar_bootstrap,
    fstar_table,
    grids,
    interval,
    mae,
)
from coqat.sweep.experiment.records import main_runs
from coqat.sweep.experiment.spec import ExperimentSpec

GRID_BY = ("size", "bits", "D_total", "schedule", "seed")


def fstar_rows(records: list[dict[str, Any]], spec: ExperimentSpec, basis: Any) -> list[dict]:
    """One row per grid of ``main_runs`` (runs of one call, >= spec.min_fractions fractions):
    ``coqat.law.analysis.fstar_row`` with the rules ``paper`` (the paper's closed form) and
    ``baseline`` (the fixed fraction spec.baseline), plus the PTQ and FP losses at f = 0,
    ``s_target`` and ``epochs``."""
    gs = grids(main_runs(records, basis), by=GRID_BY, min_fractions=spec.min_fractions)
    rules = {"paper": FractionClosedForm(), "baseline": spec.baseline}
    rows = fstar_table(gs, rules, min_steps=spec.min_steps)
    for g, r in zip(gs, rows):
        r0 = g.runs[0]
        at0 = float(r0["f"]) == 0.0
        r.update(
            basis=basis,
            s_target=r0.get("s_target"),
            loss_ptq=float(r0["loss"]) if at0 else None,
            loss_fp=float(r0["loss_fp"]) if at0 else None,
        )
    rows.sort(key=lambda r: (r["N"], -r["bits"], r["D_total"], r["seed"]))
    return rows


def refits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``coqat.law.analysis.closed_form_refits`` on every row (``all``) and on the rows that are
    not step-starved (``trained``)."""
    out = {}
    for tag, use in (("all", rows), ("trained", [r for r in rows if not r["step_starved"]])):
        if len(use) < 3:
            continue
        S, N, D, fs = (np.array([r[k] for r in use], float)
                       for k in ("S_total", "N", "D_total", "f_refined"))
        out[tag] = {"n": len(use), **closed_form_refits(S, N, D, fs)}
    return out


def intervals(rows: list[dict[str, Any]], spec: ExperimentSpec) -> dict[str, Any]:
    """The parametric bootstrap of f* (``fstar_bootstrap`` with the spec's noise model): a 90%
    interval per row (written into the rows as ``f_refined_ci90``), the paper's MAE interval,
    the share of draws in which f* at the larger S of a (size, bits) pair exceeds f* at the
    smaller (seed 0, trained rows), and the share of (draw, row) with f* above the paper's."""
    ns = spec.noise
    draws = fstar_bootstrap(rows, ns.model(), n=ns.draws, seed=ns.seed)
    for j, r in enumerate(rows):
        r["f_refined_ci90"] = interval(draws[:, j])
    S = np.array([r["S_total"] for r in rows])
    big = np.array([not r["step_starved"] for r in rows], bool)
    fh = np.asarray(FractionClosedForm().predict_fraction(S), float)
    grows = {}
    for k in sorted({(r["size"], r["bits"]) for r in rows}, key=str):
        idx = [j for j, r in enumerate(rows)
               if (r["size"], r["bits"]) == k and big[j] and r["seed"] == 0]
        idx.sort(key=lambda j: S[j])
        if len(idx) >= 2 and S[idx[-1]] > S[idx[0]] * 1.01:
            grows[f"{k[0]}/{k[1]:g}"] = float(np.mean(draws[:, idx[-1]] > draws[:, idx[0]]))
    return {
        "n_draws": ns.draws,
        "noise_sd_by_steps": [list(p) for p in ns.steps_sd],
        "noise_sd_f1": ns.sd_f1,
        "mae_paper_all_ci90": interval(np.mean(np.abs(draws - fh), axis=1)),
        "mae_paper_trained_ci90": interval(np.mean(np.abs(draws[:, big] - fh[big]), axis=1)),
        "p_fstar_grows": grows,
        "above_paper_share": float(np.mean(draws[:, big] > fh[big])),
    }


def growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (size, bits) measured at two or more S_total (seed 0): f* in the order of S."""
    out = {}
    rows = [r for r in rows if r["seed"] == 0]
    for size, b in sorted({(r["size"], r["bits"]) for r in rows}, key=lambda x: (x[0], -x[1])):
        rs = sorted((r for r in rows if (r["size"], r["bits"]) == (size, b)),
                    key=lambda r: r["S_total"])
        if len({round(r["S_total"]) for r in rs}) < 2:
            continue
        out[f"{size}/{b:g}"] = {
            "size": size,
            "bits": b,
            "S_total": [r["S_total"] for r in rs],
            "f_refined": [r["f_refined"] for r in rs],
            "trained": [not r["step_starved"] for r in rs],
        }
    return out


def seed_checks(records: list[dict[str, Any]], spec: ExperimentSpec, basis: Any) -> list[dict]:
    """Seeds > 0 run at a few fractions of a seed-0 grid (fewer than spec.min_fractions, so no
    row of their own): both seeds' losses at the shared fractions (each seed's runs of one call)
    and each seed's best fraction among them."""
    gs = grids(main_runs(records, basis), by=GRID_BY, min_fractions=2)
    base = {tuple(g.labels[k] for k in GRID_BY if k != "seed"): g
            for g in gs if g.labels["seed"] == 0}
    out = []
    for g in gs:
        seed = g.labels["seed"]
        ref = base.get(tuple(g.labels[k] for k in GRID_BY if k != "seed"))
        if seed == 0 or len(g.f) >= spec.min_fractions or ref is None:
            continue
        theirs = {round(float(x), 4): y for x, y in zip(ref.f, ref.loss)}
        pts = [(round(float(x), 4), y) for x, y in zip(g.f, g.loss) if round(float(x), 4) in theirs]
        if len(pts) < 2:
            continue
        f = [x for x, _ in pts]
        mine = [float(y) for _, y in pts]
        other = [float(theirs[x]) for x in f]
        out.append({
            "size": g.labels["size"], "bits": g.bits, "D_total": g.D, "S_total": g.S_total,
            "steps": g.steps, "seed": seed, "f": f, "loss": mine, "loss_seed0": other,
            "diff": [a - b for a, b in zip(mine, other)],
            "best_f": f[int(np.argmin(mine))], "best_f_seed0": f[int(np.argmin(other))],
        })
    return out


def across_sizes(rows: list[dict[str, Any]], s_target: float = 80) -> dict[str, list[dict]]:
    """f* at one target S_total across sizes, per bit width, on the seed-0 grids that are not
    step-starved (the paper's closed form depends on S alone, so at fixed S it says f* does not
    move with N)."""
    by_bits: dict[float, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("s_target") == s_target and r["seed"] == 0 and not r["step_starved"]:
            by_bits[r["bits"]].append(r)
    return {
        f"{b:g}": [{k: r[k] for k in ("size", "N", "S_total", "steps", "f_refined", "spacing")}
                   for r in sorted(rs, key=lambda r: r["N"])]
        for b, rs in sorted(by_bits.items(), reverse=True)
        if len(rs) >= 2
    }


def few_fractions(records: list[dict[str, Any]], spec: ExperimentSpec, basis: Any) -> list[dict]:
    """The sizes from spec.large_N on, run at a few fractions each, often one per call: their
    curves over every call (trunks differ), the best fraction and the two best."""
    big = [r for r in main_runs(records, basis) if float(r["N"]) >= spec.large_N]
    out = []
    for g in grids(big, by=GRID_BY, min_fractions=1, one_call=False):
        rs = sorted(g.runs, key=lambda r: float(r["loss"]))
        out.append({
            "size": g.labels["size"], "N": g.N, "bits": g.bits, "D_total": g.D,
            "S_total": g.S_total, "s_target": g.runs[0].get("s_target"), "steps": g.steps,
            "seed": g.labels["seed"], "f": [float(r["f"]) for r in g.runs],
            "loss": [float(r["loss"]) for r in g.runs], "calls": [r["call"] for r in g.runs],
            "n_calls": len({r["call"] for r in g.runs}),
            "f_best": float(rs[0]["f"]), "f_best2": sorted(float(r["f"]) for r in rs[:2]),
            "f_paper": float(FractionClosedForm().predict_fraction(g.S_total)),
        })
    return out


def optima_section(records: list[dict[str, Any]], spec: ExperimentSpec, basis: Any) -> dict:
    """Everything the README says about the measured optima of one basis."""
    rows = fstar_rows(records, spec, basis)
    if not rows:
        return {"fstar": []}
    trained = [r for r in rows if not r["step_starved"]]

    def mean(k: str, rs: list[dict]) -> float | None:
        return float(np.mean([r[k] for r in rs])) if rs else None

    return {
        "fstar": rows,
        "n_trained": len(trained),
        "closed_form": refits(rows),
        "intervals": intervals(rows, spec),
        "growth": growth(rows),
        "across_sizes": across_sizes(rows),
        "seed_checks": seed_checks(records, spec, basis),
        "few_fractions": few_fractions(records, spec, basis),
        "mean_regret_baseline": mean("regret_baseline", rows),
        "mean_regret_baseline_trained": mean("regret_baseline", trained),
        "mean_regret_paper_trained": mean("regret_paper", trained),
        "mae_paper_grid_argmin_trained": mae(
            [r["f_paper"] for r in trained], [r["f_grid"] for r in trained]
        ) if trained else None,
    }
