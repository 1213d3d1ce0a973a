"""Fitting: sum of Huber(delta) on log residuals, L-BFGS-B (float64, analytic gradients).

Procedure (``fit_law``):

1. Chinchilla stage: ``E, A, alpha, B, beta`` on the full-precision runs (bits >= 16) from the best
   points of a coarse grid (the paper's "FP loss regularisation"). Without enough FP runs
   (< 5 runs or < 2 distinct N or D) the Chinchilla part is fitted on all runs instead.
2. Law stage: the remaining (quantization) parameters on the quantized runs with the Chinchilla
   part fixed, from several starts (box centre + random points screened by objective).
3. Joint polish of all parameters on all runs from the best stage results.
4. ``n_restarts`` random restarts within the initialisation box (screened from 20x as many
   candidates by objective), each a joint fit.

The best objective wins. A start "converged" if scipy reports success or the projected gradient
is small (``max |pg| <= gtol_check``). ``fit_report_["converged"]`` is False when no start did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from coqat.errors import ConfigError
from coqat.law.features import runs_features
from coqat.law.record import make_provenance
from coqat.law.runs import Runs

if TYPE_CHECKING:  # the Law class imports this module lazily: no import at run time
    from coqat.law.base import Law

HUBER_DELTA = 1e-3


def subset_features(F: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    out = {
        k: (v[rows] if isinstance(v, np.ndarray) and v.shape == (F["n"],) else v)
        for k, v in F.items()
    }
    out["n"] = int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows)
    out["shape"] = (out["n"],)
    return out


def huber_objective(
    law: Law,
    x: np.ndarray,
    F: dict[str, Any],
    logy: np.ndarray,
    w: np.ndarray,
    delta: float = HUBER_DELTA,
    grad: bool = True,
):
    """Sum_i w_i Huber_delta(log pred_i - log y_i) / delta and its gradient (analytic)."""
    if grad:
        logL, G = law._logpred_grad(x, F)
    else:
        logL = law._logpred(x, F)
    r = logL - logy
    a = np.abs(r)
    h = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    val = float(np.dot(w, h)) / delta
    if not np.isfinite(val):
        val = 1e300
    if not grad:
        return val
    # elementwise product + sum instead of G.T @ v: a BLAS gemv here spawns OpenBLAS threads,
    # which made fits ~30x slower on a busy 2-core machine
    g = (G * (w * np.clip(r, -delta, delta))[:, None]).sum(axis=0) / delta
    return val, np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def projected_grad(g: np.ndarray, x: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    pg = g.copy()
    pg[(x <= lo + 1e-10) & (g > 0)] = 0.0
    pg[(x >= hi - 1e-10) & (g < 0)] = 0.0
    return pg


@dataclass
class Start:
    label: str
    x: np.ndarray
    fun: float
    success: bool
    pg: float
    nit: int
    message: str

    @property
    def converged(self) -> bool:
        return self.success


@dataclass
class FitContext:
    """What the stage hooks of a law get: features, targets, weights and helpers."""

    law: Law
    F: dict[str, Any]
    logy: np.ndarray
    w: np.ndarray
    delta: float
    maxiter: int
    gtol_check: float
    rng: np.random.Generator
    starts: list[Start] = field(default_factory=list)
    n_stage: int = 4  # starts of the staged (quantization parameters first) search

    def minimize(
        self,
        x0: np.ndarray,
        free: Any = None,
        rows: Any = None,
        label: str = "",
        law: Law | None = None,
    ) -> Start:
        from scipy.optimize import minimize

        law = law or self.law
        x0 = np.asarray(x0, float).copy()
        bounds_all = law._x_bounds()
        free = np.arange(len(x0)) if free is None else np.asarray(free)
        F, logy, w = self.F, self.logy, self.w
        if rows is not None:
            F, logy, w = subset_features(F, rows), logy[rows], w[rows]
        bnds = [bounds_all[i] for i in free]
        lo = np.array([b[0] for b in bnds])
        hi = np.array([b[1] for b in bnds])

        def fun(z):
            x = x0.copy()
            x[free] = z
            v, g = huber_objective(law, x, F, logy, w, self.delta)
            return v, g[free]

        z0 = np.clip(x0[free], lo, hi)
        res = minimize(
            fun,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=bnds,
            options={"maxiter": self.maxiter, "maxcor": 20, "ftol": 1e-13, "gtol": 1e-9},
        )
        x = x0.copy()
        x[free] = res.x
        v, g = fun(res.x)
        pg = float(np.max(np.abs(projected_grad(g, res.x, bnds)))) if len(g) else 0.0
        scale = max(1.0, float(w.sum()))
        ok = bool(res.success) or pg <= self.gtol_check * scale
        return Start(label, x, float(v), ok, pg, int(res.nit), str(res.message))


def fit_law(
    law: Law,
    runs: Runs,
    *,
    n_restarts: int = 8,
    n_stage: int = 4,
    seed: int = 0,
    delta: float = HUBER_DELTA,
    include_ptq: bool | None = None,
    maxiter: int = 3000,
    gtol_check: float = 1e-3,
    x0: Any = None,
) -> Law:
    """Fit ``law`` to ``runs`` in place and return it (see module docstring)."""
    if not isinstance(runs, Runs):
        raise ConfigError("runs", "expected a coqat.law.Runs table")
    t0 = time.perf_counter()
    if include_ptq is None:
        include_ptq = law.name != "qat"
    keep = np.ones(len(runs), bool)
    if not include_ptq:
        keep &= ~((runs.bits < 16) & (runs.D_qat <= 0))
    used = runs.filter(keep)
    law._prepare(used)
    if len(used) <= law.n_params:
        raise ConfigError(
            "runs",
            f"{len(used)} usable runs for {law.n_params} parameters of the "
            f"{law.name} law; need more runs than parameters",
        )
    F = runs_features(used)
    logy = np.log(used.loss)
    w = np.ones(len(used))
    rng = np.random.default_rng(seed)
    ctx = FitContext(law, F, logy, w, delta, maxiter, gtol_check, rng, n_stage=n_stage)
    starts: list[Start] = []
    if x0 is not None:
        starts.append(ctx.minimize(np.asarray(x0, float), label="given"))
    for x in law._stage_starts(ctx):  # a law's own starts: points, or fits already made
        starts.append(x if isinstance(x, Start) else ctx.minimize(x, label="stage:joint"))
    lo, hi = law._x_init_box()
    if n_restarts > 0:
        cands = rng.uniform(lo, hi, size=(20 * n_restarts, law.n_params))
        vals = np.array([huber_objective(law, c, F, logy, w, delta, grad=False) for c in cands])
        for i in np.argsort(vals)[:n_restarts]:
            starts.append(ctx.minimize(cands[i], label="random"))
    if not starts:
        starts.append(ctx.minimize((lo + hi) / 2, label="centre"))
    best = min(starts, key=lambda s: s.fun)
    law.params_ = law._from_x(best.x)
    law.bootstrap_ = None
    pred = np.exp(law._logpred(best.x, F))
    law.fit_report_ = {
        "converged": bool(best.converged or _close_to_converged(best, starts)),
        "best_start": best.label,
        "objective": best.fun,
        "proj_grad_max": best.pg,
        "n_starts": len(starts),
        "n_converged": int(sum(s.converged for s in starts)),
        "starts": [
            {
                "label": s.label,
                "objective": s.fun,
                "converged": s.converged,
                "nit": s.nit,
                "message": s.message,
            }
            for s in starts
        ],
        "seconds": round(time.perf_counter() - t0, 3),
        "n_excluded_ptq": int((~keep).sum()),
        **metrics(used.loss, pred, law.n_params),
    }
    settings = {
        "n_restarts": n_restarts,
        "n_stage": n_stage,
        "seed": seed,
        "huber_delta": delta,
        "include_ptq": include_ptq,
        "maxiter": maxiter,
        "objective": "sum Huber(log)",
    }
    law.provenance = make_provenance(law, runs, settings)
    law.provenance["n_used"] = len(used)
    law.provenance["fit_range"] = used.ranges()
    law.provenance["metrics"] = {
        k: law.fit_report_[k]
        for k in ("mae", "mean_rel_err", "max_rel_err", "rmse_log", "aic", "bic")
    }
    return law


def _close_to_converged(best: Start, starts: list[Start]) -> bool:
    """The best point counts as converged if a converged start reached the same objective."""
    return any(
        s.converged and abs(s.fun - best.fun) <= 1e-6 * max(1.0, abs(best.fun)) for s in starts
    )


def metrics(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, Any]:
    """In-sample metrics: MAE (nats), relative errors, log-residual RMSE, Gaussian AIC/BIC."""
    y = np.asarray(y, float)
    pred = np.asarray(pred, float)
    r = np.log(pred) - np.log(y)
    rel = np.abs(pred - y) / y
    n = len(y)
    s2 = max(float(np.mean(r * r)), 1e-300)
    ll = -0.5 * n * (np.log(2 * np.pi * s2) + 1)
    return {
        "n": n,
        "mae": float(np.mean(np.abs(pred - y))),
        "mean_rel_err": float(rel.mean()),
        "max_rel_err": float(rel.max()),
        "rmse_log": float(np.sqrt(s2)),
        "loglik": float(ll),
        "aic": float(2 * k - 2 * ll),
        "bic": float(k * np.log(n) - 2 * ll),
        "residuals_log": [float(v) for v in r],
    }
