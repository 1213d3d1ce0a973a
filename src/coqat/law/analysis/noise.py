"""Run-to-run noise: seed and repeat spreads, and a parametric bootstrap of measured optima.

* :func:`spread` / :func:`repeat_groups`: the spread of the final loss over seeds of one
  configuration, or over repeats of one configuration and seed in several calls;
* :class:`StepNoise`: a noise model, the run-to-run sd of the final loss as a function of the
  optimizer steps (log-linear between measured points; QAT from scratch, f = 1, at least
  ``sd_f1``);
* :func:`fstar_bootstrap`: every measured loss perturbed by that noise, the optimum located
  again: draws of f* per curve, for intervals and for how often a comparison holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coqat.law.optimum import measured_optimum


def spread(values: Iterable[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``sd`` (ddof 1; None for one value) and ``range`` of some losses."""
    v = np.asarray(list(values), float)
    return {
        "n": int(v.size),
        "mean": float(v.mean()) if v.size else None,
        "sd": float(v.std(ddof=1)) if v.size > 1 else None,
        "range": float(v.max() - v.min()) if v.size else None,
    }


def pooled_sd(sds: Iterable[float | None]) -> float | None:
    """Root mean square of standard deviations (equal weights); None when there are none."""
    s = [x for x in sds if x is not None]
    return float(np.sqrt(np.mean(np.square(s)))) if s else None


def repeat_groups(
    records: Iterable[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    min_size: int = 2,
    value: str = "loss",
) -> list[dict[str, Any]]:
    """Records grouped by ``key`` (e.g. a configuration without the seed, or with it): every
    group of at least ``min_size`` records, with its records (ordered by ``time``), their
    ``value`` s and :func:`spread` of them."""
    g: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        g[key(r)].append(r)
    out = []
    for k, rs in g.items():
        if len(rs) < min_size:
            continue
        rs = sorted(rs, key=lambda r: str(r.get("time") or ""))
        vals = [float(r[value]) for r in rs]
        out.append({"key": k, "records": rs, "values": vals, **spread(vals)})
    return out


def diff_stats(diffs: Iterable[float]) -> dict[str, Any]:
    """``n``, ``mean_diff``, ``se`` (standard error) and ``share_negative`` of paired
    differences (None where undefined)."""
    d = np.asarray(list(diffs), float)
    return {
        "n": int(d.size),
        "mean_diff": float(d.mean()) if d.size else None,
        "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None,
        "share_negative": float(np.mean(d < 0)) if d.size else None,
    }


@dataclass(frozen=True)
class StepNoise:
    """Run-to-run sd of the final loss: ``points`` = ((steps, sd), ...), interpolated linearly in
    log steps and log sd, constant beyond the ends; ``sd_f1`` is the floor at f = 1 (QAT from
    scratch, noisier than runs that branch from a trained FP model)."""

    points: tuple[tuple[float, float], ...]
    sd_f1: float = 0.0

    def sd(self, steps: float, f: float) -> float:
        """The sd for a run of ``steps`` optimizer steps at fraction ``f``."""
        x, y = zip(*sorted(self.points))
        s = float(np.exp(np.interp(np.log(steps), np.log(x), np.log(y))))
        return max(s, self.sd_f1) if f >= 1.0 - 1e-9 else s


def fstar_bootstrap(
    curves: list[dict[str, Any]], noise: StepNoise, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """Draws of the refined f* (shape n x curves): every loss of a curve (a dict with ``f``,
    ``loss`` and ``steps``) perturbed by independent normal noise of ``noise.sd(steps, f)``,
    the optimum located again by :func:`coqat.law.optimum.measured_optimum`. Deterministic for a
    seed (the curves are drawn one after another)."""
    rng = np.random.default_rng(seed)
    draws = np.empty((n, len(curves)))
    for j, c in enumerate(curves):
        f = np.asarray(c["f"], float)
        L = np.asarray(c["loss"], float)
        sd = np.array([noise.sd(c["steps"], x) for x in f])
        for i in range(n):
            draws[i, j] = measured_optimum(f, L + rng.normal(0.0, sd))["f_refined"]
    return draws


def interval(x: Any, level: float = 0.9) -> list[float]:
    """The central ``level`` interval of draws ``x`` (quantiles)."""
    a = (1.0 - level) / 2
    return [float(np.quantile(x, a)), float(np.quantile(x, 1.0 - a))]
