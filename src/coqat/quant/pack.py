"""Dense int32 bit packing of signed integer codes (compressed-tensors "pack-quantized" layout).

Codes ``r`` (int8, ``[rows, cols]``) are shifted to unsigned ``u = r + 2**(bits-1)`` and written
into one little-endian bitstream per row: element ``j`` occupies stream bits
``[j*bits, (j+1)*bits)``, word ``i`` of the row holds stream bits ``[32*i, 32*i + 32)`` (bit 0 =
least significant bit of the word). A row takes ``ceil(cols*bits/32)`` int32 words, so 3/5/6/7-bit
codes waste no bits (elements may straddle two words); for 1/2/4/8 bits this is the classic
``32 // bits`` values per int32 layout. This is the layout of compressed-tensors'
``pack_to_int32`` (packed along the input dimension, ``packed_dim=1``).
"""

from __future__ import annotations

import math

import torch

_MASK32 = (1 << 32) - 1


def packed_words(cols: int, bits: int) -> int:
    return math.ceil(cols * bits / 32)


def _positions(cols: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.arange(cols, device=device, dtype=torch.int64) * bits
    return start // 32, start % 32


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed codes in ``[-2**(bits-1), 2**(bits-1))`` (2-D) into int32 ``[rows, words]``."""
    if codes.dim() != 2:
        raise ValueError(f"expected 2-D codes, got shape {tuple(codes.shape)}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    rows, cols = codes.shape
    u = codes.to(torch.int64) + (1 << (bits - 1))
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits}-bit packing")
    n_words = packed_words(cols, bits)
    word, shift = _positions(cols, bits, codes.device)
    out = torch.zeros(rows, n_words + 1, dtype=torch.int64, device=codes.device)
    # bits never overlap, so adding equals or-ing
    out.scatter_add_(1, word.expand(rows, cols), (u << shift) & _MASK32)
    spill = shift + bits > 32
    if bool(spill.any()):
        out.scatter_add_(1, (word[spill] + 1).expand(rows, -1), u[:, spill] >> (32 - shift[spill]))
    out = out[:, :n_words]
    out = torch.where(out >= (1 << 31), out - (1 << 32), out)  # two's complement view
    return out.to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_int32`: signed int8 codes ``[rows, cols]``."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ValueError(f"expected a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    rows, n_words = packed.shape
    if n_words != packed_words(cols, bits):
        raise ValueError(f"{n_words} words cannot hold {cols} codes of {bits} bits")
    w = packed.to(torch.int64) & _MASK32
    w = torch.cat([w, torch.zeros(rows, 1, dtype=torch.int64, device=w.device)], dim=1)
    word, shift = _positions(cols, bits, packed.device)
    lo = w[:, word] >> shift
    hi = w[:, word + 1] << (32 - shift)  # only matters where the code spills over
    u = (lo | torch.where(shift + bits > 32, hi, 0)) & ((1 << bits) - 1)
    return (u - (1 << (bits - 1))).to(torch.int8)
