"""The measured optimal QAT fraction of a loss-vs-fraction curve (numpy only).

One definition for the report, the closed-form refit and the experiment analyses: the grid argmin
of the loss over the measured fractions, refined by the vertex of the parabola through the argmin
and its two neighbours, clipped to that bracket. At an endpoint of the grid, or where the parabola
opens downwards, the grid argmin stands.

The same parabola reads the measured curve between the argmin's two neighbours
(:func:`measured_loss_at`); elsewhere the curve is the straight line between measured points. So
the curve's minimum is the refined optimum's loss, and the loss at any fraction inside the
measured range is at least that minimum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OUTSIDE = ("clip", "nan")


def _sorted_curve(f: Any, loss: Any) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, float)
    loss = np.asarray(loss, float)
    if f.shape != loss.shape or f.ndim != 1 or f.size < 1:
        raise ValueError("need equally long, non-empty 1-D f and loss")
    o = np.argsort(f, kind="stable")
    return f[o], loss[o]


def _bracket_parabola(f: np.ndarray, loss: np.ndarray, i: int) -> np.ndarray | None:
    """Coefficients of the parabola through points i-1, i, i+1 when it opens upwards, else None
    (also at an endpoint)."""
    if i <= 0 or i >= f.size - 1:
        return None
    coef = np.polyfit(f[i - 1 : i + 2], loss[i - 1 : i + 2], 2)
    return coef if coef[0] > 1e-14 else None


def measured_optimum(f: Any, loss: Any) -> dict[str, Any]:
    """``f_grid``/``loss_grid`` (grid argmin), ``f_refined``/``loss_refined`` (parabola vertex),
    ``at_endpoint``, ``refined`` and ``spacing`` (half the bracket width for an interior minimum,
    the distance to the only neighbour at an endpoint)."""
    f, loss = _sorted_curve(f, loss)
    i = int(np.argmin(loss))
    out: dict[str, Any] = {
        "f_grid": float(f[i]),
        "loss_grid": float(loss[i]),
        "f_refined": float(f[i]),
        "loss_refined": float(loss[i]),
        "at_endpoint": i in (0, f.size - 1),
        "refined": False,
    }
    if f.size == 1:
        out["spacing"] = float("nan")
        return out
    if out["at_endpoint"]:
        out["spacing"] = float(abs(f[1] - f[0]) if i == 0 else abs(f[-1] - f[-2]))
        return out
    lo, hi = f[i - 1], f[i + 1]
    out["spacing"] = float((hi - lo) / 2)
    coef = _bracket_parabola(f, loss, i)
    if coef is not None:
        xv = float(np.clip(-coef[1] / (2 * coef[0]), lo, hi))
        out.update(f_refined=xv, loss_refined=float(np.polyval(coef, xv)), refined=True)
    return out


def measured_loss_at(f: Any, loss: Any, x: Any, outside: str = "clip") -> Any:
    """The measured curve read at fraction(s) ``x``: inside the bracket of the argmin (its two
    neighbours) the parabola of :func:`measured_optimum` when it refined the optimum, elsewhere
    linear interpolation between measured points.

    Outside the measured fractions (``x`` below the smallest or above the largest f measured):
    ``outside="clip"`` reads the nearest measured end (flat extrapolation, so a regret there is
    a lower bound when the curve keeps rising), ``"nan"`` returns NaN.
    """
    if outside not in OUTSIDE:
        raise ValueError(f"outside: {outside!r} is not allowed; choose one of {list(OUTSIDE)}")
    f, loss = _sorted_curve(f, loss)
    xs = np.asarray(x, float)
    xc = np.clip(xs, f[0], f[-1])
    y = np.interp(xc, f, loss)
    i = int(np.argmin(loss))
    coef = _bracket_parabola(f, loss, i)
    if coef is not None:
        inside = (xc >= f[i - 1]) & (xc <= f[i + 1])
        y = np.where(inside, np.polyval(coef, xc), y)
    if outside == "nan":
        y = np.where((xs < f[0]) | (xs > f[-1]), np.nan, y)
    return float(y) if y.ndim == 0 else y
