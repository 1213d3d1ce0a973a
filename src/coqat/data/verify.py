"""Checking a token file against its manifest's sha256, once per version of the file.

Hashing a large split on every run is slow; trusting its size alone misses a same-size
corruption or an edited manifest. :func:`cached_sha256` hashes a file once and remembers the hash
under the file's identity (size, mtime, ctime, inode): any write, copy or replacement of the file
changes that identity (ctime cannot be set back by hand), so the next check hashes it again. The
cache is a small JSON file beside the data (``.coqat-sha256.json``) or, where that folder is not
writable, under the user's cache folder (``$XDG_CACHE_HOME/coqat/sha256/``). The manifest's hash
is never cached: an edited manifest is compared with the file's real hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from coqat.data.sources import file_sha256

CACHE_NAME = ".coqat-sha256.json"
_MEMO: dict[tuple[str, tuple[int, ...]], str] = {}


def _identity(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _cache_files(folder: Path) -> list[Path]:
    """Where the cache of ``folder`` may live, in order of preference."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return [folder / CACHE_NAME, root / "coqat" / "sha256" / f"{key}.json"]


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _lookup(path: Path, ident: tuple[int, ...]) -> str | None:
    for cache in _cache_files(path.parent):
        entry = _read(cache).get(path.name)
        if isinstance(entry, dict) and tuple(entry.get("identity", ())) == ident:
            return str(entry.get("sha256"))
    return None


def _store(path: Path, ident: tuple[int, ...], sha: str) -> None:
    from coqat.config import atomic_write_text

    for cache in _cache_files(path.parent):
        d = _read(cache)
        d[path.name] = {"identity": list(ident), "sha256": sha}
        try:
            atomic_write_text(cache, json.dumps(d, indent=1, sort_keys=True) + "\n")
            return
        except OSError:  # a read-only data folder: try the user's cache
            continue


def cached_sha256(path: str | Path) -> str:
    """sha256 of ``path``, hashed once per version of the file (see the module doc)."""
    path = Path(path)
    ident = _identity(path)
    key = (str(path.resolve()), ident)
    sha = _MEMO.get(key) or _lookup(path, ident)
    if sha is None:
        sha = file_sha256(path)
        if _identity(path) == ident:  # not modified while it was read
            _store(path, ident, sha)
    _MEMO[key] = sha
    return sha


def forget(path: str | Path) -> None:
    """Drop ``path`` from this process's memo (the file cache is keyed by identity anyway)."""
    p = str(Path(path).resolve())
    for k in [k for k in _MEMO if k[0] == p]:
        del _MEMO[k]
