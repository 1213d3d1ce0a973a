"""Deterministic train/validation split by a hash of the document id.

A document goes to validation when ``split_score(id, seed) < val_fraction``; the score is the
first 8 bytes of ``blake2b(f"{seed}:{id}")`` read as an integer and divided by 2**64, i.e. uniform
in [0, 1). It depends only on the id and the seed (never on Python's salted ``hash()``), so the
split is the same on every machine and run, and growing ``val_fraction`` only moves documents
from train to validation.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from coqat.config import check

DEFAULT_VAL_FRACTION = 0.01
Split = Literal["train", "val"]


def split_score(doc_id: str, seed: int = 0) -> float:
    """Uniform number in [0, 1) determined by ``(seed, doc_id)``."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def check_val_fraction(val_fraction: float) -> None:
    """Raise ConfigError unless 0 <= val_fraction < 1."""
    check(0.0 <= val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {val_fraction}")


def split_of(doc_id: str, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> Split:
    """``"val"`` if the document belongs to the validation split, else ``"train"``."""
    return "val" if split_score(doc_id, seed) < val_fraction else "train"
