"""Loss laws: the paper's QAT law and three compact rivals (numpy only).

All laws share the Chinchilla part ``E + A/N^alpha + B/D^beta`` with ``N`` the *total* parameter
count and ``D = D_fp + D_qat`` the total tokens. See docs/law.md for the derivations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coqat.errors import ConfigError
from coqat.law.base import Law
from coqat.law.fit import FitContext, Start, huber_objective, subset_features

_NEG = -np.inf

# (name, is_log, lo, hi, init_lo, init_hi); bounds on the natural parameter
_CHIN = [
    ("E", True, 0.05, 20.0, 0.5, 3.0),
    ("A", True, 1e-3, 1e12, 10.0, 1e4),
    ("alpha", False, 0.01, 2.5, 0.1, 0.8),
    ("B", True, 1e-3, 1e12, 10.0, 1e4),
    ("beta", False, 0.01, 2.5, 0.1, 0.8),
]


def _chin_terms(x: np.ndarray, F: dict[str, Any]) -> list[np.ndarray]:
    return [np.full(F["n"], x[0]), x[1] - x[2] * F["lnN"], x[3] - x[4] * F["lnD"]]


def _chin_dterms(F: dict[str, Any]) -> list[tuple[int, Any]]:
    return [(0, 1.0), (1, 1.0), (1, -F["lnN"]), (2, 1.0), (2, -F["lnD"])]


def chinchilla_start(
    ctx: FitContext, rows: np.ndarray | None = None, n_best: int = 3
) -> np.ndarray:
    """Best Chinchilla (E, A, alpha, B, beta) internal vector on ``rows`` (grid + L-BFGS-B)."""
    sub = PerBitChinchilla(groups=[16.0])
    if rows is None:
        rows = np.ones(ctx.F["n"], bool)
    Fs = subset_features(ctx.F, rows)
    Fs = {**Fs, "bits": np.full(Fs["n"], 16.0)}
    sctx = FitContext(
        sub, Fs, ctx.logy[rows], ctx.w[rows], ctx.delta, ctx.maxiter, ctx.gtol_check, ctx.rng
    )
    grid = [
        (e, a, al, b, be)
        for e in (-0.5, 0.5, 1.0)
        for a in (2.0, 6.0, 10.0)
        for al in (0.2, 0.4, 0.8)
        for b in (2.0, 6.0, 10.0)
        for be in (0.2, 0.4, 0.8)
    ]
    vals = [
        huber_objective(sub, np.array(g), Fs, sctx.logy, sctx.w, ctx.delta, grad=False)
        for g in grid
    ]
    best = None
    for i in np.argsort(vals)[:n_best]:
        s = sctx.minimize(np.array(grid[i]), label="chinchilla")
        if best is None or s.fun < best.fun:
            best = s
    return best.x


class ChinchillaFirstLaw(Law):
    """A law whose first five parameters are Chinchilla's (E, A, alpha, B, beta). Fitted in
    stages: Chinchilla on the FP runs, then the quantization parameters on the quantized runs,
    then everything jointly from the best two."""

    def _stage_starts(self, ctx: FitContext) -> list[Start]:
        F, n_stage = ctx.F, ctx.n_stage
        fp = ~F["quant"] & (ctx.w > 0)
        enough_fp = (
            fp.sum() >= 5 and len(np.unique(F["N"][fp])) >= 2 and len(np.unique(F["D"][fp])) >= 2
        )
        chin = chinchilla_start(ctx, fp if enough_fp else (ctx.w > 0))
        lo, hi = self._x_init_box()
        rest = np.arange(5, self.n_params)
        q = F["quant"] & (ctx.w > 0)
        cands = [np.concatenate([chin, (lo[5:] + hi[5:]) / 2])]
        for _ in range(20 * n_stage):
            cands.append(np.concatenate([chin, ctx.rng.uniform(lo[5:], hi[5:])]))
        Fq = subset_features(F, q)
        vals = [
            huber_objective(self, c, Fq, ctx.logy[q], ctx.w[q], ctx.delta, grad=False)
            for c in cands
        ]
        order = [0] + [int(i) for i in np.argsort(vals) if i != 0][: n_stage - 1]
        stage = [ctx.minimize(cands[i], free=rest, rows=q, label="stage:quant") for i in order]
        stage.sort(key=lambda s: s.fun)
        return [ctx.minimize(s.x, label="stage:joint") for s in stage[:2]]


class QATLaw(ChinchillaFirstLaw):
    r"""Dremov et al. (2025) QAT loss law.

    ``L = E + A/N^alpha + B/D^beta + delta`` with ``N`` = total parameters, ``D = D_fp + D_qat`` and

    ``delta = theta 2^(-kappa B) + phi 2^(-chi B) / (N^psi S'_qat^omega)
    + lambda 2^(-mu B) / (N^nu S'_fp^xi S'_qat^rho)``

    where ``S'_x = 1 + S_x`` and ``S_x = D_x / (N B/8)`` (tokens per parameter byte).

    * Full-precision runs (bits >= 16): ``delta = 0`` (pure Chinchilla).
    * The pseudo-count ``+1`` (one token per parameter byte) keeps ``delta`` finite and smooth on
      the closed interval ``f in [0, 1]``: for QAT from scratch (``D_fp = 0``) the third term
      becomes ``lambda 2^(-mu B) / (N^nu S'_qat^rho)`` instead of diverging as ``S_fp^-xi`` would,
      and for PTQ (``D_qat = 0``) the second term becomes the finite ``phi 2^(-chi B)/N^psi``. For
      any real run ``S >> 1`` and the shift is negligible, so the law equals the paper's form where
      the paper has data. PTQ runs (``D_qat = 0``, bits < 16) are excluded from fits by default
      (``include_ptq=False``): the f = 0 endpoint is an extrapolation of the law.
    """

    name = "qat"
    _spec = _CHIN + [
        ("theta", True, 1e-9, 1e3, 1e-3, 1.0),
        ("kappa", False, 0.0, 5.0, 0.2, 2.0),
        ("phi", True, 1e-9, 1e9, 1e-2, 1e2),
        ("chi", False, 0.0, 5.0, 0.2, 2.0),
        ("psi", False, -1.0, 2.0, 0.0, 0.5),
        ("omega", False, 0.0, 3.0, 0.1, 1.0),
        ("lambda", True, 1e-9, 1e9, 1e-2, 1e2),
        ("mu", False, 0.0, 5.0, 0.2, 2.0),
        ("nu", False, -1.0, 2.0, 0.0, 0.5),
        # xi >= 0: with xi <= 0 (and rho >= 0) the penalty falls monotonically in f at fixed D (no
        # interior optimum, f_opt = 1 everywhere); on the reference data (142 runs at commit
        # 5dbf2aa) a free xi went to its old bound -1 for a 0.1% lower objective and that
        # degenerate optimum
        ("xi", False, 0.0, 3.0, 0.1, 1.0),
        ("rho", False, -1.0, 3.0, 0.0, 1.0),
    ]

    def _terms(self, x, F):
        q = F["quant"]
        t3 = np.where(q, x[5] - x[6] * F["Bln2"], _NEG)
        t4 = np.where(q, x[7] - x[8] * F["Bln2"] - x[9] * F["lnN"] - x[10] * F["lnSq"], _NEG)
        t5 = np.where(
            q,
            x[11] - x[12] * F["Bln2"] - x[13] * F["lnN"] - x[14] * F["lnSf"] - x[15] * F["lnSq"],
            _NEG,
        )
        return np.stack(_chin_terms(x, F) + [t3, t4, t5])

    def _dterms(self, x, F):
        B, lnN, Sf, Sq = -F["Bln2"], -F["lnN"], -F["lnSf"], -F["lnSq"]
        return _chin_dterms(F) + [
            (3, 1.0),
            (3, B),
            (4, 1.0),
            (4, B),
            (4, lnN),
            (4, Sq),
            (5, 1.0),
            (5, B),
            (5, lnN),
            (5, Sf),
            (5, Sq),
        ]


class PerBitChinchilla(Law):
    """Separate Chinchilla law ``E_b + A_b/N^alpha_b + B_b/D^beta_b`` per bit width (D = D_total).

    Ignores the FP/QAT split entirely (it cannot choose a fraction); parameters are named
    ``E@4``, ``alpha@4`` ... for the bit widths present in the fitted data.
    """

    name = "per-bit-chinchilla"
    depends_on_fraction = False
    batched = False

    def __init__(self, params=None, groups=None):
        self.groups: list[float] = []
        self._spec = []
        if groups is not None:
            self._set_groups(groups)
        elif params:
            self._set_groups(sorted({float(k.split("@")[1]) for k in params}))
        super().__init__(params)

    def _set_groups(self, groups):
        self.groups = sorted(float(g) for g in groups)
        self._spec = [
            (f"{n}@{_fmt(g)}", lg, lo, hi, a, b)
            for g in self.groups
            for (n, lg, lo, hi, a, b) in _CHIN
        ]

    def _prepare(self, runs):
        self._set_groups(sorted({float(b) for b in runs.bits}))

    def _gidx(self, F):
        g = np.full(F["n"], -1)
        for i, b in enumerate(self.groups):
            g[np.isclose(F["bits"], b)] = i
        return g

    def _check_predictable(self, F):
        if (self._gidx(F) < 0).any():
            raise ConfigError("bits", f"this per-bit law was fitted for bits {self.groups} only")

    def _terms(self, x, F):
        g = np.maximum(self._gidx(F), 0)
        X = x.reshape(-1, 5)[g]
        return np.stack([X[:, 0], X[:, 1] - X[:, 2] * F["lnN"], X[:, 3] - X[:, 4] * F["lnD"]])

    def _dterms(self, x, F):
        g = self._gidx(F)
        out = []
        for i in range(len(self.groups)):
            m = (g == i).astype(float)
            out += [(0, m), (1, m), (1, -F["lnN"] * m), (2, m), (2, -F["lnD"] * m)]
        return out

    def _stage_starts(self, ctx):
        x = np.zeros(self.n_params)
        for i, b in enumerate(self.groups):
            rows = np.isclose(ctx.F["bits"], b)
            x[5 * i : 5 * i + 5] = chinchilla_start(ctx, rows)
        return [x]

    def _extra(self):
        return {"groups": self.groups}

    def _load_extra(self, extra):
        if extra.get("groups"):
            self._set_groups(extra["groups"])


class ChenQATLaw(ChinchillaFirstLaw):
    """Chen et al. (2025, arXiv 2505.14302) QAT law adapted to bit widths.

    ``L = E + A/N^alpha + B/D^beta + k 2^(-c B) D^gD / N^gN`` for quantized runs (0 for FP), with
    ``D = D_total``. The published ``(log2 G)^gG`` granularity factor is constant for weight-only
    per-channel quantizers and is absorbed into ``k``; the bit dependence ``2^(-c B)`` is our
    adaptation. The law has no FP/QAT split, so it cannot choose a fraction.
    """

    name = "chen"
    depends_on_fraction = False
    _spec = _CHIN + [
        ("k", True, 1e-9, 1e9, 1e-2, 1e2),
        ("c", False, 0.0, 5.0, 0.2, 2.0),
        ("gD", False, -1.0, 2.0, 0.0, 0.5),
        ("gN", False, -1.0, 3.0, 0.0, 0.8),
    ]

    def _terms(self, x, F):
        t = np.where(F["quant"], x[5] - x[6] * F["Bln2"] + x[7] * F["lnD"] - x[8] * F["lnN"], _NEG)
        return np.stack(_chin_terms(x, F) + [t])

    def _dterms(self, x, F):
        return _chin_dterms(F) + [(3, 1.0), (3, -F["Bln2"]), (3, F["lnD"]), (3, -F["lnN"])]


class KumarPrecisionLaw(ChinchillaFirstLaw):
    """Kumar et al. (2024, arXiv 2411.04330) precision law, weight-only.

    QAT-trained weights (``D_qat > 0``): ``L = E + A/N_eff^alpha + B/D^beta`` with
    ``N_eff = N (1 - exp(-B_bits/gamma))``. Post-training quantization (``D_qat = 0``, bits < 16):
    ``L = E + A/N^alpha + B/D^beta + C (D^gD / N^gN) exp(-B_bits/gamma_post)``. FP: Chinchilla.
    Like the paper it treats any QAT as "trained in precision B", so it is flat in f on (0, 1].
    """

    name = "kumar"
    depends_on_fraction = False
    _spec = _CHIN + [
        ("gamma", False, 0.05, 20.0, 0.5, 4.0),
        ("C", True, 1e-9, 1e9, 1e-2, 1e2),
        ("gD", False, -1.0, 2.0, 0.0, 0.5),
        ("gN", False, -1.0, 3.0, 0.0, 0.8),
        ("gamma_post", False, 0.05, 20.0, 0.5, 4.0),
    ]

    def _terms(self, x, F):
        u = np.exp(-F["bits"] / x[5])
        lnNe = F["lnN"] + np.where(F["qat"], np.log1p(-u), 0.0)
        t = np.where(F["ptq"], x[6] + x[7] * F["lnD"] - x[8] * F["lnN"] - F["bits"] / x[9], _NEG)
        return np.stack([np.full(F["n"], x[0]), x[1] - x[2] * lnNe, x[3] - x[4] * F["lnD"], t])

    def _dterms(self, x, F):
        u = np.exp(-F["bits"] / x[5])
        lnNe = F["lnN"] + np.where(F["qat"], np.log1p(-u), 0.0)
        dg = np.where(F["qat"], x[2] * u * F["bits"] / (x[5] ** 2 * (1 - u)), 0.0)
        return [
            (0, 1.0),
            (1, 1.0),
            (1, -lnNe),
            (2, 1.0),
            (2, -F["lnD"]),
            (1, dg),
            (3, 1.0),
            (3, F["lnD"]),
            (3, -F["lnN"]),
            (3, F["bits"] / x[9] ** 2),
        ]


def _fmt(b: float) -> str:
    return f"{b:g}"

