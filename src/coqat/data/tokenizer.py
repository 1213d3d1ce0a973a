"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with an end-of-text token.

``tokenizers`` is imported inside the functions so that ``import coqat.data`` stays light.
Literal ``<|endoftext|>`` strings inside documents are encoded as ordinary text
(``encode_special_tokens``), so only the EOT that :func:`encode_documents` appends after each
document carries id :data:`EOT`'s id; decoding with ``skip_special_tokens=False`` round-trips
exactly.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coqat.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOT = "<|endoftext|>"
DEFAULT_VOCAB = 8192
MIN_VOCAB = 257  # 256 byte symbols + EOT


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB, min_frequency: int = 2
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (EOT is id 0); tiny corpora may give < vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from coqat.config import check

    check(vocab_size >= MIN_VOCAB, "vocab_size", f"must be >= {MIN_VOCAB} (256 bytes + EOT)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.encode_special_tokens = True
    return tok


def tokenizer_from_bytes(blob: bytes, where: str = "tokenizer.json") -> Tokenizer:
    """Parse tokenizer.json bytes; DataError if invalid or lacking the EOT token."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(blob.decode("utf-8"))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise DataError(f"{where}: not a valid tokenizer.json: {e}") from None
    if tok.token_to_id(EOT) is None:
        raise DataError(f"{where}: tokenizer has no {EOT} token")
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json that has an EOT token."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: tokenizer file not found")
    return tokenizer_from_bytes(p.read_bytes(), str(p))


def tokenizer_json_bytes(tok: Tokenizer) -> bytes:
    """Canonical serialized form (what is saved and hashed)."""
    return tok.to_str().encode("utf-8")


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise DataError(f"tokenizer has no {EOT} token")
    return i


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def encode_documents(
    tok: Tokenizer, texts: Sequence[str], eot: int, dtype: np.dtype | type = np.uint32
) -> np.ndarray:
    """Encode a batch (in parallel on all cores) into one flat array with EOT after each text."""
    if not texts:
        return np.zeros(0, dtype)
    enc = getattr(tok, "encode_batch_fast", tok.encode_batch)
    ids = [e.ids for e in enc(list(texts), add_special_tokens=False)]
    total = sum(map(len, ids)) + len(ids)
    tail = (eot,)
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable((x, tail) for x in ids))
    return np.fromiter(flat, dtype=dtype, count=total)


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Decode ids back to text, keeping special tokens (exact inverse for byte-level BPE)."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)
