"""Small scalar solvers in numpy, so the planner CLI starts without importing scipy.optimize
(~0.5 s). ``minimize_bounded`` agrees with ``scipy.optimize.minimize_scalar(method="bounded")``
and ``root_log`` with ``scipy.optimize.brentq`` to ~1e-7 (tests check both). The ``_rows``
variants run the same iterations for many functions at once (a law and its bootstrap samples),
one vectorized evaluation per iteration instead of one call per function."""

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


def minimize_bounded_rows(
    fmat: Callable[[np.ndarray], np.ndarray],
    rows: int,
    lo: float = 0.0,
    hi: float = 1.0,
    n_grid: int = 201,
    xtol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`minimize_bounded` of ``rows`` functions at once: ``fmat(x)`` maps ``(rows, m)``
    points (row ``r`` is a point of function ``r``) to their values. Each row follows the very
    steps of the scalar search (grid, bracket, golden section, midpoint); returns (x*, f(x*))."""
    x = np.linspace(lo, hi, n_grid)
    y = _finite(fmat(np.broadcast_to(x, (rows, n_grid))))
    i = np.argmin(y, axis=1)
    r = np.arange(rows)
    a, b = x[np.maximum(i - 1, 0)], x[np.minimum(i + 1, n_grid - 1)]
    best_x, best_y = x[i], y[r, i]

    def f1(t: np.ndarray) -> np.ndarray:
        return _finite(fmat(t[:, None]))[:, 0]

    c, d = b - _GR * (b - a), a + _GR * (b - a)
    fc, fd = f1(c), f1(d)
    active = b - a > xtol
    while active.any():
        left = fc < fd  # the minimum is in [a, d]: drop (d, b]
        go_l, go_r = active & left, active & ~left
        b, d, fd = np.where(go_l, d, b), np.where(go_l, c, d), np.where(go_l, fc, fd)
        a, c, fc = np.where(go_r, c, a), np.where(go_r, d, c), np.where(go_r, fd, fc)
        new = np.where(left, b - _GR * (b - a), a + _GR * (b - a))
        fnew = f1(new)
        c, fc = np.where(go_l, new, c), np.where(go_l, fnew, fc)
        d, fd = np.where(go_r, new, d), np.where(go_r, fnew, fd)
        active = b - a > xtol
    xm = (a + b) / 2
    ym = f1(xm)
    better = ym < best_y
    return np.where(better, xm, best_x), np.where(better, ym, best_y)


def root_log_rows(
    fun: Callable[[np.ndarray], np.ndarray],
    rows: int,
    lo: float,
    hi: float,
    rtol: float = 1e-11,
    maxiter: int = 200,
) -> np.ndarray:
    """:func:`root_log` of ``rows`` functions at once: ``fun(v)`` maps ``(rows,)`` points (entry
    ``r`` a point of function ``r``) to values. Each row follows the scalar iteration; NaN where
    a row's bracket has no sign change."""
    fa = np.asarray(fun(np.full(rows, lo)), float)
    fb = np.asarray(fun(np.full(rows, hi)), float)
    a, b = np.full(rows, math.log(lo)), np.full(rows, math.log(hi))
    out = np.full(rows, np.nan)
    out[fb == 0] = hi
    out[fa == 0] = lo
    active = (fa != 0) & (fb != 0) & np.isfinite(fa) & np.isfinite(fb) & (fa * fb <= 0)
    with np.errstate(all="ignore"):
        for _ in range(maxiter):
            if not active.any():
                break
            c = b - fb * (b - a) / (fb - fa)
            inside = (np.minimum(a, b) < c) & (c < np.maximum(a, b))
            c = np.where(inside, c, (a + b) / 2)
            fc = np.asarray(fun(np.exp(np.where(active, c, b))), float)
            hit = active & ((fc == 0) | (np.abs(c - b) < rtol))
            out[hit] = np.exp(c[hit])
            active &= ~hit
            flip = fc * fb < 0
            a, fa = np.where(active & flip, b, a), np.where(active & flip, fb, fa)
            fa = np.where(active & ~flip, fa / 2, fa)
            b, fb = np.where(active, c, b), np.where(active, fc, fb)
            close = active & (np.abs(b - a) < rtol)
            out[close] = np.exp(b[close])
            active &= ~close
    out[active] = np.exp(b[active])
    return out


def _finite(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, float)
    return np.where(np.isfinite(y), y, np.inf)
