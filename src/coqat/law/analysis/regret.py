"""Regret of a fraction rule against a measured loss-vs-fraction curve, in nats.

A *rule* is anything that names a QAT fraction for a run of ``N`` parameters, ``D`` tokens and
``bits``: a number (the 10% rule is ``0.1``), an object with ``optimal_fraction(N=..., D=...,
bits=...)`` (``coqat.law.FractionClosedForm`` and its kin) or a plain callable ``rule(N=..., D=...,
bits=...)``. Its regret on a measured curve is the curve's loss at the rule's fraction minus the
curve's minimum, both read off the curve as :mod:`coqat.law.optimum` defines it (the parabola
through the argmin and its neighbours, straight lines elsewhere), so the regret is >= 0 inside
the measured fractions and 0 at the measured optimum.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

from coqat.law.optimum import measured_loss_at, measured_optimum


def rule_fraction(rule: Any, N: Any = None, D: Any = None, bits: Any = None) -> float:
    """The fraction ``rule`` names for (N, D, bits): a number is itself; an object with
    ``optimal_fraction`` or a callable is asked with keyword arguments N, D and bits."""
    if isinstance(rule, Real) and not isinstance(rule, bool):
        return float(rule)
    if hasattr(rule, "optimal_fraction"):
        f = rule.optimal_fraction(N=N, D=D, bits=bits)
    elif callable(rule):
        f = rule(N=N, D=D, bits=bits)
    else:
        raise TypeError(
            f"rule: {rule!r} is neither a fraction, an object with optimal_fraction, nor a "
            "callable rule(N=..., D=..., bits=...)"
        )
    if isinstance(f, dict):  # coqat.plan.optimal_fraction's answer
        f = f["f_opt"]
    return float(np.asarray(f, float))


def regret_detail(
    rule_or_f: Any,
    f: Any,
    loss: Any,
    *,
    N: Any = None,
    D: Any = None,
    bits: Any = None,
    outside: str = "clip",
) -> dict[str, Any]:
    """``f_rule`` (the rule's fraction), ``loss_rule`` (the curve there), ``loss_min`` (the
    curve's minimum), ``regret`` (their difference, nats) and ``outside`` (True when f_rule lies
    outside the measured fractions; see :func:`coqat.law.optimum.measured_loss_at` for what
    ``outside="clip"`` and ``"nan"`` then do)."""
    x = rule_fraction(rule_or_f, N=N, D=D, bits=bits)
    fa = np.asarray(f, float)
    lo = measured_loss_at(fa, loss, x, outside=outside)
    m = measured_optimum(fa, loss)["loss_refined"]
    return {
        "f_rule": x,
        "loss_rule": lo,
        "loss_min": m,
        "regret": lo - m,
        "outside": bool(x < fa.min() - 1e-12 or x > fa.max() + 1e-12),
    }


def regret(rule_or_f: Any, f: Any, loss: Any, **context: Any) -> float:
    """Regret in nats of a rule (or a fraction) on the measured curve ``loss`` over fractions
    ``f``: the curve's loss at the rule's fraction minus its minimum. ``context``: ``N``, ``D``
    and ``bits`` for rules that need them, ``outside`` (see :func:`regret_detail`)."""
    return regret_detail(rule_or_f, f, loss, **context)["regret"]
