"""``prepare``: corpus -> tokenizer.json + train.bin/val.bin (raw token ids) + manifest.json.

Two streaming passes over the input: (1) train the BPE on the training split (skipped when a
tokenizer is given), (2) encode documents in chunks of ~1000 and append each chunk's ids to the
split's file. Token files are written under temporary names and renamed when complete; any old
manifest is removed first and the new one is written last, atomically, so a directory that has a
manifest is always complete and consistent.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from coqat.config import atomic_write_bytes, check, save_json
from coqat.data import tokenizer as tk
from coqat.data.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER,
    Manifest,
    SourceInfo,
    SplitInfo,
)
from coqat.data.sources import SourceFile, file_sha256, iter_documents, list_sources
from coqat.data.split import DEFAULT_VAL_FRACTION, check_val_fraction, split_of
from coqat.errors import DataError

SPLITS = ("train", "val")
CHUNK_DOCS = 1000
CHUNK_CHARS = 32 << 20  # also flush a split's buffer past ~32M characters


@dataclass
class _SplitWriter:
    """Appends encoded chunks to a temporary file, hashing the bytes as they are written."""

    path: Path
    tmp: Path
    dtype: np.dtype
    tokens: int = 0
    documents: int = 0
    text_bytes: int = 0
    buf: list[str] = field(default_factory=list)
    buf_chars: int = 0
    sha: Any = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        self.fh = open(self.tmp, "wb")

    def add(self, text: str) -> bool:
        self.buf.append(text)
        self.buf_chars += len(text)
        return len(self.buf) >= CHUNK_DOCS or self.buf_chars >= CHUNK_CHARS

    def flush(self, tok, eot: int) -> None:
        if not self.buf:
            return
        ids = tk.encode_documents(tok, self.buf, eot, self.dtype)
        blob = ids.tobytes()
        self.fh.write(blob)
        self.sha.update(blob)
        self.tokens += len(ids)
        self.documents += len(self.buf)
        self.text_bytes += sum(len(t.encode("utf-8")) for t in self.buf)
        self.buf, self.buf_chars = [], 0

    def finish(self) -> SplitInfo:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return SplitInfo(
            self.path.name, self.tokens, self.documents, self.sha.hexdigest(), self.text_bytes
        )

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _train_texts(
    sources: list[SourceFile], val_fraction: float, seed: int, max_docs: int | None
) -> Iterator[str]:
    for doc_id, text in iter_documents(sources, max_docs):
        if split_of(doc_id, val_fraction, seed) == "train":
            yield text


def _train(sources, vocab_size, val_fraction, seed, max_docs):
    """Train the tokenizer on the train split, re-raising reader errors unwrapped."""
    errors: list[BaseException] = []
    seen = [0]

    def texts() -> Iterator[str]:
        try:
            for t in _train_texts(sources, val_fraction, seed, max_docs):
                seen[0] += 1
                yield t
        except Exception as e:  # surfaces through the Rust trainer; re-raised below
            errors.append(e)

    tok = tk.train_tokenizer(texts(), vocab_size)
    if errors:
        raise errors[0]
    if seen[0] == 0:
        raise DataError("training split is empty: every document fell into validation")
    return tok


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    vocab_size: int = tk.DEFAULT_VOCAB,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    tokenizer: str | Path | None = None,
    max_docs: int | None = None,
    seed: int = 0,
) -> Manifest:
    """Tokenize ``inputs`` into ``out_dir`` and return the manifest written there.

    ``vocab_size`` is the BPE target (ignored when ``tokenizer``, an existing tokenizer.json with
    an ``<|endoftext|>`` token, is given); ``seed`` salts the id hash of the split;
    ``max_docs`` reads only the first documents of the input (for quick runs).
    """
    check_val_fraction(val_fraction)
    check(max_docs is None or max_docs > 0, "max_docs", f"must be positive, got {max_docs}")
    out = Path(out_dir)
    sources = list_sources(inputs)
    source_info = tuple(
        SourceInfo(str(s.path), file_sha256(s.path), s.path.stat().st_size) for s in sources
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete from here on

    if tokenizer is not None:
        blob = Path(tokenizer).read_bytes() if Path(tokenizer).is_file() else None
        if blob is None:
            raise DataError(f"{tokenizer}: tokenizer file not found")
        tok = tk.tokenizer_from_bytes(blob, str(tokenizer))
    else:
        check(vocab_size >= tk.MIN_VOCAB, "vocab_size", f"must be >= {tk.MIN_VOCAB}")
        tok = _train(sources, vocab_size, val_fraction, seed, max_docs)
        blob = tk.tokenizer_json_bytes(tok)
    atomic_write_bytes(out / TOKENIZER, blob)
    vocab = tok.get_vocab_size()
    eot = tk.eot_id(tok)
    dtype = tk.token_dtype(vocab)

    pid = os.getpid()
    writers = {
        s: _SplitWriter(out / f"{s}.bin", out / f".{s}.bin.{pid}.tmp", dtype) for s in SPLITS
    }
    try:
        for doc_id, text in iter_documents(sources, max_docs):
            w = writers[split_of(doc_id, val_fraction, seed)]
            if w.add(text):
                w.flush(tok, eot)
        for w in writers.values():
            w.flush(tok, eot)
        if writers["train"].documents == 0:
            raise DataError("training split is empty: every document fell into validation")
        if val_fraction > 0 and writers["val"].documents == 0:
            n = writers["train"].documents
            raise DataError(
                f"validation split is empty ({n} documents at val_fraction={val_fraction}); "
                "raise val_fraction or add documents"
            )
        splits = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    total_tokens = sum(s.tokens for s in splits.values())
    total_bytes = sum(s.text_bytes for s in splits.values())
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        tokenizer_sha256=tk.sha256_hex(blob),
        vocab_size=vocab,
        eot_id=eot,
        dtype=dtype.name,
        splits=splits,
        sources=source_info,
        val_fraction=val_fraction,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        bytes_per_token=round(total_bytes / total_tokens, 4),
        seed=seed,
        max_docs=max_docs,
    )
    save_json(manifest, out / MANIFEST)
    return manifest


def prepare_timed(*args, **kwargs) -> tuple[Manifest, float]:
    """:func:`prepare` plus the seconds it took."""
    t0 = time.perf_counter()
    m = prepare(*args, **kwargs)
    return m, time.perf_counter() - t0
