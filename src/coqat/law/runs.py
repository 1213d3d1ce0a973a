"""The runs table: one row per training run, stored as a small column store of numpy arrays.

Required columns: ``N`` (total parameters), ``D_fp`` (FP tokens), ``D_qat`` (QAT tokens), ``bits``
(a width of :data:`coqat.bits.ALLOWED_BITS`; 16 or 32 for a full-precision baseline with
``D_qat = 0``) and
``loss`` (final validation loss in nats). Optional: ``cluster`` (id of the shared FP trunk,
bootstrap-resampled together; default: every run its own cluster) and ``heldout`` (bool).
Other columns are kept but ignored by the laws.

Derived: ``D = D_fp + D_qat``, ``f = D_qat / D``, ``S_x = D_x / (N * bits / 8)``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coqat.bits import ALLOWED_BITS as QUANT_BITS
from coqat.bits import FP_WIDTHS as FP_BITS
from coqat.errors import ConfigError

REQUIRED = ("N", "D_fp", "D_qat", "bits", "loss")
ALLOWED_BITS = QUANT_BITS + FP_BITS  # quantized widths (coqat.bits) and FP baselines


def check_bits(bits: Any, field: str = "bits") -> np.ndarray:
    """Validate bit widths (array-like); return float64 array. Unknown -> ConfigError."""
    b = np.asarray(bits, dtype=float)
    ok = np.zeros(b.shape, dtype=bool)
    for a in ALLOWED_BITS:
        ok |= np.isclose(b, a, atol=1e-6)
    if not ok.all():
        bad = float(np.atleast_1d(b[~ok])[0])
        raise ConfigError(
            field, f"unknown bit width {bad:g}; allowed: {[f'{a:g}' for a in ALLOWED_BITS]}"
        )
    return b


class Runs:
    """Column store over numpy arrays (``runs["N"]``, ``runs.f`` ...), validated on construction."""

    def __init__(self, columns: Mapping[str, Any], validate: bool = True):
        cols: dict[str, np.ndarray] = {}
        for k, v in columns.items():
            cols[str(k)] = np.asarray(v)
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise ConfigError(missing[0], f"missing column; required columns are {list(REQUIRED)}")
        n = len(cols["N"])
        for k, v in cols.items():
            if v.ndim != 1 or len(v) != n:
                raise ConfigError(k, f"column length {v.shape} does not match N ({n})")
        for c in REQUIRED:
            try:
                cols[c] = cols[c].astype(float)
            except (TypeError, ValueError):
                raise ConfigError(c, "column must be numeric") from None
        if "cluster" not in cols:
            cols["cluster"] = np.arange(n)
        if "heldout" not in cols:
            cols["heldout"] = np.zeros(n, dtype=bool)
        else:
            h = cols["heldout"]
            if h.dtype.kind in "OUS":
                h = np.array([str(x).strip().lower() in ("1", "true", "yes", "1.0") for x in h])
            cols["heldout"] = h.astype(bool)
        self._c = cols
        if validate:
            self._validate()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Runs:
        records = list(records)
        keys: list[str] = []
        for r in records:
            for k in r:
                if k not in keys:
                    keys.append(k)
        cols = {}
        for k in keys:
            vals = [r.get(k, None) for r in records]
            if k in REQUIRED:
                out = []
                for i, v in enumerate(vals):
                    try:
                        out.append(float("nan") if v is None or v == "" else float(v))
                    except (TypeError, ValueError):
                        raise ConfigError(k, f"row {i}: not a number: {v!r}") from None
                cols[k] = np.array(out, dtype=float)
            else:
                cols[k] = np.array(vals, dtype=object if any(v is None for v in vals) else None)
        if not records:
            cols = {c: np.zeros(0) for c in REQUIRED}
        return cls(cols)

    @classmethod
    def from_csv(cls, path: str | Path) -> Runs:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("runs", f"file not found: {p}")
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ConfigError("runs", f"{p}: no rows; required columns are {list(REQUIRED)}")
        return cls.from_records(rows)

    @classmethod
    def from_parquet(cls, path: str | Path) -> Runs:
        import pyarrow.parquet as pq

        p = Path(path)
        if not p.is_file():
            raise ConfigError("runs", f"file not found: {p}")
        try:
            table = pq.read_table(p)
        except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid and friends
            raise ConfigError("runs", f"{p}: not a readable parquet file: {e}") from None
        return cls(
            {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        )

    @classmethod
    def from_any(cls, path: str | Path) -> Runs:
        p = Path(path)
        suf = p.suffix.lower()
        if suf == ".csv":
            return cls.from_csv(p)
        if suf in (".parquet", ".pq"):
            return cls.from_parquet(p)
        if suf in (".json", ".jsonl"):
            return cls.from_records(_json_records(p))
        raise ConfigError("runs", f"{p}: unknown format {suf!r}; use .csv, .parquet, .json, .jsonl")

    # ---- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        c = self._c
        for name in REQUIRED:
            bad = ~np.isfinite(c[name])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ConfigError(name, f"row {i}: value {c[name][i]!r} is not finite")
        for name in ("N", "loss"):
            bad = c[name] <= 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ConfigError(name, f"row {i}: must be > 0, got {c[name][i]!r}")
        for name in ("D_fp", "D_qat"):
            bad = c[name] < 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ConfigError(name, f"row {i}: token count must be >= 0, got {c[name][i]!r}")
        bad = (c["D_fp"] + c["D_qat"]) <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError("D_fp", f"row {i}: D_fp + D_qat must be > 0")
        for i, b in enumerate(c["bits"]):
            try:
                check_bits(b)
            except ConfigError as e:
                raise ConfigError("bits", f"row {i}: {str(e).split(': ', 1)[1]}") from None
        bad = (c["bits"] >= 16) & (c["D_qat"] > 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                "D_qat", f"row {i}: a full-precision run (bits>=16) must have D_qat=0"
            )

    # ---- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._c["N"])

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._c:
            return self._c[key]
        if key in ("D", "f", "S_fp", "S_qat", "S_total", "S", "compute"):
            return getattr(self, key if key != "S" else "S_total")
        raise ConfigError(key, f"no such column; have {sorted(self._c)}")

    def __contains__(self, key: str) -> bool:
        return key in self._c

    @property
    def columns(self) -> list[str]:
        return list(self._c)

    @property
    def N(self) -> np.ndarray:
        return self._c["N"]

    @property
    def D_fp(self) -> np.ndarray:
        return self._c["D_fp"]

    @property
    def D_qat(self) -> np.ndarray:
        return self._c["D_qat"]

    @property
    def bits(self) -> np.ndarray:
        return self._c["bits"]

    @property
    def loss(self) -> np.ndarray:
        return self._c["loss"]

    @property
    def cluster(self) -> np.ndarray:
        return self._c["cluster"]

    @property
    def heldout(self) -> np.ndarray:
        return self._c["heldout"]

    @property
    def D(self) -> np.ndarray:
        return self.D_fp + self.D_qat

    @property
    def f(self) -> np.ndarray:
        return self.D_qat / self.D

    def _bytes(self) -> np.ndarray:
        return self.N * self.bits / 8.0

    @property
    def S_fp(self) -> np.ndarray:
        return self.D_fp / self._bytes()

    @property
    def S_qat(self) -> np.ndarray:
        return self.D_qat / self._bytes()

    @property
    def S_total(self) -> np.ndarray:
        return self.D / self._bytes()

    @property
    def compute(self) -> np.ndarray:
        """Training compute 6 N D (FLOPs)."""
        return 6.0 * self.N * self.D

    @property
    def is_fp(self) -> np.ndarray:
        return self.bits >= 16

    def mask(self, expr: str, field: str = "where") -> np.ndarray:
        """Boolean mask of the rows matching ``expr``: conditions ``column OP value`` joined by
        ``&``, OP one of ==, !=, >=, <=, >, <. Numeric values (``5e7``, ``30M``) compare as
        numbers (== and != with a relative tolerance), anything else as text, where an empty
        value matches empty cells: ``"schedule==fused & variant== & S_total>=40"``. Any column
        or derived quantity (D, f, S_total, S_fp, S_qat, compute). Errors name ``field``."""
        import operator
        import re

        from coqat.units import parse_number

        ops = {
            "==": np.isclose,
            "!=": lambda a, b: ~np.isclose(a, b),
            ">=": operator.ge,
            "<=": operator.le,
            ">": operator.gt,
            "<": operator.lt,
        }
        m = np.ones(len(self), bool)
        for part in str(expr).split("&"):
            mt = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*", part)
            if not mt:
                raise ConfigError(
                    field,
                    f"cannot parse {part.strip()!r}; use COLUMN OP VALUE "
                    f"with OP in {list(ops)}, joined by &",
                )
            col, op, val = mt.group(1), mt.group(2), mt.group(3).strip("'\"")
            try:
                x = self[col]
            except ConfigError:
                raise ConfigError(
                    field,
                    f"unknown column {col!r}; columns: {self.columns} and "
                    "D, f, S_total, S_fp, S_qat, compute",
                ) from None
            try:
                v = parse_number(val, field)
                xs = np.asarray(x, dtype=float)
            except (ConfigError, TypeError, ValueError):
                if op not in ("==", "!="):
                    raise ConfigError(field, f"{part.strip()!r}: {op} needs a number") from None
                xs = np.array(
                    [
                        "" if y is None or (isinstance(y, float) and np.isnan(y)) else str(y)
                        for y in x
                    ],
                    dtype=object,
                )
                m &= (xs == val) if op == "==" else (xs != val)
                continue
            m &= np.asarray(ops[op](xs, v), bool)
        return m

    def where(self, expr: str) -> Runs:
        """The rows matching ``expr`` (see :meth:`mask`)."""
        return self.filter(self.mask(expr))

    def filter(self, mask: Any) -> Runs:
        m = np.asarray(mask)
        if m.dtype != bool:
            idx = m.astype(int)
            return Runs({k: v[idx] for k, v in self._c.items()}, validate=False)
        if m.shape != (len(self),):
            raise ConfigError("mask", f"expected a boolean mask of length {len(self)}")
        return Runs({k: v[m] for k, v in self._c.items()}, validate=False)

    def data_hash(self, length: int = 16) -> str:
        """SHA-256 of the required columns and cluster ids (order-sensitive)."""
        h = hashlib.sha256()
        for c in REQUIRED:
            h.update(np.ascontiguousarray(self._c[c], dtype="<f8").tobytes())
        h.update(np.asarray([str(x) for x in self._c["cluster"]]).astype("U").tobytes())
        return h.hexdigest()[:length]

    def cluster_index(self) -> tuple[np.ndarray, int]:
        """Integer cluster index per run (0..n_clusters-1) and the number of clusters."""
        _, inv = np.unique(np.asarray([str(x) for x in self._c["cluster"]]), return_inverse=True)
        return inv.ravel(), int(inv.max()) + 1 if len(inv) else 0

    def ranges(self) -> dict[str, Any]:
        q = ~self.is_fp
        out: dict[str, Any] = {
            "N": [float(self.N.min()), float(self.N.max())],
            "D": [float(self.D.min()), float(self.D.max())],
            "bits": sorted({float(b) for b in self.bits}),
        }
        if q.any():
            s = self.S_total[q]
            out["S_total"] = [float(s.min()), float(s.max())]
        return out

    def to_records(self) -> list[dict[str, Any]]:
        out = []
        for i in range(len(self)):
            r = {}
            for k, v in self._c.items():
                x = v[i]
                r[k] = x.item() if hasattr(x, "item") else x
            out.append(r)
        return out

    def __repr__(self) -> str:
        return f"Runs(n={len(self)}, columns={self.columns})"


def _json_records(p: Path) -> list[dict[str, Any]]:
    """Rows of a runs table in JSON (a list of objects, or an object of equally long columns)
    or JSON Lines (one object a line); ConfigError naming the file otherwise."""
    import json

    if not p.is_file():
        raise ConfigError("runs", f"file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("runs", f"{p}: invalid JSON: {e}") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        n = {len(v) for v in data.values()}
        if len(n) != 1:
            raise ConfigError("runs", f"{p}: columns of unequal length {sorted(n)}")
        data = [dict(zip(data, row)) for row in zip(*data.values())]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(
            "runs",
            f"{p}: expected a list of runs (objects with {list(REQUIRED)}) or an object of "
            "columns",
        )
    if not data:
        raise ConfigError("runs", f"{p}: no rows; required columns are {list(REQUIRED)}")
    return data


def finite_positive(x: Any, field: str) -> np.ndarray:
    """Float array check used by the planner: finite and > 0, else ConfigError(field)."""
    a = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ConfigError(field, f"must be a finite number > 0, got {x!r}")
    return a


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False
