"""ParetoQ weight quantizers as fusible fake-quant modules (straight-through estimator).

Each quantizer owns a trainable scale ``alpha`` of shape ``[out, G]``: ``G = 1`` for per-row
scales (ParetoQ's ``[out, 1]``) and ``G = in / group_size`` for per-group scales, where group
``j`` of row ``i`` covers inputs ``j*group_size .. (j+1)*group_size - 1``. The forward works on
the weight viewed as ``[out, G, group_size]`` and uses ``a = max(alpha, 1e-5)``.

Every grid is written as an integer code ``r`` and a level ``(r + d) / k``; the forward value is
``a * level(r)``, and :meth:`WeightQuantizer.dequantize` evaluates the very same expression from
stored codes, so ``dequantize(codes(w))`` equals ``forward(w)`` bit for bit.

* 1 bit, sign: r = -1 (w < 0) or 0 (w >= 0); k = d = 1/2 (levels +-1); init mean|w|; grad Qp 1
* 1.58, SEQ: r = round(clamp(x, +-0.99) * 1.5); k = 1.5, d = 0; init max|w|; grad Qp 1
* 2 bits, SEQ: r = round(clamp(x, +-0.99) * 2 - 0.5); k = 2, d = 0.5; init max|w|; grad Qp 1
* 3..8 bits, LSQ: r = clamp(round(x), -2^(b-1), 2^(b-1)-1); k = 1, d = 0; init max|w|/Qp;
  grad Qp = 2^(b-1)-1

with ``x = w / a``. Gradients equal ParetoQ's hand-written backward
(``LsqBinaryTernaryExtension`` / ``StretchedElasticQuant`` in ParetoQ's ``models/utils_quant.py``)
but are produced by autograd through zero-valued "carrier" terms, so dynamo/inductor trace and
fuse them (no autograd.Function, no ``.item()``, no masked writes):

* ``grad_w = g * inside`` with ``inside`` = [lo <= x <= hi] (sign: [-1, 1]; SEQ: [-0.99, 0.99];
  LSQ: [Qn, Qp]);
* ``grad_alpha = s * sum_group(g * coef)`` with ``coef`` = ``level - x`` inside, the low / high
  constant outside (sign: ``sign(w)`` everywhere; SEQ: -+(k-d)/k; LSQ: Qn / Qp), and
  ``s = 1 / sqrt(numel * Qp)`` where ``numel`` is the whole weight matrix (also for per-group
  scales) and ``Qp`` the column "grad Qp" above. As in ParetoQ the gradient reaches ``alpha``
  even where the 1e-5 clamp is active.

Deviation from ParetoQ: ParetoQ's 1-bit forward is ``torch.sign(w)``, which maps an exactly-zero
weight to 0 (a third level a 1-bit format cannot store). We map ``w == 0`` to ``+alpha`` (and its
``coef`` to +1). Only exactly-zero float weights are affected.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coqat.errors import ConfigError
from coqat.quant.config import format_bits, parse_bits, storage_bits

EPS = 1e-5  # ParetoQ's lower clamp on alpha
SEQ_CLIP = 1.0 - 1e-2  # ParetoQ's clip_val for SEQ


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _groups(in_features: int, granularity: str, group_size: int, name: str = "") -> int:
    if granularity == "row":
        return 1
    if granularity != "group":
        raise ConfigError(
            "quant.granularity", f"{granularity!r} is not allowed; choose one of ['row', 'group']"
        )
    if group_size <= 0 or in_features % group_size:
        where = f" of layer {name}" if name else ""
        raise ConfigError(
            "quant.group_size",
            f"must divide in_features={in_features}{where} (got {group_size}); allowed "
            f"divisors: {divisors(in_features)}",
        )
    return in_features // group_size


class WeightQuantizer(nn.Module):
    """Base class: fake-quantizes a 2-D weight ``[out, in]`` with a learned scale ``alpha``."""

    grid: str = ""
    k: float = 1.0  # level(r) = (r + d) / k
    d: float = 0.0
    grad_qp: float = 1.0  # Qp in ParetoQ's grad_scale = 1/sqrt(numel*Qp)
    coef_level_minus_x: bool = True  # alpha coefficient inside the clip is (level - x)

    def __init__(
        self,
        bits: float,
        weight_shape: tuple[int, int] | torch.Size,
        granularity: str = "row",
        group_size: int = 128,
        *,
        name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if len(weight_shape) != 2:
            raise ConfigError("quant", f"expected a 2-D weight shape, got {tuple(weight_shape)}")
        self.bits = parse_bits(bits)
        self.storage_bits = storage_bits(self.bits)
        out_f, in_f = (int(s) for s in weight_shape)
        self.weight_shape = (out_f, in_f)
        self.granularity = granularity
        self.n_groups = _groups(in_f, granularity, group_size, name)
        self.group_size = in_f // self.n_groups
        self.grad_scale = 1.0 / math.sqrt(out_f * in_f * self.grad_qp)
        self.alpha = nn.Parameter(torch.ones(out_f, self.n_groups, device=device, dtype=dtype))

    # -- the grid (subclasses) ------------------------------------------------------------------
    def _round(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer-valued codes r (floats), the STE mask ``inside`` and ParetoQ's alpha
        coefficient outside the clip range (inside, the forward uses ``level - x`` when
        ``coef_level_minus_x``)."""
        raise NotImplementedError

    def _init_scale(self, wg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def code_range(self) -> tuple[int, int]:
        raise NotImplementedError

    def _level(self, r: torch.Tensor) -> torch.Tensor:
        """Real level (units of alpha) of integer-valued codes r; shared by forward/dequantize."""
        if self.k == 1.0 and self.d == 0.0:
            return r
        return (r + self.d) / self.k

    # -- public -----------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """The scale the forward uses, ``max(alpha, 1e-5)``, detached, shape ``[out, G]``."""
        return self.alpha.detach().clamp_min(EPS)

    def levels(self) -> list[float]:
        """Real-valued levels in units of alpha, ascending."""
        lo, hi = self.code_range
        return [(r + self.d) / self.k for r in range(lo, hi + 1)]

    @torch.no_grad()
    def initialize(self, w: torch.Tensor) -> None:
        """Set alpha from weight ``w`` (ParetoQ's initialisation, per row or group)."""
        wg = w.detach().float().reshape(self.weight_shape[0], self.n_groups, self.group_size)
        self.alpha.copy_(self._init_scale(wg).to(self.alpha.dtype))

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        if tuple(w.shape) != self.weight_shape:
            raise ConfigError(
                "quant", f"weight shape {tuple(w.shape)} != quantizer shape {self.weight_shape}"
            )
        return w.reshape(self.weight_shape[0], self.n_groups, self.group_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wg = self._grouped(w)
        a = self.scale().unsqueeze(-1)
        x = wg.detach() / a
        r, inside, coef = self._round(x)
        q = self._level(r)
        y = a * q  # the value; everything below adds exact zeros that carry gradients
        if self.coef_level_minus_x:
            coef = torch.where(inside, q - x, coef)
        y = y + torch.where(inside, wg - wg.detach(), 0.0)  # grad_w = g * inside
        sa = self.alpha * self.grad_scale
        y = y + (sa - sa.detach()).unsqueeze(-1) * coef  # grad_alpha = s * sum(g * coef)
        return y.reshape(w.shape)

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes ``r`` (int8, shape of ``w``); ``dequantize(codes(w)) == forward(w)``."""
        wg = self._grouped(w)
        r, _, _ = self._round(wg / self.scale().unsqueeze(-1))
        return r.to(torch.int8).reshape(w.shape)

    @torch.no_grad()
    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weight from codes: ``scale * (r + d) / k``, same ops as forward."""
        r = self._grouped(codes).to(self.alpha.dtype)
        return (self.scale().unsqueeze(-1) * self._level(r)).reshape(codes.shape)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return f"grid={self.grid}, bits={format_bits(self.bits)}, shape={self.weight_shape}{g}"


class SignQuantizer(WeightQuantizer):
    """1 bit: ``alpha * sign(w)`` (sign(0) = +1), init ``alpha = mean|w|``."""

    grid = "sign"
    k, d = 0.5, 0.5  # r in {-1, 0} -> {-1, +1}
    coef_level_minus_x = False

    @property
    def code_range(self) -> tuple[int, int]:
        return (-1, 0)

    def _round(self, x):
        r = torch.where(x >= 0, 0.0, -1.0).to(x.dtype)
        inside = (x >= -1.0) & (x <= 1.0)
        return r, inside, self._level(r)  # sign(w): ParetoQ's alpha coefficient everywhere

    def _init_scale(self, wg):
        return wg.abs().mean(dim=-1)


class SEQQuantizer(WeightQuantizer):
    """Stretched elastic quant (ParetoQ): ternary (1.58: k=1.5, d=0) or 2 bits (k=2, d=0.5)."""

    grid = "seq"

    def __init__(self, bits, weight_shape, granularity="row", group_size=128, **kw):
        b = parse_bits(bits)
        if b not in (1.58, 2.0):
            raise ConfigError("quant.bits", f"SEQ supports 1.58 and 2 bits, got {bits!r}")
        self.k, self.d = (1.5, 0.0) if b == 1.58 else (2.0, 0.5)
        super().__init__(b, weight_shape, granularity, group_size, **kw)
        self.qp = (self.k - self.d) / self.k  # alpha coefficient outside the clip (1 / 0.75)

    @property
    def code_range(self) -> tuple[int, int]:
        return (-1, 1) if self.bits == 1.58 else (-2, 1)

    def _round(self, x):
        c = SEQ_CLIP
        r = torch.round(torch.clamp(x, -c, c) * self.k - self.d)
        inside = (x >= -c) & (x <= c)
        coef = torch.where(x < -c, -self.qp, self.qp).to(x.dtype)
        return r, inside, coef

    def _init_scale(self, wg):
        return wg.abs().amax(dim=-1)


class LSQQuantizer(WeightQuantizer):
    """Learned step size (ParetoQ's 3/4 bits, extended to 5-8): ``alpha * clamp(round(x))``."""

    grid = "lsq"

    def __init__(self, bits, weight_shape, granularity="row", group_size=128, **kw):
        b = parse_bits(bits)
        if b < 3:
            raise ConfigError("quant.bits", f"LSQ supports 3..8 bits, got {bits!r}")
        self.qn = -(2 ** (int(b) - 1))
        self.qp = 2 ** (int(b) - 1) - 1
        self.grad_qp = float(self.qp)
        super().__init__(b, weight_shape, granularity, group_size, **kw)

    @property
    def code_range(self) -> tuple[int, int]:
        return (self.qn, self.qp)

    def _round(self, x):
        r = torch.clamp(torch.round(x), self.qn, self.qp)
        inside = (x >= self.qn) & (x <= self.qp)
        coef = torch.where(x < self.qn, float(self.qn), float(self.qp)).to(x.dtype)
        return r, inside, coef

    def _init_scale(self, wg):
        return wg.abs().amax(dim=-1) / self.qp


def make_quantizer(
    bits: float,
    weight_shape: tuple[int, int] | torch.Size,
    granularity: str = "row",
    group_size: int = 128,
    *,
    name: str = "",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> WeightQuantizer:
    """The ParetoQ quantizer for ``bits`` (alpha = 1 until :meth:`~WeightQuantizer.initialize`)."""
    b = parse_bits(bits)
    cls = SignQuantizer if b == 1.0 else SEQQuantizer if b in (1.58, 2.0) else LSQQuantizer
    return cls(b, weight_shape, granularity, group_size, name=name, device=device, dtype=dtype)


class MinMaxRTN:
    """Post-training round-to-nearest with symmetric min-max scales (no data, no training).

    The scale is exactly the QAT initialisation, so RTN == the fake quantizer at init:
    >= 3 bits: ``alpha = max|w| / Qp`` on the LSQ grid (``clamp(round(w/alpha))``);
    1.58/2 bits: ``alpha = max|w|`` on the SEQ grid (the 0.99 clip maps the max to the top level);
    1 bit: ``sign(w) * mean|w|`` (the L2-optimal binary scale). Per row or per group.
    """

    def __init__(self, bits: float, granularity: str = "row", group_size: int = 128):
        self.bits = parse_bits(bits)
        self.granularity = granularity
        self.group_size = group_size

    @torch.no_grad()
    def quantizer(self, w: torch.Tensor, name: str = "") -> WeightQuantizer:
        q = make_quantizer(
            self.bits, w.shape, self.granularity, self.group_size, name=name,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        q.initialize(w)
        return q

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantizer(w)(w)


def ptq_quantize(
    w: torch.Tensor, bits: float, granularity: str = "row", group_size: int = 128
) -> torch.Tensor:
    """RTN min-max quantized copy of ``w`` (see :class:`MinMaxRTN`)."""
    return MinMaxRTN(bits, granularity, group_size)(w)
