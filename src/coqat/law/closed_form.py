"""The paper's closed-form optimal QAT fraction: ``f_hat(S_total) = exp(-a / ln S_total)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from coqat.errors import ConfigError

PAPER_A = 6.7297
PAPER_SOURCE = (
    "paper closed form (Dremov et al. 2025), a=6.7297, fitted on the paper's 757 runs "
    "(86M-2.2B parameters, DCLM); predicts the optimal fraction only. coqat's reference "
    "experiment (1.9-91.2M, Linux C) measured optima above it at small scale (MAE 0.148); "
    "a loss law: --law reference-linux-c (small-scale fit)"
)
PAPER_FIT_RANGE = {"N": [86e6, 2.2e9]}  # the paper's model sizes


class FractionClosedForm:
    """``f_hat = exp(-a / ln S_total)`` clipped to [0, 1]; ``f_hat = 0`` for ``S_total <= e``.

    ``S_total = D / (N * bits/8)``. Predicts the loss-optimal QAT fraction only (no loss).
    """

    name = "closed-form"
    param_names = ["a"]
    bounds = {"a": (0.0, 100.0)}
    depends_on_fraction = True

    def __init__(self, a: float = PAPER_A, source: str | None = None):
        from coqat.law.base import check_param

        a = check_param(a, "params.a", *self.bounds["a"])
        self.params_ = {"a": a}
        self.provenance: dict[str, Any] = {"source": source or PAPER_SOURCE}
        if source is None and a == PAPER_A:  # the planner warns > 3x outside the paper's sizes
            self.provenance["fit_range"] = dict(PAPER_FIT_RANGE)
        self.fit_report_: dict[str, Any] | None = {"converged": True, "note": "paper value"}
        self.bootstrap_samples_: list[dict[str, float]] = []
        self.bootstrap_info_: dict[str, Any] = {}

    @property
    def a(self) -> float:
        return self.params_["a"]

    def predict_fraction(self, S_total: Any) -> Any:
        return _fraction(self.a, _checked_S(S_total))

    def optimal_fraction(self, N: Any, D: Any, bits: Any) -> Any:
        from coqat.law.runs import check_bits, finite_positive

        N = finite_positive(N, "N")
        D = finite_positive(D, "D")
        b = check_bits(bits)
        return self._at(D / (N * np.minimum(b, 16.0) / 8.0), N)

    def _at(self, S: Any, N: Any) -> Any:
        """The fraction at S_total (and N, for rules that use it)."""
        return self.predict_fraction(S)

    def fit(self, S_total: Any, f_star: Any, loss: str = "mae") -> FractionClosedForm:
        """Refit ``a`` from (S_total, f*) pairs by MAE (paper's metric) or least squares."""
        from scipy.optimize import minimize_scalar

        S = np.asarray(S_total, float)
        f = np.asarray(f_star, float)
        if S.shape != f.shape or S.size < 1:
            raise ConfigError("f_star", "need equally long, non-empty S_total and f_star")
        if loss not in ("mae", "lsq"):
            raise ConfigError("loss", f"{loss!r} is not allowed; choose one of ['mae', 'lsq']")
        ok = S > np.e
        if not ok.any():
            raise ConfigError("S_total", "need pairs with S_total > e to fit a")

        def obj(a):
            r = FractionClosedForm(a).predict_fraction(S[ok]) - f[ok]
            return np.mean(np.abs(r)) if loss == "mae" else np.mean(r * r)

        res = minimize_scalar(
            obj, bounds=self.bounds["a"], method="bounded", options={"xatol": 1e-6}
        )
        self.params_ = {"a": float(res.x)}
        pred = self.predict_fraction(S[ok])
        self.fit_report_ = {
            "converged": bool(res.success),
            "loss": loss,
            "n": int(ok.sum()),
            "mae": float(np.mean(np.abs(pred - f[ok]))),
        }
        self.provenance = {
            "source": f"closed form refitted on {int(ok.sum())} (S, f*) pairs",
            "n_pairs": int(ok.sum()),
            "fit_range": {"S_total": [float(S[ok].min()), float(S[ok].max())]},
        }
        return self

    def fit_runs(self, runs: Any, loss: str = "mae", min_fractions: int = 3) -> FractionClosedForm:
        """Refit from a runs table: f* = grid argmin of loss within each (N, D, bits) group of
        quantized runs with at least ``min_fractions`` distinct fractions (as the paper did).
        Where the table has ``schedule``, ``seed`` or ``variant`` columns (a store export does),
        they split the groups too: one curve never mixes schedules, seeds or knob settings."""
        from coqat import __version__
        from coqat.law.record import make_provenance

        Ss, Ns, fs = fstar_pairs(runs, min_fractions)
        self._fit_pairs(Ss, Ns, fs, loss)
        prov = make_provenance(self, runs, {"loss": loss, "min_fractions": min_fractions})
        prov.update(source=self.provenance["source"], n_pairs=len(Ss), coqat_version=__version__)
        self.provenance = prov
        return self

    def _fit_pairs(self, S: Any, N: Any, f: Any, loss: str) -> None:
        self.fit(S, f, loss=loss)

    def bootstrap(
        self, S_total: Any, N: Any, f_star: Any, n_boot: int = 200, seed: int = 0,
        loss: str = "mae",
    ) -> FractionClosedForm:  # fmt: skip
        """Refit on ``n_boot`` resamples of the (S_total, N, f*) triples (grids drawn with
        replacement); the parameter samples give :meth:`fraction_ci`. Keeps the current fit."""
        S, Nn, f = (np.asarray(v, float) for v in (S_total, N, f_star))
        if not (S.shape == Nn.shape == f.shape) or S.size < 2:
            raise ConfigError("f_star", "bootstrap needs >= 2 equally long (S, N, f*) triples")
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(int(n_boot)):
            i = rng.integers(0, S.size, S.size)
            m = type(self)()
            try:
                m._fit_pairs(S[i], Nn[i], f[i], loss)
            except ConfigError:  # a resample the form cannot be fitted on (e.g. all S <= e)
                continue
            samples.append(dict(m.params_))
        self.bootstrap_samples_ = samples
        self.bootstrap_info_ = {"n": len(samples), "n_requested": int(n_boot), "seed": seed,
                                "resampled": "grids (S, N, f*) with replacement"}
        return self

    def with_params(self, params: dict[str, float]) -> FractionClosedForm:
        new = type(self)(**{k: params[k] for k in self.param_names})
        new.provenance = self.provenance
        return new

    def fraction_ci(self, N: Any, D: Any, bits: Any, level: float = 0.9) -> list[float] | None:
        """The ``level`` interval of the predicted fraction over the bootstrap samples (None
        without samples)."""
        samples = getattr(self, "bootstrap_samples_", None)
        if not samples:
            return None
        fs = np.array([self.with_params(p).optimal_fraction(N, D, bits) for p in samples])
        q = (1 - level) / 2
        return [float(np.quantile(fs, q)), float(np.quantile(fs, 1 - q))]

    def to_json(self) -> dict[str, Any]:
        from coqat.law.record import FORMAT

        return {
            "format": FORMAT,
            "law": self.name,
            "class": type(self).__name__,
            "param_names": self.param_names,
            "params": self.params_,
            "provenance": self.provenance,
            "fit_report": self.fit_report_,
            **(
                {"bootstrap": {**self.bootstrap_info_, "samples": self.bootstrap_samples_}}
                if getattr(self, "bootstrap_samples_", None)
                else {}
            ),
        }

    @classmethod
    def from_json(cls, d: Any) -> FractionClosedForm:
        if isinstance(d, str | Path):
            d = json.loads(Path(d).read_text())
        if d.get("law") != cls.name:
            raise ConfigError("law", f"JSON holds a {d.get('law')!r} law, not {cls.name!r}")
        params = d.get("params")
        if not isinstance(params, dict):
            raise ConfigError("params", f"expected an object of {cls.param_names}, got {params!r}")
        missing = [k for k in cls.param_names if k not in params]
        if missing:
            raise ConfigError(
                f"params.{missing[0]}", f"missing parameter; {cls.name} needs {cls.param_names}"
            )
        law = cls(**{k: params[k] for k in cls.param_names})
        law.provenance = dict(d.get("provenance") or {})
        law.fit_report_ = d.get("fit_report")
        boot = d.get("bootstrap")
        if boot:
            law.bootstrap_samples_ = [dict(p) for p in boot.get("samples", [])]
            law.bootstrap_info_ = {k: v for k, v in boot.items() if k != "samples"}
        return law

    def save(self, path: str | Path) -> Path:
        from coqat.config import atomic_write_text

        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_json(), indent=2) + "\n")
        return p

    @property
    def converged(self) -> bool:
        return bool(self.fit_report_ and self.fit_report_.get("converged"))

    def describe(self) -> str:
        return f"FractionClosedForm [closed-form] a={self.a:.4f}: {self.provenance.get('source')}"

    def __repr__(self) -> str:
        return f"FractionClosedForm(a={self.a})"


def _checked_S(S_total: Any) -> np.ndarray:
    S = np.asarray(S_total, float)
    if np.any(~np.isfinite(S)) or np.any(S <= 0):
        raise ConfigError("S_total", f"must be a finite number > 0, got {S_total!r}")
    return S


def _fraction(a: float, x: np.ndarray) -> Any:
    """exp(-a / ln x) clipped to [0, 1]; 0 where ln x <= 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.log(x)
        f = np.where(lx > 1.0, np.exp(-a / np.where(lx > 1.0, lx, 1.0)), 0.0)
    f = np.clip(f, 0.0, 1.0)
    return float(f) if f.ndim == 0 else f


def _triples(
    S_total: Any, N: Any, f_star: Any, loss: str, min_n: int, form: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, N, f*) as equally long float arrays of at least ``min_n`` points, and a known loss;
    ConfigError naming the field otherwise."""
    if N is None:
        raise ConfigError("N", f"{form} is fitted on (S_total, N, f*) triples")
    S, Nn, f = (np.asarray(v, float) for v in (S_total, N, f_star))
    if not (S.shape == f.shape == Nn.shape) or S.size < min_n:
        raise ConfigError("f_star", f"need equally long S_total, N and f_star (>= {min_n} points)")
    if loss not in ("mae", "lsq"):
        raise ConfigError("loss", f"{loss!r} is not allowed; choose one of ['mae', 'lsq']")
    return S, Nn, f


def fstar_pairs(runs: Any, min_fractions: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S_total, N, f*) of every (N, D, bits) group of quantized runs with at least
    ``min_fractions`` distinct fractions, f* the grid argmin (``coqat.law.optimum``). Where the
    table has ``schedule``, ``seed`` or ``variant`` columns they split the groups too."""
    from coqat.law.optimum import measured_optimum

    q = np.flatnonzero(runs.bits < 16)
    extra = [c for c in ("schedule", "seed", "variant") if c in runs.columns]
    cols = [runs.N, np.round(runs.D, -3), runs.bits] + [runs[c] for c in extra]
    groups: dict[tuple, list[int]] = {}
    for i in q:
        groups.setdefault(tuple(str(c[i]) for c in cols), []).append(int(i))
    f, L, S = runs.f, runs.loss, runs.S_total
    Ss, Ns, fs = [], [], []
    for idx in groups.values():
        m = np.array(idx)
        if len(np.unique(f[m])) >= min_fractions:
            i = np.argmin(L[m])
            Ss.append(S[m][i])
            Ns.append(runs.N[m][i])
            fs.append(measured_optimum(f[m], L[m])["f_grid"])
    if not Ss:
        raise ConfigError("runs", f"no (N, D, bits) group with >= {min_fractions} fractions")
    return np.array(Ss, float), np.array(Ns, float), np.array(fs, float)


class SizedFractionClosedForm(FractionClosedForm):
    """The closed form with a size term: ``f = exp(-a / ln x)``, ``x = S_total (N / N0)^g``,
    N0 = 1e7, clipped to [0, 1] (0 for x <= e). g = 0 is the paper's form. On coqat's reference
    experiment (15 optima, 1.9-30M parameters) it cut the closed form's error from 0.125 to
    0.081 (leave-one-out MAE): there f* grew with N at fixed S. Predicts the fraction only."""

    name = "closed-form-sized"
    param_names = ["a", "g"]
    bounds = {"a": (0.0, 100.0), "g": (-3.0, 3.0)}
    N0 = 1e7

    def __init__(self, a: float = PAPER_A, g: float = 0.0, source: str | None = None):
        from coqat.law.base import check_param

        g = check_param(g, "params.g", *self.bounds["g"])
        super().__init__(a, source or f"closed form with a size term, a={float(a):g}, g={g:g}")
        self.params_ = {"a": self.params_["a"], "g": g}

    @property
    def g(self) -> float:
        return self.params_["g"]

    def predict_fraction(self, S_total: Any, N: Any = None) -> Any:
        if N is None:
            raise ConfigError("N", "the sized closed form needs N (parameters) besides S_total")
        from coqat.law.runs import finite_positive

        x = _checked_S(S_total) * (finite_positive(N, "N") / self.N0) ** self.g
        return _fraction(self.a, x)

    def _at(self, S: Any, N: Any) -> Any:
        return self.predict_fraction(S, N)

    def fit(self, S_total: Any, f_star: Any, loss: str = "mae", N: Any = None):
        """Fit (a, g) from (S_total, N, f*) triples by MAE (or least squares), Nelder-Mead from
        the paper's a and several g."""
        from scipy.optimize import minimize

        S, Nn, f = _triples(S_total, N, f_star, loss, min_n=2, form="the sized closed form")
        lo, hi = self.bounds["g"]

        def obj(p):
            if not lo <= p[1] <= hi or p[0] < 0:
                return 1e9
            r = SizedFractionClosedForm(p[0], p[1]).predict_fraction(S, Nn) - f
            return float(np.mean(np.abs(r)) if loss == "mae" else np.mean(r * r))

        starts = [np.array([PAPER_A, g]) for g in (0.0, -0.5, 0.5, 1.0)]
        best = min((minimize(obj, x0, method="Nelder-Mead") for x0 in starts),
                   key=lambda r: r.fun)
        self.params_ = {"a": float(best.x[0]), "g": float(best.x[1])}
        pred = self.predict_fraction(S, Nn)
        self.fit_report_ = {
            "converged": bool(best.success),
            "loss": loss,
            "n": int(S.size),
            "mae": float(np.mean(np.abs(pred - f))),
        }
        self.provenance = {
            "source": f"closed form with a size term fitted on {S.size} (S, N, f*) triples",
            "n_pairs": int(S.size),
            "fit_range": {
                "N": [float(Nn.min()), float(Nn.max())],
                "S_total": [float(S.min()), float(S.max())],
            },
        }
        return self

    def _fit_pairs(self, S: Any, N: Any, f: Any, loss: str) -> None:
        self.fit(S, f, loss=loss, N=N)

    def describe(self) -> str:
        return (
            f"SizedFractionClosedForm [closed-form-sized] a={self.a:.4f}, g={self.g:.4f} "
            f"(x = S_total (N/1e7)^g): {self.provenance.get('source')}"
        )

    def __repr__(self) -> str:
        return f"SizedFractionClosedForm(a={self.a}, g={self.g})"


class TokensPerBitClosedForm(SizedFractionClosedForm):
    """The closed form in tokens per bit: ``f = exp(-a / ln x)``, ``x = D / (bits k)``,
    k = N0/8 = 1.25e6 tokens per bit, clipped to [0, 1] (0 for x <= e). It is the sized form
    with g = 1 (``S_total N / N0 = 8 D / (bits N0)``): the model size drops out, so at a fixed
    token budget and width it predicts the same fraction for every N, where the paper's form
    predicts a fraction falling with N. One parameter, like the paper's. Predicts the fraction
    only."""

    name = "closed-form-tpb"
    param_names = ["a"]
    K = SizedFractionClosedForm.N0 / 8.0  # tokens per bit at which x = 1

    def __init__(self, a: float = PAPER_A, source: str | None = None):
        super().__init__(a, 1.0, source or f"closed form in tokens per bit D/B, a={a:g}")
        self.params_ = {"a": float(a)}

    @property
    def g(self) -> float:
        return 1.0

    def fit(self, S_total: Any, f_star: Any, loss: str = "mae", N: Any = None):
        """Fit ``a`` from (S_total, N, f*) triples (x = S_total N / N0) by MAE or least
        squares."""
        from scipy.optimize import minimize_scalar

        S, Nn, f = _triples(S_total, N, f_star, loss, min_n=1, form="the tokens-per-bit form")

        def obj(a):
            r = TokensPerBitClosedForm(a).predict_fraction(S, Nn) - f
            return np.mean(np.abs(r)) if loss == "mae" else np.mean(r * r)

        res = minimize_scalar(obj, bounds=self.bounds["a"], method="bounded",
                              options={"xatol": 1e-6})
        self.params_ = {"a": float(res.x)}
        pred = self.predict_fraction(S, Nn)
        self.fit_report_ = {
            "converged": bool(res.success),
            "loss": loss,
            "n": int(S.size),
            "mae": float(np.mean(np.abs(pred - f))),
        }
        D_over_B = S * Nn / 8.0
        self.provenance = {
            "source": f"closed form in tokens per bit fitted on {S.size} (S, N, f*) triples",
            "n_pairs": int(S.size),
            "fit_range": {
                "N": [float(Nn.min()), float(Nn.max())],
                "S_total": [float(S.min()), float(S.max())],
                "D_per_bit": [float(D_over_B.min()), float(D_over_B.max())],
            },
        }
        return self

    def describe(self) -> str:
        return (
            f"TokensPerBitClosedForm [closed-form-tpb] a={self.a:.4f} (x = D / (bits 1.25e6)): "
            f"{self.provenance.get('source')}"
        )

    def __repr__(self) -> str:
        return f"TokensPerBitClosedForm(a={self.a})"
