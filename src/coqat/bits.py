"""Bit widths: the one definition of what coqat quantizes to (torch-free, numpy-free).

* :data:`ALLOWED_BITS`: the weight bit widths QAT trains, exports and the laws accept
  (1.58 = ternary);
* :data:`FP_BITS`: the width of a full-precision run (``qat.bits = 16`` trains FP only);
* :data:`FP_WIDTHS`: widths a runs table may give a full-precision baseline (16 or 32).

``coqat.quant``, ``coqat.train.config``, ``coqat.sweep`` and ``coqat.law`` all import these.
"""

from __future__ import annotations

import math

from coqat.errors import ConfigError

ALLOWED_BITS: tuple[float, ...] = (1.0, 1.58, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
FP_BITS = 16.0
FP_WIDTHS: tuple[float, ...] = (16.0, 32.0)
_TOL = 1e-9


def format_bits(bits: float) -> str:
    """``4.0 -> "4"``, ``1.58 -> "1.58"``."""
    return str(int(bits)) if float(bits).is_integer() else f"{bits:g}"


def allowed_str(fp: bool = False) -> str:
    """``[1, 1.58, 2, ...]`` (with ``fp``: ``... or 16 (FP)``) for error messages."""
    s = "[" + ", ".join(format_bits(b) for b in ALLOWED_BITS) + "]"
    return s + " or 16 (FP)" if fp else s


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        b = float(value)
    elif isinstance(value, str):
        try:
            b = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return b if math.isfinite(b) else None


def parse_bits(value: object, field: str = "quant.bits", *, fp: bool = False) -> float:
    """Canonical float of an allowed bit width (``fp``: 16 too), else ConfigError naming
    ``field`` and the allowed values."""
    b = _as_float(value)
    if b is not None:
        for a in ALLOWED_BITS + ((FP_BITS,) if fp else ()):
            if abs(b - a) < _TOL:
                return a
    raise ConfigError(
        field, f"{value!r} is not a supported bit width; allowed: {allowed_str(fp=fp)}"
    )


def is_allowed(value: object, *, fp: bool = False) -> bool:
    """Whether ``value`` is an allowed bit width (``fp``: or 16)."""
    try:
        parse_bits(value, fp=fp)
    except ConfigError:
        return False
    return True
