"""Estimator base class shared by all loss laws (numpy only; scipy is imported lazily by fit).

A law predicts the final validation loss ``L(N, D_fp, D_qat, bits)``. Internally every law is a
sum of positive terms in log-sum-exp form, ``log L = LSE_k T_k(x; features)``, where ``x`` is
the internal parameter vector (log of every coefficient, raw exponents). ``params_`` holds the
natural parameters (coefficients exponentiated). Subclasses define ``_spec`` and ``_terms`` /
``_dterms`` (analytic derivatives of each log-term), from which the base class derives predictions
and the analytic gradient of ``log L`` used by the fitter.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coqat.errors import ConfigError
from coqat.law.features import LN2, S_SHIFT, features, runs_features
from coqat.law.record import FORMAT, jsonable, make_provenance
from coqat.law.runs import Runs

# re-exported: the features, the file format and provenance live in their own modules, below
# this one (coqat.law.fit and coqat.law.bootstrap use them without importing the Law class)
__all__ = ["FORMAT", "LN2", "S_SHIFT", "Law", "features", "jsonable", "make_provenance",
           "runs_features"]

class Law:
    """Base class. Subclasses set ``name``, ``_spec`` = [(param, is_log, lo, hi, init_lo, init_hi)]
    in natural units (for ``is_log`` params the bounds are on the coefficient itself)."""

    name: ClassVar[str] = "base"
    depends_on_fraction: ClassVar[bool] = True
    #: ``_terms`` broadcasts parameter vectors of shape ``(S, 1)`` against ``(S, m)`` features
    batched: ClassVar[bool] = True
    _spec: list[tuple[str, bool, float, float, float, float]] = []

    def __init__(self, params: dict[str, float] | None = None):
        self.params_: dict[str, float] | None = None
        self.fit_report_: dict[str, Any] | None = None
        self.provenance: dict[str, Any] = {}
        self.bootstrap_: np.ndarray | None = None  # (n_boot, n_params), internal x vectors
        self.bootstrap_info_: dict[str, Any] = {}
        if params is not None:
            self.set_params(params)

    # ---- parameter plumbing ---------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        return [s[0] for s in self._spec]

    @property
    def n_params(self) -> int:
        return len(self._spec)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {s[0]: (s[2], s[3]) for s in self._spec}

    def _x_bounds(self) -> list[tuple[float, float]]:
        return [(np.log(lo), np.log(hi)) if lg else (lo, hi) for _, lg, lo, hi, _, _ in self._spec]

    def _x_init_box(self) -> tuple[np.ndarray, np.ndarray]:
        lo = [np.log(a) if lg else a for _, lg, _, _, a, _ in self._spec]
        hi = [np.log(b) if lg else b for _, lg, _, _, _, b in self._spec]
        return np.array(lo), np.array(hi)

    def _to_x(self, params: dict[str, float]) -> np.ndarray:
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ConfigError(
                f"params.{missing[0]}", f"missing parameter; {self.name} needs {self.param_names}"
            )
        return np.array([np.log(params[n]) if lg else float(params[n]) for n, lg, *_ in self._spec])

    def _from_x(self, x: np.ndarray) -> dict[str, float]:
        return {n: float(np.exp(v) if lg else v) for (n, lg, *_), v in zip(self._spec, x)}

    def set_params(self, params: dict[str, float]) -> Law:
        """Set the natural parameters; ConfigError naming ``params.<name>`` when one is missing,
        not a finite number, or (a coefficient) not > 0."""
        if not isinstance(params, dict):
            raise ConfigError("params", f"expected an object of {self.param_names}, got {params!r}")
        self._to_x({n: 1.0 for n in params})  # presence
        checked = {}
        for n, lg, *_ in self._spec:
            checked[n] = check_param(params[n], f"params.{n}", positive=lg)
        self.params_ = checked
        return self

    @property
    def x_(self) -> np.ndarray:
        if self.params_ is None:
            raise ConfigError(
                "law", f"{self.name} law has no parameters: fit it or load a fitted law"
            )
        return self._to_x(self.params_)

    def with_x(self, x: np.ndarray) -> Law:
        new = copy.copy(self)
        new.params_ = self._from_x(np.asarray(x, float))
        new.bootstrap_ = None
        return new

    def with_params(self, params: dict[str, float]) -> Law:
        return self.with_x(self._to_x({**(self.params_ or {}), **params}))

    # ---- model ----------------------------------------------------------------------------------
    def _terms(self, x: np.ndarray, F: dict[str, Any]) -> np.ndarray:  # (k, n) log-terms
        raise NotImplementedError

    def _dterms(self, x: np.ndarray, F: dict[str, Any]) -> list[tuple[int, Any]]:
        """For every parameter j: (index of the single log-term it enters, d term / d x_j)."""
        raise NotImplementedError

    def _logpred(self, x: np.ndarray, F: dict[str, Any]) -> np.ndarray:
        T = self._terms(x, F)
        m = T.max(axis=0)
        return m + np.log(np.exp(T - m).sum(axis=0))

    def _logpred_grad(self, x: np.ndarray, F: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        T = self._terms(x, F)
        m = T.max(axis=0)
        E = np.exp(T - m)
        s = E.sum(axis=0)
        logL = m + np.log(s)
        W = E / s
        G = np.empty((F["n"], len(x)))
        for j, (k, d) in enumerate(self._dterms(x, F)):
            G[:, j] = W[k] * d
        return logL, G

    def predict(self, N: Any, D_fp: Any, D_qat: Any, bits: Any) -> Any:
        """Predicted loss (nats); numpy broadcasting over the four inputs."""
        F = features(N, D_fp, D_qat, bits)
        self._check_predictable(F)
        out = np.exp(self._logpred(self.x_, F)).reshape(F["shape"])
        return float(out) if out.ndim == 0 else out

    def _check_predictable(self, F: dict[str, Any]) -> None:
        pass

    def predict_samples(self, X: Any, N: Any, D_fp: Any, D_qat: Any, bits: Any) -> np.ndarray:
        """Predicted loss under many parameter vectors at once (e.g. the point estimate and its
        bootstrap samples): ``X`` is ``(S, n_params)`` internal vectors (as ``bootstrap_``); the
        inputs broadcast to ``(m,)`` (every vector at the same points) or ``(S, m)`` (row ``s``
        at its own points). Returns ``(S, m)``; equals ``with_x(X[s]).predict(...)`` row by row.
        """
        X = np.atleast_2d(np.asarray(X, float))
        S = X.shape[0]
        arrs = np.broadcast_arrays(*(np.asarray(a, float) for a in (N, D_fp, D_qat, bits)))
        if arrs[0].ndim > 2 or (arrs[0].ndim == 2 and arrs[0].shape[0] not in (1, S)):
            raise ValueError(f"inputs must broadcast to (m,) or ({S}, m), got {arrs[0].shape}")
        rows = [np.atleast_2d(a) for a in arrs]  # () and (m,) become (1, m)
        shape = (S, rows[0].shape[1])
        full = [np.broadcast_to(a, shape) for a in rows]
        F = features(*full)
        self._check_predictable(F)
        if not self.batched:  # terms index parameters per group: one vector at a time
            one = [self.with_x(x).predict(*(a[s] for a in full)) for s, x in enumerate(X)]
            return np.stack(one)
        F = {k: v.reshape(shape) if isinstance(v, np.ndarray) and v.shape == (F["n"],) else v
             for k, v in F.items()}
        F["n"] = shape
        return np.exp(self._logpred(X.T[:, :, None], F))

    def samples_x(self, with_bootstrap: bool = True) -> np.ndarray:
        """``(1 + n_boot, n_params)``: the point estimate, then the bootstrap samples (if any and
        ``with_bootstrap``), for :meth:`predict_samples`."""
        x = self.x_[None, :]
        if with_bootstrap and self.bootstrap_ is not None:
            return np.concatenate([x, np.asarray(self.bootstrap_, float)])
        return x

    def predict_runs(self, runs: Runs) -> np.ndarray:
        return self.predict(runs.N, runs.D_fp, runs.D_qat, runs.bits)

    def loss_at_fraction(self, N: float, D: float, bits: float, f: Any) -> Any:
        f = np.clip(np.asarray(f, float), 0.0, 1.0)
        return self.predict(N, (1.0 - f) * D, f * D, bits)

    # ---- fitting --------------------------------------------------------------------------------
    def _prepare(self, runs: Runs) -> None:
        """Hook: adapt the parameter spec to the data before fitting (e.g. per-bit groups)."""

    def _stage_starts(self, ctx: Any) -> list[np.ndarray]:
        """Hook: law-specific good starting points (may run sub-fits through ``ctx``)."""
        return []

    def fit(self, runs: Runs, **settings: Any) -> Law:
        from coqat.law.fit import fit_law

        return fit_law(self, runs, **settings)

    def bootstrap(self, runs: Runs, n_boot: int = 200, **settings: Any) -> Law:
        from coqat.law.bootstrap import bootstrap

        return bootstrap(self, runs, n_boot=n_boot, **settings)

    @property
    def converged(self) -> bool:
        return bool(self.fit_report_ and self.fit_report_.get("converged"))

    # ---- uncertainty ----------------------------------------------------------------------------
    def bootstrap_laws(self) -> list[Law]:
        if self.bootstrap_ is None:
            return []
        return [self.with_x(x) for x in self.bootstrap_]

    def ci(self, fn: Any, level: float = 0.9) -> dict[str, Any]:
        """Percentile CI of any derived quantity ``fn(law)`` over the bootstrap parameter sets.

        Returns ``{"value": fn(self), "lo", "hi", "level", "n"}`` (arrays if fn returns arrays);
        lo/hi are None without bootstrap samples. Samples where fn fails or is NaN are dropped.
        """
        if not 0 < level < 1:
            raise ConfigError("level", f"must be in (0, 1), got {level!r}")
        value = fn(self)
        vals = []
        for lw in self.bootstrap_laws():
            try:
                v = np.asarray(fn(lw), float)
            except (ConfigError, ArithmeticError, ValueError):
                continue
            vals.append(v)
        return percentile_ci(value, np.stack(vals) if vals else None, level)

    def param_cis(self, level: float = 0.9) -> dict[str, list[float]]:
        if self.bootstrap_ is None:
            return {}
        P = np.array([[v for v in self._from_x(x).values()] for x in self.bootstrap_])
        q = 100 * (1 - level) / 2
        lo, hi = np.percentile(P, [q, 100 - q], axis=0)
        return {n: [float(a), float(b)] for n, a, b in zip(self.param_names, lo, hi)}

    # ---- serialisation --------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, extra: dict[str, Any]) -> None:
        pass

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "law": self.name,
            "class": type(self).__name__,
            "param_names": self.param_names,
            "params": self.params_,
            "extra": self._extra(),
            "provenance": self.provenance,
            "fit_report": self.fit_report_,
        }
        if self.bootstrap_ is not None:
            level = self.bootstrap_info_.get("level", 0.9)
            d["bootstrap"] = {
                **self.bootstrap_info_,
                "param_ci": self.param_cis(level),
                "samples": [list(self._from_x(x).values()) for x in self.bootstrap_],
            }
        return jsonable(d)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Law:
        """A law of this class from its JSON (``coqat.law.load_law`` picks the class by name)."""
        if cls is Law:
            raise TypeError("Law.from_json: call it on a law class, or use coqat.law.load_law")
        if isinstance(d, str | Path):
            d = json.loads(Path(d).read_text())
        name = d.get("law")
        if cls.name != name:
            raise ConfigError("law", f"JSON holds a {name!r} law, not {cls.name!r}")
        law = cls()
        law._load_extra(d.get("extra") or {})
        if d.get("params") is not None:
            law.set_params(d["params"])
        law.provenance = dict(d.get("provenance") or {})
        law.fit_report_ = d.get("fit_report")
        b = d.get("bootstrap")
        if isinstance(b, dict) and b.get("samples"):
            try:
                law.bootstrap_ = np.array(
                    [law._to_x(dict(zip(law.param_names, s))) for s in b["samples"]]
                )
            except (TypeError, ValueError) as e:
                raise ConfigError("bootstrap.samples", f"not a table of numbers ({e})") from None
            if not np.all(np.isfinite(law.bootstrap_)):
                raise ConfigError("bootstrap.samples", "holds values that are not finite")
            law.bootstrap_info_ = {k: v for k, v in b.items() if k not in ("samples", "param_ci")}
        return law

    def save(self, path: str | Path) -> Path:
        from coqat.config import atomic_write_text

        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_json(), indent=2) + "\n")
        return p

    def describe(self) -> str:
        pv = self.provenance or {}
        if pv.get("source"):
            src = pv["source"]
        elif pv.get("n_runs"):
            src = (
                f"fitted on {pv.get('n_runs')} runs (data {pv.get('data_hash')}, "
                f"{pv.get('date')}, coqat {pv.get('coqat_version')})"
            )
        else:
            src = "parameters set by hand (no provenance)"
        return f"{type(self).__name__} [{self.name}]: {src}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(params={self.params_})"


def percentile_ci(value: Any, V: np.ndarray | None, level: float) -> dict[str, Any]:
    """``{"value", "lo", "hi", "level", "n"}`` from samples ``V`` (one per row; NaN entries are
    ignored column by column; ``n`` counts the all-finite rows); lo/hi are None without samples."""
    out: dict[str, Any] = {"value": value, "lo": None, "hi": None, "level": level, "n": 0}
    if V is None or len(V) == 0:
        return out
    V = np.asarray(V, float)
    q = 100 * (1 - level) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: its interval is NaN
        lo, hi = np.nanpercentile(V, [q, 100 - q], axis=0)
        # between two infinite samples (e.g. "never reaches that loss": inf tokens) the
        # interpolation gives inf - inf = NaN; the nearest sample is the answer there
        near = np.nanpercentile(V, [q, 100 - q], axis=0, method="nearest")
    lo, hi = np.where(np.isnan(lo), near[0], lo), np.where(np.isnan(hi), near[1], hi)
    out.update(
        lo=lo.item() if lo.ndim == 0 else lo,
        hi=hi.item() if hi.ndim == 0 else hi,
        n=int(np.isfinite(V).all(axis=tuple(range(1, V.ndim))).sum()),
    )
    return out


def check_param(
    value: Any, field: str, lo: float | None = None, hi: float | None = None, positive: bool = False
) -> float:
    """``value`` as a finite float (within [lo, hi], > 0 when ``positive``), else ConfigError
    naming ``field``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
        if not isinstance(value, str) or value.strip().lower() != "nan":
            raise ConfigError(field, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(v):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if positive and v <= 0:
        raise ConfigError(field, f"must be > 0 (a coefficient), got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(field, f"must be in [{lo:g}, {hi:g}], got {v!r}")
    return v
