"""Held-out validation ("fit small, predict large") and model comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from coqat.errors import ConfigError
from coqat.law.fit import metrics
from coqat.law.runs import Runs

RULES = ("largest-N", "largest-S", "heldout", "EXPR such as 'N>=5e7' or 'N>=5e7 & bits==4'")


def holdout_mask(runs: Runs, rule: Any) -> np.ndarray:
    """Boolean mask of held-out runs for ``rule``.

    * ``"largest-N"``: every run at the largest N;
    * ``"largest-S"``: quantized runs in the top decile of S_total (at least one), plus FP runs
      with D above the largest D of the remaining runs;
    * ``"heldout"``: the table's ``heldout`` column;
    * an expression ``COLUMN OP VALUE [& ...]`` (:meth:`Runs.mask`: any column or N, D, f,
      S_total, S_fp, S_qat, compute; numbers accept k/M/B/T suffixes);
    * a callable ``fn(runs) -> bool mask``.
    """
    if callable(rule):
        m = np.asarray(rule(runs), bool)
    elif rule == "largest-N":
        m = np.isclose(runs.N, runs.N.max())
    elif rule == "largest-S":
        q = runs.bits < 16
        S = runs.S_total
        if q.any():
            thr = np.quantile(S[q], 0.9)
            m = q & (S >= thr)
            m |= ~q & (runs.D > runs.D[~m].max())
        else:
            m = S >= np.quantile(S, 0.9)
    elif rule == "heldout":
        m = runs.heldout.astype(bool)
    elif isinstance(rule, str):  # an expression such as "N>=5e7 & bits==4" (Runs.mask)
        m = runs.mask(rule, field="holdout")
    else:
        raise ConfigError("holdout", f"{rule!r} is not allowed; choose one of {list(RULES)}")
    if m.shape != (len(runs),):
        raise ConfigError("holdout", "the rule must give one boolean per run")
    if not m.any():
        raise ConfigError("holdout", f"rule {rule!r} holds out no runs")
    if m.all():
        raise ConfigError("holdout", f"rule {rule!r} holds out every run; nothing left to fit")
    return m


def holdout(
    runs: Runs, law_cls: Any, rule: Any = "largest-N", **fit_settings: Any
) -> dict[str, Any]:
    """Fit ``law_cls`` on the runs the rule keeps; report errors on the held-out runs.

    Returns a dict with ``law`` (the fitted instance), ``n_fit``, ``n_heldout``, in-sample
    ``fit_mae`` / ``fit_mean_rel_err``, held-out ``mean_rel_err`` / ``max_rel_err`` / ``mae`` and
    ``compute_ratio`` = max 6ND of held-out runs / max 6ND of fitted runs.
    """
    m = holdout_mask(runs, rule)
    law = law_cls() if isinstance(law_cls, type) else law_cls
    fit_runs, test = runs.filter(~m), runs.filter(m)
    law.fit(fit_runs, **fit_settings)
    if getattr(law, "name", "") == "qat":  # the QAT law is not fitted on PTQ runs: don't score them
        keep = ~((test.bits < 16) & (test.D_qat <= 0))
        if keep.any():
            test = test.filter(keep)
    try:
        pred = law.predict_runs(test)
    except ConfigError as e:
        return {
            "law": law,
            "rule": str(rule),
            "error": str(e),
            "n_fit": len(fit_runs),
            "n_heldout": len(test),
        }
    met = metrics(test.loss, pred, law.n_params)
    return {
        "law": law,
        "law_name": law.name,
        "rule": str(rule),
        "n_fit": len(fit_runs),
        "n_heldout": len(test),
        "converged": law.converged,
        "fit_mae": law.fit_report_["mae"],
        "fit_mean_rel_err": law.fit_report_["mean_rel_err"],
        "mae": met["mae"],
        "mean_rel_err": met["mean_rel_err"],
        "max_rel_err": met["max_rel_err"],
        "compute_ratio": float(test.compute.max() / fit_runs.compute.max()),
    }


def compare(
    runs: Runs,
    law_classes: list[Any],
    rule: Any = "largest-N",
    *,
    fitted: dict[str, Any] | None = None,
    **fit_settings: Any,
) -> list[dict[str, Any]]:
    """Model comparison table (one dict per law, sorted by held-out mean relative error).

    Columns: law, k (parameters), in-sample MAE / mean rel err / AIC / BIC (full-data fit, Gaussian
    log-likelihood of the log residuals), held-out mean / max relative error and compute ratio.
    ``fitted``: a cache of the full-data fits by law name (filled here), so that comparing the
    same runs under several rules fits each law on all of them once.
    """
    rows = []
    for cls in law_classes:
        law = cls() if isinstance(cls, type) else cls
        if fitted is not None and law.name in fitted:
            full = fitted[law.name]
        else:
            full = law.fit(runs, **fit_settings)
            if fitted is not None:
                fitted[law.name] = full
        rep = holdout(runs, type(full), rule, **fit_settings)
        rows.append(
            {
                "law": full.name,
                "k": full.n_params,
                "converged": full.converged,
                "mae": full.fit_report_["mae"],
                "mean_rel_err": full.fit_report_["mean_rel_err"],
                "aic": full.fit_report_["aic"],
                "bic": full.fit_report_["bic"],
                "heldout_mean_rel_err": rep.get("mean_rel_err", float("nan")),
                "heldout_max_rel_err": rep.get("max_rel_err", float("nan")),
                "compute_ratio": rep.get("compute_ratio", float("nan")),
                "n_heldout": rep["n_heldout"],
                "note": rep.get("error", ""),
            }
        )
    rows.sort(key=lambda r: np.nan_to_num(r["heldout_mean_rel_err"], nan=np.inf))
    return rows


def _as_callable(rule: Any) -> Callable[[Runs], np.ndarray]:
    return lambda runs: holdout_mask(runs, rule)
