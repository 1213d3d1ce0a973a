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
import datetime as _dt
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coqat.errors import ConfigError
from coqat.law.runs import Runs, check_bits

LN2 = float(np.log(2.0))
FORMAT = "coqat-law/1"

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


class Law:
    """Base class. Subclasses set ``name``, ``_spec`` = [(param, is_log, lo, hi, init_lo, init_hi)]
    in natural units (for ``is_log`` params the bounds are on the coefficient itself)."""

    name: ClassVar[str] = "base"
    depends_on_fraction: ClassVar[bool] = True
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
        out: dict[str, Any] = {"value": value, "lo": None, "hi": None, "level": level, "n": 0}
        vals = []
        for lw in self.bootstrap_laws():
            try:
                v = np.asarray(fn(lw), float)
            except (ConfigError, ArithmeticError, ValueError):
                continue
            vals.append(v)
        if vals:
            V = np.stack(vals)
            q = 100 * (1 - level) / 2
            with np.errstate(all="ignore"):
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
        return _jsonable(d)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Law:
        if isinstance(d, str | Path):
            d = json.loads(Path(d).read_text())
        name = d.get("law")
        target = LAWS.get(name) if cls is Law else cls
        if target is None:
            raise ConfigError("law", f"unknown law {name!r}; known: {sorted(LAWS)}")
        if target.name != name:
            raise ConfigError("law", f"JSON holds a {name!r} law, not {target.name!r}")
        law = target()
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


def make_provenance(law: Law, runs: Runs, settings: dict[str, Any]) -> dict[str, Any]:
    from coqat import __version__

    return {
        "data_hash": runs.data_hash(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "coqat_version": __version__,
        "fit_settings": _jsonable(settings),
        "n_runs": len(runs),
        "fit_range": runs.ranges(),
    }


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


LAWS: dict[str, type[Law]] = {}


def register(cls: type[Law]) -> type[Law]:
    LAWS[cls.name] = cls
    return cls


def load_law(path_or_dict: Any) -> Any:
    """Load any law (loss law or the closed-form fraction rule) from a JSON file or dict."""
    d = path_or_dict
    if isinstance(d, str | Path):
        p = Path(d)
        if not p.is_file():
            raise ConfigError("law", f"file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError("law", f"{p}: invalid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ConfigError("law", f"not a coqat law file (expected format {FORMAT!r})")
    import coqat.law.laws  # noqa: F401  (registers the loss laws)
    from coqat.law.closed_form import FractionClosedForm, SizedFractionClosedForm

    for cls in (FractionClosedForm, SizedFractionClosedForm):
        if d.get("law") == cls.name:
            return cls.from_json(d)
    return Law.from_json(d)
