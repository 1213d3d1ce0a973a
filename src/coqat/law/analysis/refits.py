"""Closed-form rules refitted on measured optima, with leave-one-out errors.

Three forms of ``f = exp(-a / ln x)`` (:mod:`coqat.law.closed_form`), fitted by MAE on measured
optima f*:

* ``paper``: x = S_total with the paper's a (nothing fitted; its MAE only);
* ``refit_a``: x = S_total, a refitted (``FractionClosedForm.fit``);
* ``sized``: x = S_total (N / 1e7)^g, a and g fitted (``SizedFractionClosedForm``);
* ``tokens_per_param``: x = D / N (no bit width), a refitted;
* ``tokens_per_bit``: x = D / (bits k), a refitted (``TokensPerBitClosedForm``: the sized form
  at g = 1, where N drops out).

Leave-one-out: each optimum is predicted by the form fitted on all the others; its MAE is the
out-of-sample error of the form.

:func:`degenerate_refit` says when a refit is no fit (too few optima, one S, a parameter at a
bound), so that a report can say so instead of presenting it as one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from coqat.law.closed_form import (
    PAPER_A,
    FractionClosedForm,
    SizedFractionClosedForm,
    TokensPerBitClosedForm,
)

FORMS = ("paper", "refit_a", "sized", "tokens_per_param", "tokens_per_bit")


def mae(a: Any, b: Any) -> float:
    """Mean absolute difference of two equally long arrays."""
    return float(np.mean(np.abs(np.asarray(a, float) - np.asarray(b, float))))


def leave_one_out(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int
) -> np.ndarray:
    """Out-of-sample predictions: ``fit_predict(train_mask, test_index) -> prediction`` for every
    index, trained without it (``train_mask`` is False at that index only)."""
    out = np.empty(n)
    for j in range(n):
        m = np.ones(n, bool)
        m[j] = False
        out[j] = float(np.asarray(fit_predict(m, np.array([j])), float).ravel()[0])
    return out


def _fit(form: str, S, N, D, f) -> Any:
    if form == "refit_a":
        return FractionClosedForm().fit(S, f)
    if form == "sized":
        return SizedFractionClosedForm().fit(S, f, N=N)
    if form == "tokens_per_param":
        return FractionClosedForm().fit(D / N, f)
    if form == "tokens_per_bit":
        return TokensPerBitClosedForm().fit(S, f, N=N)
    raise ValueError(f"form: {form!r} is not allowed; choose one of {list(FORMS)}")


def _predict(form: str, law: Any, S, N, D) -> np.ndarray:
    if form in ("sized", "tokens_per_bit"):
        return law.predict_fraction(S, N)
    return law.predict_fraction(D / N if form == "tokens_per_param" else S)


def closed_form_refits(
    S: Any, N: Any, D: Any, fstar: Any, forms: tuple[str, ...] = FORMS, loo: bool = True
) -> dict[str, dict[str, Any]]:
    """Each form of FORMS fitted by MAE on (S_total, N, D_total, f*): ``params``,
    ``mae_in_sample`` and (with ``loo``) ``mae_loo``; ``paper`` has the paper's a and its MAE
    (in-sample = out-of-sample: nothing is fitted)."""
    S, N, D, f = (np.asarray(x, float) for x in (S, N, D, fstar))
    out: dict[str, dict[str, Any]] = {}
    for form in forms:
        if form == "paper":
            e = mae(FractionClosedForm(PAPER_A).predict_fraction(S), f)
            out[form] = {"params": {"a": PAPER_A}, "mae_in_sample": e, "mae_loo": e}
            continue
        law = _fit(form, S, N, D, f)
        rec = {"params": dict(law.params_), "mae_in_sample": mae(_predict(form, law, S, N, D), f)}
        if loo:

            def fp(m: np.ndarray, idx: np.ndarray, form: str = form) -> np.ndarray:
                return _predict(form, _fit(form, S[m], N[m], D[m], f[m]), S[idx], N[idx], D[idx])

            rec["mae_loo"] = mae(leave_one_out(fp, len(f)), f)
        out[form] = rec
    return out


def degenerate_refit(S: Any, fstar: Any, params: dict[str, float],
                     bounds: dict[str, tuple[float, float]] | None = None) -> str:
    """Why a closed form with ``params`` fitted by MAE on (S_total, f*) is no fit, '' when it is
    one: fewer optima than parameters + 2 (one parameter from 2 optima: every value between the
    two optima's own fits has the same MAE; from 1: an exact fit), fewer than two distinct S
    (the form's S dependence is not measured), or a parameter at a bound of ``bounds``
    (default: ``FractionClosedForm.bounds``)."""
    S = np.asarray(S, float)
    n, k = int(np.size(fstar)), len(params)
    bounds = FractionClosedForm.bounds if bounds is None else bounds
    why = []
    if n < k + 2:
        why.append(f"{k} parameter{'s' * (k > 1)} from {n} optim{'a' if n != 1 else 'um'} "
                   f"(a fit needs at least {k + 2})")
    if np.unique(np.round(S, 6)).size < 2:
        why.append("one S_total only")
    for name, v in params.items():
        lo, hi = bounds.get(name, (-np.inf, np.inf))
        for b in (lo, hi):
            if np.isfinite(b) and np.isclose(v, b, rtol=1e-3, atol=1e-6):
                why.append(f"{name} = {v:.4g} at its bound {b:g}")
    return "; ".join(why)
