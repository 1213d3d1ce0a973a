"""Human-friendly numbers (``1e9``, ``30M``, ``2.2B``, ``1.4T``) and sizes (``8GB``, ``8GiB``),
for every layer (torch-free; ``coqat.plan.units`` re-exports it)."""

from __future__ import annotations

import math
import re
from typing import Any

from coqat.errors import ConfigError

_COUNT = {
    "": 1.0,
    "k": 1e3,
    "K": 1e3,
    "m": 1e6,
    "M": 1e6,
    "b": 1e9,
    "B": 1e9,
    "g": 1e9,
    "G": 1e9,
    "t": 1e12,
    "T": 1e12,
    "p": 1e15,
    "P": 1e15,
}
_BYTES = {
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2.0**10,
    "MIB": 2.0**20,
    "GIB": 2.0**30,
    "TIB": 2.0**40,
}
_NUM = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"


def parse_number(text: Any, field: str) -> float:
    """Parse ``1e9``, ``30M``, ``2.2B`` (billions), ``1.4T``, ``100k``; ``_`` separators allowed."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        v = float(text)
    else:
        s = str(text).strip().replace("_", "").replace(",", "")
        m = re.fullmatch(_NUM + r"\s*([kKmMbBgGtTpP]?)", s)
        if not m:
            raise ConfigError(
                field, f"cannot read {text!r} as a number; use e.g. 1e9, 30M, 2.2B, 1.4T"
            )
        v = float(m.group(1)) * _COUNT[m.group(2)]
    if not math.isfinite(v):
        raise ConfigError(field, f"must be finite, got {text!r}")
    return v


def parse_bytes(text: Any, field: str = "memory") -> float:
    """Parse a memory size: ``8GB`` (1e9), ``512MB``, ``8GiB`` (2^30), or a plain byte count."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().replace("_", "")
    m = re.fullmatch(_NUM + r"\s*([A-Za-z]*)", s)
    if not m:
        raise ConfigError(field, f"cannot read {text!r} as a size; use e.g. 8GB, 512MB, 8GiB")
    unit = m.group(2).upper()
    if unit in ("",):
        return float(m.group(1))
    if unit in _BYTES:
        return float(m.group(1)) * _BYTES[unit]
    raise ConfigError(
        field,
        f"unknown unit {m.group(2)!r}; allowed: KB MB GB TB KiB MiB GiB TiB "
        "(decimal vs binary) or a plain number of bytes",
    )


def fmt_count(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-" if v is None else str(v)
    for s, m in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= m:
            return f"{v / m:.3g}{s}"
    return f"{v:.3g}"
