"""Read prepared token directories: :class:`TokenDataset`, :class:`BatchSampler`,
:func:`validation_windows` and the :func:`unigram_entropy` baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coqat.config import check
from coqat.data.manifest import MANIFEST, Manifest, load_manifest
from coqat.data.sources import file_sha256
from coqat.errors import DataError

Verify = bool | Literal["hash", "full", "size"]


class TokenDataset:
    """One split of a prepared directory as a read-only ``np.memmap`` of token ids.

    ``verify``: ``True`` (or ``"full"``) checks the file size and sha256 against the manifest
    (~1 s per 240 MB); ``"hash"`` the same, hashing each version of the file once (the hash is
    cached under its size, mtime, ctime and inode; :mod:`coqat.data.verify`); ``"size"`` only the
    size; ``False`` nothing. Mismatches raise DataError naming the file.
    """

    def __init__(self, directory: str | Path, split: str = "train", verify: Verify = True):
        check(
            verify in (True, False, "hash", "full", "size"),
            "verify",
            f"must be true, false, 'hash', 'full' or 'size', got {verify!r}",
        )
        full = verify is True or verify == "full"
        self.dir = Path(directory)
        self.split = split
        self.manifest: Manifest = load_manifest(self.dir)
        if split not in self.manifest.splits:
            raise DataError(
                f"{self.dir}: no split {split!r}; manifest has {sorted(self.manifest.splits)}"
            )
        info = self.manifest.splits[split]
        self.path = self.dir / info.file
        self.dtype = np.dtype(self.manifest.dtype)
        if not self.path.is_file():
            raise DataError(f"{self.path}: token file listed in the manifest is missing")
        size = self.path.stat().st_size
        want = info.tokens * self.dtype.itemsize
        if verify and size != want:
            raise DataError(
                f"{self.path}: size {size} bytes does not match the manifest ({info.tokens} "
                f"{self.dtype.name} tokens = {want} bytes); the file is truncated or stale"
            )
        if verify == "hash":
            from coqat.data.verify import cached_sha256, forget

            if cached_sha256(self.path) != info.sha256:
                forget(self.path)
                full = True  # hash again before refusing
        if full and file_sha256(self.path) != info.sha256:
            raise DataError(
                f"{self.path}: sha256 does not match {self.dir / MANIFEST}; the file or the "
                "manifest was modified (re-run `coqat data prepare`)"
            )
        if info.tokens == 0:
            self.tokens: np.ndarray = np.zeros(0, self.dtype)
        else:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(info.tokens,))

    def __len__(self) -> int:
        return len(self.tokens)

    def head(self, n: int) -> TokenDataset:
        """The same split restricted to its first ``n`` tokens (a view, no copy); DataError
        when the split holds fewer."""
        check(n >= 1, "train_tokens", f"must be >= 1, got {n}")
        if n > len(self.tokens):
            raise DataError(
                f"{self.path}: data.train_tokens = {n} is more than the {len(self.tokens)} "
                f"tokens of the {self.split!r} split"
            )
        import copy

        out = copy.copy(self)
        out.tokens = self.tokens[:n]
        return out

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.dir)!r}, {self.split!r}, tokens={len(self)})"

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def eot_id(self) -> int:
        return self.manifest.eot_id

    @property
    def documents(self) -> int:
        return self.manifest.splits[self.split].documents

    @property
    def data_hash(self) -> str:
        """16 hex chars identifying tokenizer + every split's contents (for run keys)."""
        return self.manifest.data_hash

    def load_tokenizer(self):
        """The directory's tokenizer (``tokenizers.Tokenizer``)."""
        from coqat.data.tokenizer import load_tokenizer

        return load_tokenizer(self.dir / self.manifest.tokenizer_file)


class BatchSampler:
    """Random windows: batch ``k`` is a pure function of ``(seed, k)``.

    ``batch(k)`` draws ``batch_size`` window starts with ``np.random.default_rng([seed, k])`` and
    returns int64 ``[batch_size, seq_len + 1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``).
    Iterating yields ``batch(position)`` and advances ``position``; ``state_dict()`` /
    ``load_state_dict()`` save and restore ``{"seed", "position"}`` for exact resumption.
    """

    def __init__(
        self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int = 0,
        position: int = 0,
    ):  # fmt: skip
        check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
        check(seq_len >= 1, "seq_len", f"must be >= 1, got {seq_len}")
        check(seed >= 0, "seed", f"must be >= 0, got {seed}")
        check(position >= 0, "position", f"must be >= 0, got {position}")
        if len(dataset) < seq_len + 1:
            raise DataError(
                f"{dataset.path}: {len(dataset)} tokens is fewer than one window of "
                f"seq_len + 1 = {seq_len + 1}"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.position = position
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def starts(self, k: int) -> np.ndarray:
        """Window starts (int64 ``[batch_size]``) of batch ``k``: ``batch(k)[i]`` is
        ``tokens[starts[i] : starts[i] + seq_len + 1]``."""
        rng = np.random.default_rng([self.seed, k])
        return rng.integers(0, len(self.dataset) - self.seq_len, size=self.batch_size)

    def batch(self, k: int) -> np.ndarray:
        """Batch number ``k`` (no side effects)."""
        starts = self.starts(k)
        return self.dataset.tokens[starts[:, None] + self._offsets].astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        out = self.batch(self.position)
        self.position += 1
        return out

    next = __next__

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"seed", "position"} - set(state)
        check(not missing, "sampler_state", f"missing keys {sorted(missing)}")
        check(int(state["position"]) >= 0, "sampler_state.position", "must be >= 0")
        self.seed = int(state["seed"])
        self.position = int(state["position"])


@dataclass(frozen=True)
class ValidationWindows:
    """Fixed contiguous windows over the start of a split; iterate for ``[b, seq_len+1]`` batches.

    Window ``i`` is ``tokens[i*seq_len : i*seq_len + seq_len + 1]``, so targets of successive
    windows tile the split without overlap. ``n_tokens`` is the number of target tokens covered
    (``n_windows * seq_len``, requested tokens rounded down to whole windows); ``truncated`` is
    True when the split held fewer windows than requested.
    """

    dataset: TokenDataset
    seq_len: int
    batch_size: int
    n_windows: int
    requested_tokens: int

    @property
    def n_tokens(self) -> int:
        return self.n_windows * self.seq_len

    @property
    def truncated(self) -> bool:
        """True when the split was too short for the requested number of windows."""
        return self.n_windows < max(1, self.requested_tokens // self.seq_len)

    def __len__(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        offsets = np.arange(self.seq_len + 1, dtype=np.int64)
        for b0 in range(0, self.n_windows, self.batch_size):
            starts = np.arange(b0, min(b0 + self.batch_size, self.n_windows)) * self.seq_len
            yield self.dataset.tokens[starts[:, None] + offsets].astype(np.int64)


def validation_windows(
    dataset: TokenDataset, seq_len: int, n_tokens: int, batch_size: int
) -> ValidationWindows:
    """Deterministic windows covering the first ~``n_tokens`` target tokens of ``dataset``.

    Uses ``max(1, n_tokens // seq_len)`` windows, or as many as the split holds (then
    ``.truncated`` is True and ``.n_tokens`` says how many). DataError if not even one fits.
    """
    check(seq_len >= 1, "seq_len", f"must be >= 1, got {seq_len}")
    check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
    check(n_tokens >= 1, "n_tokens", f"must be >= 1, got {n_tokens}")
    available = (len(dataset) - 1) // seq_len
    if available < 1:
        raise DataError(
            f"{dataset.path}: {len(dataset)} tokens is fewer than one validation window of "
            f"seq_len + 1 = {seq_len + 1}"
        )
    n = min(max(1, n_tokens // seq_len), available)
    return ValidationWindows(dataset, seq_len, batch_size, n, n_tokens)


def _counts(tokens: np.ndarray, vocab: int, chunk: int = 1 << 24) -> np.ndarray:
    out = np.zeros(vocab, np.int64)
    for i in range(0, len(tokens), chunk):
        out += np.bincount(tokens[i : i + chunk], minlength=vocab)[:vocab]
    return out


def unigram_entropy(dataset: TokenDataset) -> float:
    """Unigram baseline loss in nats per token.

    Cross entropy on the directory's ``val`` split of the ``train`` split's token frequencies
    (add-one smoothed so unseen tokens stay finite). Any split of the directory may be passed.
    """

    def split(name: str) -> TokenDataset:
        if dataset.split == name:
            return dataset
        return TokenDataset(dataset.dir, name, verify="size")

    train, val = split("train"), split("val")
    if len(val) == 0:
        raise DataError(f"{val.path}: validation split is empty")
    v = dataset.vocab_size
    p = _counts(train.tokens, v).astype(np.float64) + 1.0
    logp = np.log(p / p.sum())
    q = _counts(val.tokens, v)
    return float(-(q * logp).sum() / q.sum())
