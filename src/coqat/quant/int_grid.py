"""Lossless re-encoding of ParetoQ codes onto compressed-tensors' symmetric integer grid.

compressed-tensors (and vLLM) dequantize a symmetric int weight as ``w = s * q`` with
``q`` in ``[-2^(n-1), 2^(n-1) - 1]``. coqat's grids write ``w = a * (r + d) / k``
(see :mod:`coqat.quant.quantizers`). Every coqat grid maps onto ``s * q`` exactly with an integer
code ``q = m * (r + d)`` and a scale ``s = a * level(q = 1)``:

=========  ==========================  ============  ==============  =================
bits       coqat level                 code q        scale s         int width (min)
=========  ==========================  ============  ==============  =================
1 (sign)   ``(r + 1/2) / (1/2) = +-1``  ``2r + 1``    ``a``           2 (codes +-1)
1.58 (SEQ) ``r / 1.5``                 ``r``         ``a / 1.5``     2
2 (SEQ)    ``(r + 1/2) / 2``           ``2r + 1``    ``a / 4``       3 (codes +-1, +-3)
3-8 (LSQ)  ``r``                       ``r``         ``a``           b
=========  ==========================  ============  ==============  =================

The scale is computed with the quantizer's own level expression (``a * level``), so ``s * q``
equals the fake-quantized weight bit for bit: for q = +-1 it is the same operation, and for the
2-bit SEQ's q = +-3, ``(a/4) * 3`` and ``a * 0.75`` are both one rounding of the same real number
(``a / 4`` is exact). :func:`reencode` checks the equality on every export anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coqat.errors import ConfigError
from coqat.quant.config import format_bits
from coqat.quant.quantizers import WeightQuantizer


@dataclass(frozen=True)
class IntEncoding:
    """How one coqat grid is written on the standard int grid: ``q = mult * (r + d)``."""

    bits: float  # coqat's bit width
    grid: str
    mult: int  # q = mult * (r + d), an integer for every code r
    min_bits: int  # smallest symmetric int width that holds every q
    code: str  # the code map, in words
    scale: str  # the scale map, in words

    def row(self) -> dict[str, object]:
        return {
            "bits": format_bits(self.bits),
            "grid": self.grid,
            "code": self.code,
            "scale": self.scale,
            "min_int_bits": self.min_bits,
        }


def encoding(q: WeightQuantizer) -> IntEncoding:
    """The standard-int encoding of quantizer ``q``'s grid."""
    if q.d == 0.0:
        mult, code = 1, "q = r"
    elif q.d == 0.5:
        mult, code = 2, "q = 2r + 1"
    else:  # pragma: no cover - every coqat grid has d in {0, 1/2}
        raise ConfigError("export", f"no integer encoding for level (r + {q.d}) / {q.k}")
    lo, hi = q.code_range
    q_lo, q_hi = int(mult * (lo + q.d)), int(mult * (hi + q.d))
    min_bits = max(2, max(q_hi, -q_lo - 1).bit_length() + 1)  # int1 has no +1: use int2
    unit = 1.0 / (q.k * mult)
    scale = "alpha" if unit == 1.0 else f"alpha / {1 / unit:g}"
    return IntEncoding(q.bits, q.grid, mult, min_bits, code, scale)


def reencode(
    q: WeightQuantizer, w: torch.Tensor, num_bits: int | None = None, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(codes, scale, num_bits)`` on the standard int grid for weight ``w`` under ``q``.

    ``codes`` are int8 ``[out, in]`` in ``[-2^(n-1), 2^(n-1) - 1]``, ``scale`` is ``[out, G]``
    in the quantizer's dtype; ``codes * scale`` (per group, in the scale's dtype, as
    compressed-tensors dequantizes) equals ``q(w)`` exactly, else ConfigError naming the layer.
    ``num_bits`` defaults to the smallest width that holds the codes; a wider one (<= 8) is
    allowed (e.g. 4 for vLLM's int4 kernels).
    """
    enc = encoding(q)
    n = enc.min_bits if num_bits is None else int(num_bits)
    if not enc.min_bits <= n <= 8:
        raise ConfigError(
            "export.pack_bits",
            f"{format_bits(q.bits)}-bit {q.grid} codes need {enc.min_bits} to 8 bits, got {n}",
        )
    with torch.no_grad():
        r = q.codes(w).to(torch.int64)
        codes = (enc.mult * r + int(enc.mult * q.d)).to(torch.int8)
        one = torch.ones((), dtype=q.alpha.dtype) / enc.mult - q.d  # the r with q = 1
        scale = (q.scale() * q._level(one)).contiguous()
        out_f, in_f = q.weight_shape
        deq = codes.reshape(out_f, q.n_groups, q.group_size).to(scale.dtype) * scale.unsqueeze(-1)
        if not torch.equal(deq.reshape(out_f, in_f), q(w.detach())):
            raise ConfigError(
                "export", f"layer {name or q.extra_repr()}: int{n} re-encoding is not lossless"
            )
    return codes, scale, n
