"""Synthetic runs tables drawn from a known law (for tests, benchmarks and docs examples)."""

from __future__ import annotations

from typing import Any

import numpy as np

from coqat.law.runs import Runs

#: A plausible QATLaw parameter set (small models, nats). Not fitted to anything real.
EXAMPLE_QAT_PARAMS: dict[str, float] = {
    "E": 1.8,
    "A": 150.0,
    "alpha": 0.3,
    "B": 150.0,
    "beta": 0.3,
    "theta": 0.3,
    "kappa": 0.9,
    "phi": 3.0,
    "chi": 0.6,
    "psi": 0.05,
    "omega": 0.3,
    "lambda": 100.0,
    "mu": 0.6,
    "nu": 0.05,
    "xi": 0.9,
    "rho": 0.05,
}


def synthetic_runs(
    law: Any,
    *,
    sizes: Any = (2e6, 4e6, 8e6, 1.5e7, 3e7),
    S_totals: Any = (10, 30, 100, 300, 1000),
    bits: Any = (1, 2, 4, 6),
    fractions: Any = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0),
    fp_S: Any = (5, 15, 50, 150, 400),
    noise: float = 0.005,
    seed: int = 0,
) -> Runs:
    """Grid of QAT runs (every N x bits x S_total x f) plus FP runs (N x fp_S, at 16 bits),
    losses from ``law`` times ``exp(noise * z)``. Runs of one (N, S_total) share a cluster."""
    rng = np.random.default_rng(seed)
    rec = []
    for i, N in enumerate(sizes):
        for j, S in enumerate(S_totals):
            for B in bits:
                D = S * N * B / 8
                for f in fractions:
                    rec.append(
                        {
                            "N": N,
                            "D_fp": (1 - f) * D,
                            "D_qat": f * D,
                            "bits": B,
                            "cluster": f"N{i}-S{j}",
                        }
                    )
        for j, S in enumerate(fp_S):
            rec.append(
                {"N": N, "D_fp": S * N * 2.0, "D_qat": 0.0, "bits": 16, "cluster": f"N{i}-fp{j}"}
            )
    cols = {k: np.array([r[k] for r in rec]) for k in rec[0]}
    y = law.predict(cols["N"], cols["D_fp"], cols["D_qat"], cols["bits"])
    cols["loss"] = y * np.exp(noise * rng.standard_normal(len(y)))
    return Runs(cols)
