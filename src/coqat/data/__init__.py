"""Corpus pipeline: documents -> byte-level BPE -> memmapped token splits + manifest.

``import coqat.data`` is light (numpy only); ``tokenizers`` and ``zstandard`` are imported when
needed. Typical use::

    from coqat.data import prepare, TokenDataset, BatchSampler, sample_path
    prepare([sample_path()], "runs/data/linux-sample")
    ds = TokenDataset("runs/data/linux-sample", "train")
    xy = BatchSampler(ds, batch_size=8, seq_len=256, seed=0).batch(0)  # int64 [8, 257]
"""

from __future__ import annotations

from pathlib import Path

from coqat.data.dataset import (
    BatchSampler,
    TokenDataset,
    ValidationWindows,
    unigram_entropy,
    validation_windows,
)
from coqat.data.manifest import Manifest, SourceInfo, SplitInfo, load_manifest
from coqat.data.prepare import prepare
from coqat.data.sources import iter_documents
from coqat.data.split import split_of

SAMPLE_NAME = "linux-c-sample.jsonl.xz"


def sample_path() -> Path:
    """Path of the embedded corpus sample (a slice of Linux 6.1 C sources, GPL-2.0; see NOTICE)."""
    from importlib.resources import files

    p = Path(str(files("coqat.data") / "sample" / SAMPLE_NAME))
    if not p.is_file():  # pragma: no cover - only if package data was not installed
        from coqat.errors import DataError

        raise DataError(f"{p}: embedded sample missing; reinstall coqat with its package data")
    return p


__all__ = [
    "BatchSampler",
    "Manifest",
    "SourceInfo",
    "SplitInfo",
    "TokenDataset",
    "ValidationWindows",
    "iter_documents",
    "load_manifest",
    "prepare",
    "sample_path",
    "split_of",
    "unigram_entropy",
    "validation_windows",
]
