"""Quantization config (torch-free: the sweep planner imports it without torch).

``QuantConfig`` says how QAT quantizes a model:

* ``bits`` in :data:`ALLOWED_BITS` (1.58 = ternary) for every block ``Linear``;
* ``granularity`` ``"row"`` (one scale per output row, ParetoQ) or ``"group"`` (one scale per
  ``group_size`` consecutive inputs of a row);
* ``embed_bits`` for the tied embedding / LM head: ``"auto"`` = max(bits, 4) (the paper's
  convention), ``"fp"`` = keep it in full precision, or a number in :data:`ALLOWED_BITS`;
* ``quantize_blocks=False`` keeps the block linears in full precision (embedding-only runs).

Group-size divisibility depends on the layer and is checked by ``coqat.quant.prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# the bit widths are defined once, in coqat.bits; re-exported here for coqat.quant's users
from coqat.bits import ALLOWED_BITS as ALLOWED_BITS
from coqat.bits import allowed_str
from coqat.bits import format_bits as format_bits
from coqat.bits import parse_bits as parse_bits
from coqat.config import check
from coqat.errors import ConfigError

Grid = Literal["sign", "seq", "lsq"]


def grid_for_bits(bits: float) -> Grid:
    """Quantizer family of a bit width: 1 -> sign, 1.58/2 -> SEQ (ParetoQ), 3..8 -> LSQ."""
    b = parse_bits(bits)
    if b == 1.0:
        return "sign"
    if b in (1.58, 2.0):
        return "seq"
    return "lsq"


def storage_bits(bits: float) -> int:
    """Bits per packed code on disk (ternary is stored in 2 bits)."""
    b = parse_bits(bits)
    return 2 if b == 1.58 else int(b)


@dataclass(frozen=True)
class QuantConfig:
    """How QAT quantizes a model (weights only; see ``docs/quant.md``)."""

    bits: float = 4.0
    granularity: Literal["row", "group"] = "row"
    group_size: int = 128
    embed_bits: str = "auto"
    quantize_blocks: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", parse_bits(self.bits, "quant.bits"))
        check(
            self.granularity in ("row", "group"),
            "quant.granularity",
            f"{self.granularity!r} is not allowed; choose one of ['row', 'group']",
        )
        check(
            isinstance(self.group_size, int)
            and not isinstance(self.group_size, bool)
            and self.group_size > 0,
            "quant.group_size",
            f"must be an integer > 0, got {self.group_size!r}",
        )
        eb = self.embed_bits
        if isinstance(eb, str) and eb.strip().lower() in ("auto", "fp"):
            eb = eb.strip().lower()
        else:
            try:
                eb = format_bits(parse_bits(eb, "quant.embed_bits"))
            except ConfigError:
                raise ConfigError(
                    "quant.embed_bits",
                    f"{self.embed_bits!r} is not allowed; use 'auto' (= max(bits, 4)), 'fp' "
                    f"(full precision) or a bit width in {allowed_str()}",
                ) from None
        object.__setattr__(self, "embed_bits", eb)
        check(
            isinstance(self.quantize_blocks, bool),
            "quant.quantize_blocks",
            f"expected true/false, got {self.quantize_blocks!r}",
        )

    @property
    def resolved_embed_bits(self) -> float | None:
        """Bits of the tied embedding/head; None = full precision."""
        if self.embed_bits == "auto":
            return max(self.bits, 4.0)
        if self.embed_bits == "fp":
            return None
        return parse_bits(self.embed_bits, "quant.embed_bits")

    @property
    def grid(self) -> Grid:
        return grid_for_bits(self.bits)

    @property
    def label(self) -> str:
        """Short tag for run names, e.g. ``w4`` / ``w1.58g64``."""
        g = f"g{self.group_size}" if self.granularity == "group" else ""
        return f"w{format_bits(self.bits)}{g}"
