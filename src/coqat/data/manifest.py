"""The ``manifest.json`` that describes a prepared token directory.

It is written last (atomically) by :func:`coqat.data.prepare`, so a directory with a manifest is
complete. :func:`load_manifest` validates it and raises DataError naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coqat.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class SplitInfo:
    """One split's token file: ``tokens`` ids (EOT included) of ``documents`` documents."""

    file: str
    tokens: int
    documents: int
    sha256: str
    text_bytes: int = 0  # UTF-8 bytes of the documents' text (for bits per byte)


@dataclass(frozen=True)
class SourceInfo:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything needed to open, verify and identify a prepared dataset."""

    format_version: int
    tokenizer_sha256: str
    vocab_size: int
    eot_id: int
    dtype: str
    splits: dict[str, SplitInfo]
    sources: tuple[SourceInfo, ...]
    val_fraction: float
    created: str
    bytes_per_token: float
    seed: int = 0
    tokenizer_file: str = TOKENIZER
    max_docs: int | None = None
    suffixes: list[str] | None = None  # folder file-name filter given to prepare (None = all)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def data_hash(self) -> str:
        """16 hex chars identifying tokenizer + every split's contents (for run keys)."""
        h = hashlib.sha256(self.tokenizer_sha256.encode())
        for name in sorted(self.splits):
            h.update(f"\0{name}:{self.splits[name].sha256}".encode())
        return h.hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        """Build from parsed JSON; DataError naming ``where`` if fields are missing or wrong."""
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise DataError(
                    f"{where}: format_version {d.get('format_version')!r} is not supported "
                    f"(expected {FORMAT_VERSION}); re-run `coqat data prepare`"
                )
            splits = {k: SplitInfo(**v) for k, v in d["splits"].items()}
            sources = tuple(SourceInfo(**s) for s in d["sources"])
            rest = {k: v for k, v in d.items() if k not in ("splits", "sources")}
            m = cls(splits=splits, sources=sources, **rest)
        except DataError:
            raise
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
        if m.dtype not in ("uint16", "uint32"):
            raise DataError(f"{where}: dtype must be uint16 or uint32, got {m.dtype!r}")
        return m


def load_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``directory/manifest.json``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path}: manifest not found; the directory was not prepared or preparation did not "
            "finish (run `coqat data prepare`)"
        )
    try:
        d = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: top level must be an object")
    return Manifest.from_dict(d, str(path))
