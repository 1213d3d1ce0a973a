"""The features every loss law is written in: log sizes, bytes, tokens per parameter byte (numpy
only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from coqat.errors import ConfigError
from coqat.law.runs import Runs, check_bits

LN2 = float(np.log(2.0))
#: tokens-per-parameter-byte pseudo-count added to S_fp and S_qat inside the QAT terms
S_SHIFT = 1.0


def features(N: Any, D_fp: Any, D_qat: Any, bits: Any, check: bool = True) -> dict[str, Any]:
    """Broadcast inputs to 1-D arrays and compute the features every law uses."""
    N, D_fp, D_qat, bits = np.broadcast_arrays(
        np.asarray(N, float),
        np.asarray(D_fp, float),
        np.asarray(D_qat, float),
        np.asarray(bits, float),
    )
    shape = N.shape
    N, D_fp, D_qat, bits = (a.ravel() for a in (N, D_fp, D_qat, bits))
    if check:
        if not np.all(np.isfinite(N)) or np.any(N <= 0):
            raise ConfigError("N", "parameter count must be a finite number > 0")
        for nm, a in (("D_fp", D_fp), ("D_qat", D_qat)):
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ConfigError(nm, "token count must be a finite number >= 0")
        if np.any(D_fp + D_qat <= 0):
            raise ConfigError("D", "total tokens D_fp + D_qat must be > 0")
        check_bits(bits)
    D = D_fp + D_qat
    quant = bits < 16
    byt = N * np.where(quant, bits, 16.0) / 8.0
    return {
        "shape": shape,
        "n": N.size,
        "N": N,
        "D": D,
        "D_fp": D_fp,
        "D_qat": D_qat,
        "bits": bits,
        "lnN": np.log(N),
        "lnD": np.log(D),
        "Bln2": bits * LN2,
        "lnSf": np.log1p(D_fp / byt),
        "lnSq": np.log1p(D_qat / byt),
        "quant": quant,
        "ptq": quant & (D_qat <= 0),
        "qat": quant & (D_qat > 0),
    }


def runs_features(runs: Runs) -> dict[str, Any]:
    return features(runs.N, runs.D_fp, runs.D_qat, runs.bits, check=False)
