"""Planner: optimal QAT fraction, bit width under a memory budget, FP-equivalent size and
token-equivalents, each with bootstrap CIs when the law carries bootstrap samples.

Pure numpy: the scalar optimisation/root finding uses ``coqat.plan._opt`` (grid-bracketed golden
section and a bracketed Illinois root finder) so the CLI never pays scipy.optimize's import time.
Intervals evaluate the point estimate and every bootstrap sample together
(``Law.predict_samples``): one vectorized solver iteration for all of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from coqat.errors import ConfigError
from coqat.law.runs import QUANT_BITS, check_bits
from coqat.plan._opt import minimize_bounded_rows, root_log, root_log_rows

NEEDS_FIT = (
    "loss predictions need a fitted loss law (pass --law FILE from `coqat fit`, or --law "
    "reference-linux-c, the shipped small-scale fit); "
    "the closed form only predicts the optimal fraction"
)
DEFAULT_BITS = (1, 1.58, 2, 3, 4, 6, 8)


def _is_closed_form(law: Any) -> bool:
    """A fraction-only rule (the paper's closed form, or the one with a size term)."""
    from coqat.law.registry import FRACTION_RULES

    return getattr(law, "name", "") in FRACTION_RULES


def _pos(v: Any, field: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number > 0, got {v!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise ConfigError(field, f"must be a finite number > 0, got {v!r}")
    return x


def _qbits(bits: Any) -> float:
    b = float(check_bits(bits))
    if b >= 16:
        raise ConfigError(
            "bits", f"planning a QAT run needs a quantized width; choose one of {list(QUANT_BITS)}"
        )
    return b


def s_total(N: float, D: float, bits: float) -> float:
    return D / (N * bits / 8.0)


# an f_opt interval wider than this (half of [0, 1]) gets a warning: the fit does not pin the
# optimum (the reference fit's intervals reach 0.02-0.78 at S >= 320, README 3.)
WIDE_F_CI = 0.5


def range_warnings(
    law: Any, N: float | None = None, S: float | None = None, factor: float = 3.0
) -> list[str]:
    """Warn when N or S_total is more than ``factor`` x outside the law's fitted range."""
    rng = (getattr(law, "provenance", {}) or {}).get("fit_range") or {}
    out = []
    for key, v in (("N", N), ("S_total", S)):
        r = rng.get(key)
        if v is None or not r:
            continue
        if v < r[0] / factor or v > r[1] * factor:
            out.append(
                f"{key}={v:.3g} is far outside the fitted range [{r[0]:.3g}, {r[1]:.3g}] "
                f"(> {factor:g}x): extrapolation"
            )
    return out


def _ci(law: Any, fn: Any, level: float | None) -> dict[str, Any]:
    if level is None or not hasattr(law, "ci"):
        return {"value": fn(law), "lo": None, "hi": None, "level": level, "n": 0}
    return law.ci(fn, level)


def _samples(law: Any, level: float | None) -> np.ndarray:
    """The law's parameter vectors for a batched evaluation: the point estimate first, then the
    bootstrap samples when an interval is asked for."""
    if level is not None and not 0 < level < 1:
        raise ConfigError("level", f"must be in (0, 1), got {level!r}")
    return law.samples_x(with_bootstrap=level is not None)


def _ci_rows(V: np.ndarray, level: float | None) -> dict[str, Any]:
    """Point value (row 0) and percentile interval over the bootstrap rows (rows 1...), as
    ``Law.ci`` gives for the same quantity computed one law at a time."""
    from coqat.law.base import percentile_ci

    if level is None:
        return {"value": V[0], "lo": None, "hi": None, "level": level, "n": 0}
    return percentile_ci(V[0], V[1:], level)


def _fstar_rows(law: Any, X: np.ndarray, N: float, D: float, b: float):
    """f* and the loss there for every parameter vector in ``X`` (golden section, vectorized)."""
    return minimize_bounded_rows(
        lambda F: law.predict_samples(X, N, (1.0 - F) * D, F * D, b), len(X)
    )


def _token_equivalent_rows(
    law: Any, X: np.ndarray, loss: np.ndarray, N: float, b: float, f: float,
    D_range: tuple[float, float] = (1e3, 1e18),
) -> np.ndarray:  # fmt: skip
    """:func:`token_equivalent` for every parameter vector in ``X`` (row r at ``loss[r]``)."""

    def g(D: np.ndarray) -> np.ndarray:
        D = D[:, None]
        return law.predict_samples(X, N, (1 - f) * D, f * D, b)[:, 0] - loss

    lo, hi = D_range
    out = root_log_rows(g, len(X), lo, hi)
    with np.errstate(invalid="ignore"):
        out[g(np.full(len(X), hi)) > 0] = np.inf
    return out


def token_equivalent(
    law: Any,
    loss: float,
    N: float,
    bits: float,
    f: float,
    D_range: tuple[float, float] = (1e3, 1e18),
) -> float:
    """Total tokens D at which ``law`` predicts ``loss`` for (N, bits, QAT fraction f).

    Used to convert a measured loss gain (e.g. of cooldown & QAT fusion, which the law cannot
    express) into token-equivalent savings: ``1 - token_equivalent(L_fused) ... / D``.
    Returns ``inf`` when the loss is below what any D in ``D_range`` reaches, NaN when above.
    """
    if _is_closed_form(law):
        raise ConfigError("law", NEEDS_FIT)
    N = _pos(N, "N")
    loss = _pos(loss, "loss")
    b = float(check_bits(bits))
    f = float(f)
    if not 0 <= f <= 1:
        raise ConfigError("f", f"must be in [0, 1], got {f!r}")
    if b >= 16:
        f = 0.0

    def g(D: float) -> float:
        return float(law.predict(N, (1 - f) * D, f * D, b)) - loss

    lo, hi = D_range
    if g(hi) > 0:
        return math.inf
    return root_log(g, lo, hi)


def optimal_fraction(
    law: Any, N: Any, D: Any, bits: Any, *, level: float | None = 0.9, baseline: float = 0.1
) -> dict[str, Any]:
    """Loss-optimal QAT fraction f* for a run of N params and D total tokens at ``bits``.

    With a fitted loss law: f* is the continuous minimiser of L(f) on [0, 1] (endpoints included),
    with the predicted loss at f* and at ``baseline`` (the 10% rule), the regret of the baseline
    in loss and in tokens (``extra_tokens``: how many more total tokens, as a fraction of D, the
    baseline needs to match the loss at f*), and bootstrap CIs for each. With the closed form only
    f_hat is given and the loss fields are None.
    """
    N, D, b = _pos(N, "N"), _pos(D, "D"), _qbits(bits)
    S = s_total(N, D, b)
    from coqat.law.closed_form import FractionClosedForm

    out: dict[str, Any] = {
        "N": N,
        "D": D,
        "bits": b,
        "S_total": S,
        "f_closed_form": FractionClosedForm().predict_fraction(S),
        "law": law.describe() if hasattr(law, "describe") else str(law),
        "warnings": range_warnings(law, N, S) + (
            law.range_notes(N, D, b) if hasattr(law, "range_notes") else []
        ),
    }
    if _is_closed_form(law):
        ci = getattr(law, "fraction_ci", None)
        out.update(
            f_opt=law.optimal_fraction(N, D, b),
            f_opt_ci=ci(N, D, b, level) if ci is not None and level is not None else None,
            level=level,
            basis=law.basis(N) if hasattr(law, "basis") else None,
            evidence=getattr(law, "evidence", None),
            loss_opt=None,
            loss_baseline=None,
            regret_loss=None,
            extra_tokens=None,
            note=NEEDS_FIT,
        )
        return out
    if not law.depends_on_fraction:
        L = law.loss_at_fraction(N, D, b, baseline)
        out.update(
            f_opt=None,
            f_opt_ci=None,
            loss_opt=None,
            loss_baseline=float(L),
            regret_loss=None,
            extra_tokens=None,
            note=f"the {law.name} law has no FP/QAT split; it cannot choose a fraction",
        )
        return out

    # every quantity for the point estimate and all bootstrap samples at once (row 0 = estimate)
    X = _samples(law, level)
    f, L = _fstar_rows(law, X, N, D, b)
    Lb = law.predict_samples(X, N, (1 - baseline) * D, baseline * D, b)[:, 0]
    Db = _token_equivalent_rows(law, X, L, N, b, baseline)
    V = np.stack([f, L, Lb, Lb - L, Db / D - 1.0], axis=1)
    V[~(np.isfinite(L) & (L > 0))] = np.nan  # token_equivalent refuses such a loss
    c = _ci_rows(V, level)
    names = ["f_opt", "loss_opt", "loss_baseline", "regret_loss", "extra_tokens"]
    for i, n in enumerate(names):
        out[n] = float(c["value"][i])
        out[n + "_ci"] = None if c["lo"] is None else [float(c["lo"][i]), float(c["hi"][i])]
    out.update(
        baseline=baseline, level=level, n_boot=c["n"], f_opt_at_endpoint=out["f_opt"] in (0.0, 1.0)
    )
    ci = out["f_opt_ci"]
    if ci is not None and ci[1] - ci[0] > WIDE_F_CI:
        out["warnings"].append(
            f"the law's optimal fraction is poorly determined here ({level:.0%} CI "
            f"[{ci[0]:.2f}, {ci[1]:.2f}]); the loss predictions are firmer than the optimum"
        )
    return out


def fp_equivalent(
    law: Any, N: Any, D: Any, bits: Any, f: Any, *, level: float | None = 0.9
) -> dict[str, Any]:
    """FP model size N_fp (trained on the same D tokens, bits=16) whose predicted loss equals the
    quantized model's loss L(N, D, bits, f). Also ``N_fp / N`` and the quantized model's size in
    bytes relative to the FP-equivalent's (FP at 16 bits)."""
    if _is_closed_form(law):
        raise ConfigError("law", NEEDS_FIT)
    N, D, b = _pos(N, "N"), _pos(D, "D"), _qbits(bits)
    f = float(f)
    if not 0 <= f <= 1:
        raise ConfigError("f", f"must be in [0, 1], got {f!r}")

    X = _samples(law, level)
    Lq = law.predict_samples(X, N, (1.0 - f) * D, f * D, b)[:, 0]
    c = _ci_rows(
        root_log_rows(
            lambda n: law.predict_samples(X, n[:, None], D, 0.0, 16)[:, 0] - Lq,
            len(X), N * 1e-6, N * 1e3,
        ),
        level,
    )  # fmt: skip
    v = float(c["value"])
    return {
        "N": N,
        "D": D,
        "bits": b,
        "f": f,
        "N_fp": v,
        "N_fp_ci": (None if c["lo"] is None else [float(c["lo"]), float(c["hi"])]),
        "ratio": v / N,
        "bytes_ratio": (N * b / 8) / (v * 2.0),
        "level": level,
    }


def best_under_memory(
    law: Any,
    memory_bytes: Any,
    tokens: Any = None,
    flops: Any = None,
    bits: Any = DEFAULT_BITS,
    *,
    level: float | None = 0.9,
    embed_params: float = 0.0,
    embed_min_bits: float = 4.0,
) -> list[dict[str, Any]]:
    """Compare bit widths under a weight-memory budget.

    For each B: the largest N whose weights fit, ``D = tokens`` or ``D = flops / (6 N)``, the
    optimal fraction and the predicted loss. With ``embed_params = 0`` every parameter counts at
    B bits (``N = memory_bytes * 8 / B``, the paper's N B/8 convention); with the size of the
    (tied) embedding, those parameters count at ``max(B, embed_min_bits)`` bits, as coqat stores
    them (``qat.embed_bits = auto``), and N = embedding + what the rest of the budget holds.
    Rows sorted best (lowest loss) first; with the closed form only, rows carry f_hat and are
    sorted by bits (no loss ranking possible).
    """
    mem = _pos(memory_bytes, "memory")
    if (tokens is None) == (flops is None):
        raise ConfigError("tokens", "give exactly one of tokens or flops")
    if not embed_params >= 0:
        raise ConfigError("embed_params", f"must be >= 0, got {embed_params!r}")
    rows = []
    for B in bits:
        b = _qbits(B)
        eb = max(b, float(embed_min_bits))
        rest = mem * 8.0 - embed_params * eb
        if rest <= 0:  # the embedding alone does not fit at this width
            continue
        N = embed_params + rest / b
        D = _pos(tokens, "tokens") if tokens is not None else _pos(flops, "flops") / (6.0 * N)
        r = optimal_fraction(law, N, D, b, level=level)
        rows.append(
            {
                "bits": b,
                "N": N,
                "weight_bytes": (N - embed_params) * b / 8 + embed_params * eb / 8,
                "D": D,
                "S_total": r["S_total"],
                "f_opt": r["f_opt"],
                "loss_opt": r.get("loss_opt"),
                "loss_opt_ci": r.get("loss_opt_ci"),
                "warnings": r["warnings"],
            }
        )
    if not rows:
        raise ConfigError(
            "memory",
            f"{mem:.3g} bytes do not hold the embedding ({embed_params:.3g} parameters at >= "
            f"{embed_min_bits:g} bits) at any of the bit widths {list(bits)}",
        )
    if any(r["loss_opt"] is not None for r in rows):
        rows.sort(key=lambda r: (r["loss_opt"] is None, r["loss_opt"] or 0.0))
    return rows


def loss_curve(
    law: Any, N: float, D: float, bits: float, n: int = 101, level: float | None = 0.9
) -> dict[str, Any]:
    """Predicted loss vs QAT fraction on a grid, with a bootstrap band if available."""
    f = np.linspace(0, 1, n)
    if not hasattr(law, "predict_samples"):
        c = _ci(law, lambda lw: lw.loss_at_fraction(N, D, bits, f), level)
    else:
        c = _ci_rows(law.predict_samples(_samples(law, level), N, (1 - f) * D, f * D, bits), level)
    return {"f": f, "loss": c["value"], "lo": c["lo"], "hi": c["hi"]}
