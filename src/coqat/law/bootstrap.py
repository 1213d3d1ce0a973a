"""Cluster bootstrap over runs.

Each resample draws clusters (runs sharing an FP trunk; default: every run its own cluster) with
replacement; a run's weight is how many times its cluster was drawn, so a resample is just a weight
vector on the same table. Every resample refits all parameters by L-BFGS-B warm-started at the
point estimate. Percentile intervals follow (``law.param_cis``, ``law.ci(fn)``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from coqat.errors import ConfigError
from coqat.law.features import runs_features
from coqat.law.fit import HUBER_DELTA, FitContext
from coqat.law.runs import Runs

if TYPE_CHECKING:  # the Law class imports this module lazily: no import at run time
    from coqat.law.base import Law


def cluster_weights(
    cluster_idx: np.ndarray, n_clusters: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n_runs) integer weights of cluster-resampled runs."""
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    counts = np.stack([np.bincount(d, minlength=n_clusters) for d in draws])
    return counts[:, cluster_idx].astype(float)


def _used_runs(law: Law, runs: Runs) -> Runs:
    inc = (law.provenance.get("fit_settings") or {}).get("include_ptq", True)
    if inc:
        return runs
    return runs.filter(~((runs.bits < 16) & (runs.D_qat <= 0)))


#: "spawn": forked children inherit OpenBLAS state and ran ~3x slower than one process.
#: Scripts calling bootstrap(n_jobs>1) need an ``if __name__ == "__main__":`` guard.
_MP_CONTEXT = "spawn"


def _work(args: tuple) -> list[tuple[np.ndarray, bool]]:
    law, F, logy, W, delta, maxiter = args
    ctx = FitContext(
        law, F, logy, np.ones(len(logy)), delta, maxiter, 1e-3, np.random.default_rng(0)
    )
    out = []
    x0 = law.x_
    for w in W:
        ctx.w = w
        s = ctx.minimize(x0, label="boot")
        out.append((s.x, s.converged))
    return out


def bootstrap(
    law: Law,
    runs: Runs,
    n_boot: int = 200,
    *,
    seed: int = 0,
    level: float = 0.9,
    maxiter: int = 2000,
    n_jobs: int = 1,
    delta: float = HUBER_DELTA,
) -> Law:
    """Attach ``n_boot`` cluster-bootstrap parameter sets to the fitted ``law`` (in place)."""
    if law.params_ is None:
        raise ConfigError("law", "fit the law before bootstrapping it")
    if n_boot < 2:
        raise ConfigError("n_boot", f"need at least 2 resamples, got {n_boot}")
    t0 = time.perf_counter()
    used = _used_runs(law, runs)
    F = runs_features(used)
    logy = np.log(used.loss)
    cidx, ncl = used.cluster_index()
    rng = np.random.default_rng(seed)
    W = cluster_weights(cidx, ncl, n_boot, rng)
    if n_jobs > 1:
        import multiprocessing as mp
        import os

        chunks = np.array_split(W, n_jobs)
        # spawn (not fork) with single-threaded BLAS: forked children inherit OpenBLAS's thread
        # pool, whose busy-waiting threads made 2-process runs slower than one process
        keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        saved = {k: os.environ.get(k) for k in keys}
        os.environ.update({k: "1" for k in keys})
        try:
            with mp.get_context(_MP_CONTEXT).Pool(n_jobs) as pool:
                parts = pool.map(_work, [(law, F, logy, c, delta, maxiter) for c in chunks])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        res = [r for p in parts for r in p]
    else:
        res = _work((law, F, logy, W, delta, maxiter))
    law.bootstrap_ = np.array([r[0] for r in res])
    law.bootstrap_info_ = {
        "n": n_boot,
        "seed": seed,
        "level": level,
        "n_clusters": ncl,
        "n_converged": int(sum(r[1] for r in res)),
        "seconds": round(time.perf_counter() - t0, 3),
        "method": "cluster bootstrap, warm-started L-BFGS-B refits, percentile intervals",
    }
    return law
