"""Loss laws on measured runs: the runs table, in-sample fits and held-out comparisons.

* :func:`law_runs`: the runs table the laws are fitted on, from run records: every quantized run
  (f = 0: its PTQ loss) plus, for each f = 0 run, its FP model as a 16-bit baseline; cluster =
  the FP trunk (runs of one trunk are resampled together by the bootstrap);
* :func:`fit_summary`: a fitted law's in-sample errors and the parameters that ended at a bound;
* :func:`heldout_comparison`: several laws, each fitted on the runs a rule keeps and scored on
  the runs it holds out (:func:`coqat.law.validate.compare`), for several rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from coqat.law.analysis.grids import MIN_STEPS
from coqat.law.runs import Runs


def law_runs(records: Iterable[dict[str, Any]], min_steps: int = 0) -> Runs:
    """Runs table for the loss laws from run records (``N, D_fp, D_qat, D_total, bits, loss,
    loss_fp, steps, trunk``): records of fewer than ``min_steps`` steps are left out; cluster =
    ``trunk``."""
    recs = []
    for r in records:
        if r.get("steps") is not None and float(r["steps"]) < min_steps:
            continue
        c = str(r.get("trunk") or r.get("cluster") or "")
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
        lfp = r.get("loss_fp")
        if float(r["D_qat"]) == 0 and lfp is not None and math.isfinite(float(lfp)):
            recs.append(
                {
                    "N": r["N"],
                    "D_fp": r["D_total"],
                    "D_qat": 0,
                    "bits": 16.0,
                    "loss": lfp,
                    "cluster": c,
                }
            )
    return Runs.from_records(recs)


def without_ptq(runs: Runs) -> Runs:
    """The runs less the PTQ ones (quantized, D_qat = 0), which QATLaw does not fit."""
    return runs.filter(~((runs.bits < 16) & (runs.D_qat <= 0)))


def params_at_bounds(law: Any) -> list[str]:
    """Free parameters of a fitted law that ended at (within 0.1% of) a bound of its box."""
    out = []
    for n, _lg, lo, hi, *_ in law._spec:
        v = law.params_[n]
        if lo == hi:
            continue
        if np.isclose(v, lo, rtol=1e-3, atol=1e-6) or np.isclose(v, hi, rtol=1e-3, atol=1e-6):
            out.append(n)
    return out


def fit_summary(law: Any) -> dict[str, Any]:
    """A fitted law's ``converged``, ``n_fit``, ``n_excluded_ptq``, ``k_free``, ``mae``,
    ``mean_rel_err``, ``max_rel_err``, ``rmse_log``, ``params`` and ``params_at_bounds``."""
    fr = law.fit_report_
    return {
        "converged": bool(law.converged),
        "n_fit": fr["n"],
        "n_excluded_ptq": fr.get("n_excluded_ptq", 0),
        "k_free": sum(1 for s in law._spec if s[2] != s[3]),
        "mae": fr["mae"],
        "mean_rel_err": fr["mean_rel_err"],
        "max_rel_err": fr["max_rel_err"],
        "rmse_log": fr.get("rmse_log"),
        "params": dict(law.params_),
        "params_at_bounds": params_at_bounds(law),
    }


def heldout_comparison(
    runs: Runs, law_classes: list[Any], rules: dict[str, Any], **fit_settings: Any
) -> dict[str, Any]:
    """For every named rule (``coqat.law.validate.holdout_mask``'s rules), the comparison table
    of :func:`coqat.law.validate.compare` (each law fitted on the kept runs, scored on the
    held-out ones), or ``{"error": ...}`` when the rule cannot be applied (it holds out none or
    every run)."""
    from coqat.errors import ConfigError
    from coqat.law.validate import compare

    out: dict[str, Any] = {}
    fitted: dict[str, Any] = {}  # each law is fitted on all the runs once, for every rule
    for name, rule in rules.items():
        try:
            rows = compare(runs, law_classes, rule=rule, fitted=fitted, **fit_settings)
            out[name] = {"rule": str(rule), "n_runs": len(runs), "rows": rows}
        except ConfigError as e:
            out[name] = {"rule": str(rule), "error": str(e)}
    return out


__all__ = [
    "MIN_STEPS",
    "fit_summary",
    "heldout_comparison",
    "law_runs",
    "params_at_bounds",
    "without_ptq",
]
