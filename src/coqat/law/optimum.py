"""The measured optimal QAT fraction of a loss-vs-fraction curve (numpy only).

One definition for the report, the closed-form refit and the reference analysis: the grid argmin
of the loss over the measured fractions, refined by the vertex of the parabola through the argmin
and its two neighbours, clipped to that bracket. At an endpoint of the grid, or where the parabola
opens downwards, the grid argmin stands.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def measured_optimum(f: Any, loss: Any) -> dict[str, Any]:
    """``f_grid``/``loss_grid`` (grid argmin), ``f_refined``/``loss_refined`` (parabola vertex),
    ``at_endpoint``, ``refined`` and ``spacing`` (half the bracket width for an interior minimum,
    the distance to the only neighbour at an endpoint)."""
    f = np.asarray(f, float)
    loss = np.asarray(loss, float)
    if f.shape != loss.shape or f.size < 1:
        raise ValueError("need equally long, non-empty f and loss")
    o = np.argsort(f)
    f, loss = f[o], loss[o]
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
    coef = np.polyfit(f[i - 1 : i + 2], loss[i - 1 : i + 2], 2)
    if coef[0] > 1e-14:
        xv = float(np.clip(-coef[1] / (2 * coef[0]), lo, hi))
        out.update(f_refined=xv, loss_refined=float(np.polyval(coef, xv)), refined=True)
    return out
