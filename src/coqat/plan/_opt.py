"""Small scalar solvers in numpy, so the planner CLI starts without importing scipy.optimize
(~0.5 s). ``minimize_bounded`` agrees with ``scipy.optimize.minimize_scalar(method="bounded")``
and ``root_log`` with ``scipy.optimize.brentq`` to ~1e-7 (tests check both)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_GR = (math.sqrt(5) - 1) / 2


def minimize_bounded(
    fvec: Callable[[np.ndarray], np.ndarray],
    lo: float = 0.0,
    hi: float = 1.0,
    n_grid: int = 201,
    xtol: float = 1e-8,
) -> tuple[float, float]:
    """Global-ish minimum of a smooth function on [lo, hi]: a vectorized grid scan (endpoints
    included) brackets the best point, then golden-section search refines it inside the bracket.
    Returns (x*, f(x*)); an endpoint is returned when it is the minimum."""
    x = np.linspace(lo, hi, n_grid)
    y = np.asarray(fvec(x), float)
    y = np.where(np.isfinite(y), y, np.inf)
    i = int(np.argmin(y))
    a, b = x[max(i - 1, 0)], x[min(i + 1, n_grid - 1)]
    best_x, best_y = float(x[i]), float(y[i])

    def f1(t: float) -> float:
        v = float(np.asarray(fvec(np.array([t])), float)[0])
        return v if math.isfinite(v) else math.inf

    c, d = b - _GR * (b - a), a + _GR * (b - a)
    fc, fd = f1(c), f1(d)
    while b - a > xtol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GR * (b - a)
            fc = f1(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GR * (b - a)
            fd = f1(d)
    xm = (a + b) / 2
    ym = f1(xm)
    if ym < best_y:
        best_x, best_y = xm, ym
    return best_x, best_y


def root_log(
    fun: Callable[[float], float], lo: float, hi: float, rtol: float = 1e-11, maxiter: int = 200
) -> float:
    """Root of ``fun`` on [lo, hi] (lo, hi > 0) by the Illinois method in log-space (with a
    bisection safeguard). Returns NaN if the bracket has no sign change."""
    a, b = math.log(lo), math.log(hi)
    fa, fb = fun(lo), fun(hi)
    if fa == 0:
        return lo
    if fb == 0:
        return hi
    if not (math.isfinite(fa) and math.isfinite(fb)) or fa * fb > 0:
        return float("nan")
    for _ in range(maxiter):
        c = b - fb * (b - a) / (fb - fa)
        if not (min(a, b) < c < max(a, b)):
            c = (a + b) / 2
        fc = fun(math.exp(c))
        if fc == 0 or abs(c - b) < rtol:
            return math.exp(c)
        if fc * fb < 0:
            a, fa = b, fb
        else:
            fa = fa / 2
        b, fb = c, fc
        if abs(b - a) < rtol:
            break
    return math.exp(b)
