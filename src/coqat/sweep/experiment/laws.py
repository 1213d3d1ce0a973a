"""The loss laws on an experiment's runs: in-sample fits and their optima against the measured
f*, held-out comparisons, the largest sizes predicted from the smaller, the shipped law's
intervals, a Huber-delta sensitivity check, and planner questions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from coqat.law import LAW_CHOICES, FractionClosedForm, QATLaw, SizedFractionClosedForm, fit_law
from coqat.law.analysis import (
    fit_summary,
    grids,
    heldout_comparison,
    law_runs,
    mae,
    params_at_bounds,
    representatives,
    without_ptq,
)
from coqat.sweep.experiment.optima import GRID_BY
from coqat.sweep.experiment.records import main_runs
from coqat.sweep.experiment.spec import ExperimentSpec

_FITS: dict[tuple, Any] = {}


def _fit(runs: Any, **settings: Any) -> Any:
    """QATLaw fitted on ``runs`` (seed 0), memoized on the runs' contents and the settings: the
    sections refit the same table more than once."""
    from coqat.law.fit import HUBER_DELTA

    settings.setdefault("delta", HUBER_DELTA)
    key = (runs.data_hash(), tuple(sorted(settings.items())))
    if key not in _FITS:
        _FITS[key] = fit_law(QATLaw(), runs, seed=0, **settings)
    return _FITS[key]


class LawOptimum:
    """A loss law as a fraction rule: its continuous loss-optimal fraction
    (``coqat.plan.optimal_fraction``)."""

    def __init__(self, law: Any):
        self.law = law

    def optimal_fraction(self, N: Any, D: Any, bits: Any) -> float:
        from coqat.plan import optimal_fraction

        return optimal_fraction(self.law, N, D, bits, level=None)["f_opt"]


def basis_runs(records: list[dict[str, Any]], basis: Any, min_steps: int = 0):
    """The law runs table of one basis: one record per configuration
    (``coqat.law.analysis.representatives``), FP baselines added."""
    reps, _ = representatives(main_runs(records, basis), by=GRID_BY)
    return law_runs(reps, min_steps)


def law_runs_csv(records: list[dict[str, Any]], basis: Any, min_steps: int) -> tuple[int, str]:
    """The runs the loss laws of ``basis`` are fitted on (PTQ rows dropped), as CSV text for
    ``coqat fit``, and the number of rows."""
    import io

    rows = without_ptq(basis_runs(records, basis, min_steps)).to_records()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return len(rows), buf.getvalue()


def qat_law_fits(records, rows, spec: ExperimentSpec, basis: Any) -> dict[str, Any]:
    """QATLaw fitted on the runs of ``basis`` (all, and those of >= min_steps steps where some
    have fewer): in-sample errors, and per f* row of enough steps the law's optimum, its
    measured regret and the law's loss at the measured fractions."""
    out = {}
    runs_all = main_runs(records, basis)
    fits = [("all", 0), ("trained", spec.min_steps)]
    if all(float(r["steps"]) >= spec.min_steps for r in runs_all):
        fits = fits[1:]
    for name, ms in fits:
        runs = basis_runs(records, basis, ms)
        law = _fit(runs)
        rule = LawOptimum(law)
        fo = []
        for r in rows:
            if r["steps"] < ms:
                continue
            fl = rule.optimal_fraction(r["N"], r["D_total"], r["bits"])
            from coqat.law.analysis import regret_detail

            d = regret_detail(fl, r["f"], r["loss"])
            fo.append({
                "size": r["size"], "bits": r["bits"], "S_total": r["S_total"], "seed": r["seed"],
                "f_law": fl, "f_measured": r["f_refined"], "regret_measured": d["regret"],
                "loss_law": np.asarray(
                    law.loss_at_fraction(r["N"], r["D_total"], r["bits"], r["f"])).tolist(),
                "curve": np.asarray(law.loss_at_fraction(
                    r["N"], r["D_total"], r["bits"], np.linspace(0, 1, 51))).tolist(),
            })
        out[name] = {
            "min_steps": ms, "n_runs_table": len(runs), **fit_summary(law), "f_opt": fo,
            "f_opt_mae": mae([x["f_law"] for x in fo], [x["f_measured"] for x in fo]),
            "mean_regret_measured": float(np.mean([x["regret_measured"] for x in fo])),
        }
    return out


def comparison(records, spec: ExperimentSpec, basis: Any) -> dict[str, Any]:
    """The laws of spec.laws on the runs of ``basis`` (PTQ runs dropped), held out by every
    rule of spec.holdout, on all runs and on those of >= min_steps steps (``_trained``)."""
    classes = [LAW_CHOICES[n] for n in spec.laws]
    out: dict[str, Any] = {}
    runs_all = main_runs(records, basis)
    has_short = any(float(r["steps"]) < spec.min_steps for r in runs_all)
    for tag, ms in (("all", 0), ("trained", spec.min_steps)):
        if tag == "trained" and not has_short:
            continue
        runs = without_ptq(basis_runs(records, basis, ms))
        rules = {}
        for name, rule in spec.holdout.items():
            if rule in ("largest-N", "largest-S", "heldout") or runs.mask(rule).any():
                rules[name] = rule
        res = heldout_comparison(runs, classes, rules, seed=0)
        for name, rule in rules.items():
            from coqat.law.validate import holdout_mask

            if "error" in res[name]:
                continue
            m = holdout_mask(runs, rule)
            res[name]["N_ratio"] = float(runs.N[m].max() / runs.N[~m].max())
            res[name]["N_heldout"] = sorted({float(x) for x in runs.N[m]})
        out[tag] = {"n_runs": len(runs), **res}
    return out


def large_sizes(records, spec: ExperimentSpec, basis: Any) -> dict[str, Any]:
    """The sizes from spec.large_N on (each call's runs), predicted by a QATLaw fitted on the
    smaller sizes' runs of >= min_steps steps (PTQ runs dropped), with that law's optimum and
    the paper's closed form there."""
    runs = without_ptq(basis_runs(records, basis, spec.min_steps))
    small = runs.filter(runs.N < spec.large_N)
    big = [r for r in main_runs(records, basis)
           if float(r["N"]) >= spec.large_N and float(r["D_qat"]) > 0]
    if not big or not len(small):
        return {}
    law = _fit(small)
    rule = LawOptimum(law)
    groups = []
    for g in grids(big, by=GRID_BY, min_fractions=1, one_call=False):
        rs = g.runs
        pred = np.asarray(law.predict(
            np.full(len(rs), g.N), np.array([float(r["D_fp"]) for r in rs]),
            np.array([float(r["D_qat"]) for r in rs]), np.full(len(rs), g.bits)))
        loss = np.array([float(r["loss"]) for r in rs])
        groups.append({
            "size": g.labels["size"], "N": g.N, "bits": g.bits, "D_total": g.D,
            "S_total": g.S_total, "steps": g.steps, "seed": g.labels["seed"],
            "f": [float(r["f"]) for r in rs], "loss": loss.tolist(),
            "calls": [r["call"] for r in rs], "law_pred": pred.tolist(),
            "rel_err": (pred / loss - 1).tolist(),
            "f_law": rule.optimal_fraction(g.N, g.D, g.bits),
            "f_paper": float(FractionClosedForm().predict_fraction(g.S_total)),
            "f_best_measured": float(rs[int(np.argmin(loss))]["f"]),
        })
    pred = np.asarray(law.predict_runs(small))
    return {
        "n_fit": len(small), "params_at_bounds": params_at_bounds(law), "groups": groups,
        "fitted": {"compute": (6 * small.N * (small.D_fp + small.D_qat)).tolist(),
                   "rel_err": (pred / small.loss - 1).tolist()},
    }


def shipped_intervals(
    rows, spec: ExperimentSpec, folder: Path, csv_rows: int, few: list | None = None
) -> dict[str, Any]:
    """The shipped law's optimum and its 90% bootstrap interval at every f* row (and at the
    curves of a few fractions, ``few``), whether the measured f* lies inside, and ``stale`` when
    the law was fitted on another number of runs than the law runs CSV holds (refit it with the
    README's `coqat fit` command)."""
    from coqat.plan import load_law, optimal_fraction

    law = load_law(_law_path(folder, spec.shipped_law))
    out = []
    for r in rows:
        o = optimal_fraction(law, r["N"], r["D_total"], r["bits"], level=0.9)
        lo, hi = o["f_opt_ci"]
        out.append({"size": r["size"], "bits": r["bits"], "S_total": r["S_total"],
                    "seed": r["seed"], "f_law": o["f_opt"], "ci90": [lo, hi],
                    "f_measured": r["f_refined"], "inside": bool(lo <= r["f_refined"] <= hi)})
    few_rows = []
    for x in few or []:
        o = optimal_fraction(law, x["N"], x["D_total"], x["bits"], level=0.9)
        few_rows.append({"size": x["size"], "bits": x["bits"], "S_total": x["S_total"],
                         "f_law": o["f_opt"], "ci90": list(o["f_opt_ci"])})
    return {"n_runs": law.provenance.get("n_runs"), "few_fractions": few_rows,
            "stale": law.provenance.get("n_runs") != csv_rows,
            "rows": out, "n_inside": sum(x["inside"] for x in out)}


def huber(records, rows, spec: ExperimentSpec, basis: Any) -> list[dict[str, Any]]:
    """QATLaw refitted with each Huber delta of spec.huber_deltas: in-sample errors, the
    optimum's MAE against the measured f*, and the error on the sizes from spec.large_N when
    fitted without them."""
    runs = without_ptq(basis_runs(records, basis, spec.min_steps))
    small, big = runs.filter(runs.N < spec.large_N), runs.filter(runs.N >= spec.large_N)
    out = []
    for delta in spec.huber_deltas:
        law = _fit(runs, delta=delta)
        rule = LawOptimum(law)
        fo = [rule.optimal_fraction(r["N"], r["D_total"], r["bits"]) for r in rows]
        rec = {"delta": delta, "mean_rel_err": law.fit_report_["mean_rel_err"],
               "max_rel_err": law.fit_report_["max_rel_err"], "f_opt": fo,
               "f_opt_mae": mae(fo, [r["f_refined"] for r in rows])}
        if len(big) and len(small):
            held = _fit(small, delta=delta)
            rel = np.abs(held.predict_runs(big) / big.loss - 1)
            rec |= {"heldout_mean_rel_err": float(rel.mean()),
                    "heldout_max_rel_err": float(rel.max())}
        out.append(rec)
    return out


def queries(spec: ExperimentSpec, folder: Path) -> list[dict[str, Any]]:
    """spec.queries answered by the shipped law: optimum and loss with 90% intervals, what
    ``coqat plan -N .. -D .. -B .. --law ..`` prints (N and D read as that command reads them:
    ``7m`` is 7e6)."""
    from coqat.plan import load_law, optimal_fraction
    from coqat.plan.units import parse_number

    law = load_law(_law_path(folder, spec.shipped_law))
    out = []
    for q in spec.queries:
        N = parse_number(str(q["N"]), "N")
        o = optimal_fraction(law, N, parse_number(str(q["D"]), "D"), float(q["bits"]), level=0.9)
        out.append({**q, "N_params": N, "f_opt": o["f_opt"], "f_opt_ci": o["f_opt_ci"],
                    "loss_opt": o["loss_opt"], "loss_opt_ci": o["loss_opt_ci"]})
    return out


def fraction_law(section: dict[str, Any], spec: ExperimentSpec) -> tuple[dict[str, Any], str]:
    """The closed form with a size term fitted by MAE on the trained f* rows, with its
    provenance: (its parameters, errors and fractions at the grids, its JSON text; the shipped
    ``--law reference-linux-c-fraction``)."""
    rows = [r for r in section["fstar"] if not r["step_starved"]]
    S, N, f = (np.array([r[k] for r in rows], float) for k in ("S_total", "N", "f_refined"))
    law = SizedFractionClosedForm().fit(S, f, N=N)
    cf = section["closed_form"]["trained"]
    law.provenance |= {
        "source": (
            f"coqat reference experiment (experiments/reference, 2026-11-29, NVIDIA H200): the "
            f"closed form with a size term fitted by MAE on the measured optima of {len(rows)} "
            f"grids (basis {spec.basis} = {section['fstar'][0]['basis']}) of >= "
            f"{spec.min_steps} steps ({N.min() / 1e6:.1f}-{N.max() / 1e6:.1f}M parameters, bits "
            f"{min(r['bits'] for r in rows):g}-{max(r['bits'] for r in rows):g}, S_total "
            f"{S.min():.0f}-{S.max():.0f}; Linux C, BPE 8192): MAE "
            f"{law.fit_report_['mae']:.3f} in-sample, {cf['sized']['mae_loo']:.3f} "
            f"leave-one-out (the paper's closed form: {cf['paper']['mae_in_sample']:.3f}; "
            f"refitted a: {cf['refit_a']['mae_loo']:.3f} leave-one-out). Small-scale only: "
            "g > 0 sends f to 1 at large N, unlike the paper's 86M-2.2B runs."
        ),
        "command": "coqat report --experiment experiments/reference",
        "mae_loo": cf["sized"]["mae_loo"],
    }
    import json

    text = json.dumps(law.to_json(), indent=2) + "\n"
    at = [{"size": r["size"], "bits": r["bits"], "S_total": r["S_total"], "seed": r["seed"],
           "f": float(law.optimal_fraction(N=r["N"], D=r["D_total"], bits=r["bits"]))}
          for r in rows]
    at_few = [{"size": x["size"], "bits": x["bits"], "S_total": x["S_total"],
               "f": float(law.optimal_fraction(N=x["N"], D=x["D_total"], bits=x["bits"]))}
              for x in section.get("few_fractions", [])]
    info = {"params": dict(law.params_), "mae": law.fit_report_["mae"], "at": at,
            "at_few": at_few, "N_range": [float(N.min()), float(N.max())]}
    return info, text


FORM_NAMES = {
    "refit_a": "the paper's closed form with a refitted a",
    "sized": "the closed form with a size term",
    "tokens_per_bit": "the closed form in tokens per bit",
}


def fraction_rule(
    section: dict[str, Any], spec: ExperimentSpec, form: str
) -> tuple[dict[str, Any], str]:
    """One closed form (``coqat.law.analysis.refits``: refit_a, sized, tokens_per_bit) fitted by
    MAE on the trained f* rows, with ``spec.fraction_rules_boot`` bootstrap resamples of the grids
    (the planner's interval) and its provenance: (parameters and errors, its JSON text)."""
    import json

    from coqat.law.analysis.refits import _fit

    rows = [r for r in section["fstar"] if not r["step_starved"]]
    S, N, D, f = (np.array([r[k] for r in rows], float)
                  for k in ("S_total", "N", "D_total", "f_refined"))
    law = _fit(form, S, N, D, f)
    law.bootstrap(S, N, f, n_boot=spec.fraction_rules_boot, seed=0)
    cf = section["closed_form"]["trained"]
    Dpb = D / np.array([r["bits"] for r in rows], float)
    law.provenance |= {
        "source": (
            f"coqat reference experiment (experiments/reference, 2026-11-29, NVIDIA H200): "
            f"{FORM_NAMES[form]} fitted by MAE on the measured optima of {len(rows)} grids "
            f"(basis {spec.basis} = {section['fstar'][0]['basis']}) of >= {spec.min_steps} "
            f"steps ({N.min() / 1e6:.1f}-{N.max() / 1e6:.1f}M parameters, bits "
            f"{min(r['bits'] for r in rows):g}-{max(r['bits'] for r in rows):g}, S_total "
            f"{S.min():.0f}-{S.max():.0f}, D/B {Dpb.min() / 1e6:.0f}M-{Dpb.max() / 1e6:.0f}M; "
            f"Linux C, BPE 8192): MAE {law.fit_report_['mae']:.3f} in-sample, "
            f"{cf[form]['mae_loo']:.3f} leave-one-out; {spec.fraction_rules_boot} bootstrap "
            "resamples of the grids give its interval. Small-scale only."
        ),
        "command": "coqat report --experiment experiments/reference",
        "mae_loo": cf[form]["mae_loo"],
    }
    law.provenance.setdefault("fit_range", {})["D_per_bit"] = [float(Dpb.min()),
                                                              float(Dpb.max())]
    text = json.dumps(law.to_json(), indent=2) + "\n"
    return {"params": dict(law.params_), "mae": law.fit_report_["mae"],
            "mae_loo": cf[form]["mae_loo"], "n": len(rows)}, text


def _law_path(folder: Path, name: str) -> str:
    p = folder / name
    return str(p) if p.is_file() else name
