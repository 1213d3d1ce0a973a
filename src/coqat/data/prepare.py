"""``prepare``: corpus -> tokenizer.json + train.bin/val.bin (raw token ids) + manifest.json.

Two streaming passes over the input: (1) train the BPE on the training split (skipped when a
tokenizer is given), (2) encode documents in chunks of ~1000 and append each chunk's ids to the
split's file. Every new file is written beside the old ones under a temporary name; only when all
of them are complete is the old manifest removed, the files renamed over the old ones and the new
manifest written last, atomically. A failed or killed preparation leaves an existing dataset as
it was, and a directory that has a manifest is always complete and consistent. Progress is logged
(``logging``, logger ``coqat.data.prepare``) every few seconds.
"""

from __future__ import annotations

import hashlib
import logging
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

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
PROGRESS_EVERY_S = 10.0
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
        """Close the temporary file (complete, synced); :func:`_commit` renames it."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return SplitInfo(
            self.path.name, self.tokens, self.documents, self.sha.hexdigest(), self.text_bytes
        )

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


class _Progress:
    """Logs documents and text read (and tokens written) every PROGRESS_EVERY_S seconds."""

    def __init__(self, what: str):
        self.what = what
        self.t0 = self.last = time.perf_counter()
        self.docs = 0
        self.chars = 0

    def add(self, text: str, tokens: int = 0) -> None:
        self.docs += 1
        self.chars += len(text)
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log.info("%s", self.line(tokens))

    def line(self, tokens: int = 0) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tok = f", {tokens:,} tokens written" if tokens else ""
        return (
            f"{self.what}: {self.docs:,} documents, {self.chars / 1e6:,.1f}M characters{tok} "
            f"({self.chars / 1e6 / dt:.2f}M chars/s, {dt:.0f} s)"
        )


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
    progress = _Progress("training the tokenizer")

    def texts() -> Iterator[str]:
        try:
            for t in _train_texts(sources, val_fraction, seed, max_docs):
                seen[0] += 1
                progress.add(t)
                yield t
        except Exception as e:  # surfaces through the Rust trainer; re-raised below
            errors.append(e)

    tok = tk.train_tokenizer(texts(), vocab_size)
    if errors:
        raise errors[0]
    log.info("%s; vocabulary %d", progress.line(), tok.get_vocab_size())
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
    suffixes: Sequence[str] | None = None,
) -> Manifest:
    """Tokenize ``inputs`` into ``out_dir`` and return the manifest written there.

    ``vocab_size`` is the BPE target (ignored when ``tokenizer``, an existing tokenizer.json with
    an ``<|endoftext|>`` token, is given); ``seed`` salts the id hash of the split;
    ``max_docs`` reads only the first documents of the input (for quick runs); ``suffixes``
    restricts which files are read from folders (see :func:`~coqat.data.sources.list_sources`).
    """
    check_val_fraction(val_fraction)
    check(max_docs is None or max_docs > 0, "max_docs", f"must be positive, got {max_docs}")
    out = Path(out_dir)
    sources = list_sources(inputs, suffixes)
    source_info = tuple(
        SourceInfo(str(s.path), file_sha256(s.path), s.path.stat().st_size) for s in sources
    )
    out.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tok_tmp = out / f".{TOKENIZER}.{pid}.tmp"
    writers: dict[str, _SplitWriter] = {}
    try:
        if tokenizer is not None:
            blob = Path(tokenizer).read_bytes() if Path(tokenizer).is_file() else None
            if blob is None:
                raise DataError(f"{tokenizer}: tokenizer file not found")
            tok = tk.tokenizer_from_bytes(blob, str(tokenizer))
        else:
            check(vocab_size >= tk.MIN_VOCAB, "vocab_size", f"must be >= {tk.MIN_VOCAB}")
            tok = _train(sources, vocab_size, val_fraction, seed, max_docs)
            blob = tk.tokenizer_json_bytes(tok)
        atomic_write_bytes(tok_tmp, blob)
        vocab = tok.get_vocab_size()
        eot = tk.eot_id(tok)
        dtype = tk.token_dtype(vocab)

        for s in SPLITS:
            writers[s] = _SplitWriter(out / f"{s}.bin", out / f".{s}.bin.{pid}.tmp", dtype)
        progress = _Progress("encoding")
        for doc_id, text in iter_documents(sources, max_docs):
            w = writers[split_of(doc_id, val_fraction, seed)]
            if w.add(text):
                w.flush(tok, eot)
            progress.add(text, sum(x.tokens for x in writers.values()))
        for w in writers.values():
            w.flush(tok, eot)
        log.info("%s", progress.line(sum(x.tokens for x in writers.values())))
        if writers["train"].documents == 0:
            raise DataError("training split is empty: every document fell into validation")
        if val_fraction > 0 and writers["val"].documents == 0:
            n = writers["train"].documents
            raise DataError(
                f"validation split is empty ({n} documents at val_fraction={val_fraction}); "
                "raise val_fraction or add documents"
            )
        splits = {s: w.finish() for s, w in writers.items()}

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
            suffixes=None if suffixes is None else list(suffixes),
        )
        _commit(out, {tok_tmp: out / TOKENIZER, **{w.tmp: w.path for w in writers.values()}})
    except BaseException:
        for w in writers.values():
            w.abort()
        tok_tmp.unlink(missing_ok=True)
        raise
    save_json(manifest, out / MANIFEST)
    return manifest


def _commit(out: Path, renames: dict[Path, Path]) -> None:
    """Swap complete temporary files in: the old manifest goes first (the folder is incomplete
    for the few renames that follow), the new one is written after them by the caller."""
    (out / MANIFEST).unlink(missing_ok=True)
    for tmp, final in renames.items():
        os.replace(tmp, final)


def prepare_timed(*args, **kwargs) -> tuple[Manifest, float]:
    """:func:`prepare` plus the seconds it took."""
    t0 = time.perf_counter()
    m = prepare(*args, **kwargs)
    return m, time.perf_counter() - t0
