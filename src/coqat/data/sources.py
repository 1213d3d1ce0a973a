"""Read documents ``(doc_id, text)`` from JSON Lines, plain text files or folders of them.

Formats, chosen by file name (after removing one compression suffix ``.xz``, ``.gz`` or ``.zst``):

* ``.jsonl``, ``.ndjson``, ``.json``: JSON Lines, one object a line with a string ``"text"`` and an
  optional ``"id"``; without an id the document is ``"<name>:<line number>"``. Blank lines are
  skipped. (``.json`` is read as JSON Lines too.)
* anything else given explicitly: one document per file, id = the file's path.

A folder is walked recursively in sorted order; hidden files and folders (``.name``) are skipped,
and a file is read only if its name (compression suffix removed) ends with one of
:data:`FOLDER_SUFFIXES`, or of the ``suffixes`` given (e.g. ``(".py",)`` to take only Python source
from a tree that also holds ``.json`` files, which would otherwise be read as JSON Lines). Ids
of files found in a folder are their paths relative to that folder (posix form), so the
train/validation split does not depend on where the corpus lives.

Empty documents are skipped. Every problem raises :class:`~coqat.errors.DataError` naming the file
(and the line where there is one). ``zstandard`` is imported only when a ``.zst`` file is read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from coqat.errors import DataError

COMPRESSION_SUFFIXES = (".xz", ".gz", ".zst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (
    ".txt", ".md", ".rst", ".c", ".h", ".cc", ".cpp", ".hpp", ".py", ".rs", ".go", ".java",
    ".js", ".ts", ".sh", ".s", ".S",
)  # fmt: skip
FOLDER_SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES


@dataclass(frozen=True)
class SourceFile:
    """One input file and the id prefix its documents get (``name`` = path shown in ids)."""

    path: Path
    name: str

    @property
    def base_name(self) -> str:
        """File name without its compression suffix."""
        n = self.path.name
        for s in COMPRESSION_SUFFIXES:
            if n.endswith(s):
                return n[: -len(s)]
        return n

    @property
    def is_jsonl(self) -> bool:
        return self.base_name.endswith(JSONL_SUFFIXES)


def _wanted_in_folder(p: Path, suffixes: tuple[str, ...]) -> bool:
    return SourceFile(p, p.name).base_name.endswith(suffixes)


def check_suffixes(suffixes: Iterable[str]) -> tuple[str, ...]:
    """``suffixes`` as a tuple; DataError unless each is one of :data:`FOLDER_SUFFIXES`."""
    out = tuple(suffixes)
    bad = [s for s in out if s not in FOLDER_SUFFIXES]
    if bad or not out:
        raise DataError(
            f"suffixes: {', '.join(map(repr, bad)) or 'none given'}; allowed: "
            f"{', '.join(FOLDER_SUFFIXES)}"
        )
    return out


def list_sources(
    inputs: Iterable[str | Path], suffixes: Iterable[str] | None = None
) -> list[SourceFile]:
    """Expand ``inputs`` (files or folders) into source files; missing paths raise DataError.

    ``suffixes`` restricts what is read from folders (default: every name in
    :data:`FOLDER_SUFFIXES`); files named explicitly are always read.
    """
    wanted = FOLDER_SUFFIXES if suffixes is None else check_suffixes(suffixes)
    out: list[SourceFile] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file():
            out.append(SourceFile(p, p.name if _is_jsonl_name(p) else str(p)))
        elif p.is_dir():
            found = []
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                    continue
                if _wanted_in_folder(f, wanted):
                    found.append(SourceFile(f, rel.as_posix()))
            if not found:
                raise DataError(
                    f"{p}: folder holds no input files (looked for names ending in "
                    f"{', '.join(wanted)}, optionally + {', '.join(COMPRESSION_SUFFIXES)})"
                )
            out.extend(found)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not out:
        raise DataError("no input files given")
    return out


def _is_jsonl_name(p: Path) -> bool:
    return SourceFile(p, "").is_jsonl


def open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing ``.xz``/``.gz``/``.zst`` transparently."""
    name = path.name
    try:
        if name.endswith(".xz"):
            return lzma.open(path, "rb")
        if name.endswith(".gz"):
            return gzip.open(path, "rb")
        if name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise DataError(
                    f"{path}: reading .zst files needs the 'zstandard' package "
                    "(pip install 'coqat[data]' or pip install zstandard)"
                ) from None
            fh = open(path, "rb")
            try:
                reader = zstandard.ZstdDecompressor().stream_reader(
                    fh, read_across_frames=True, closefd=True
                )
            except TypeError:  # older zstandard without read_across_frames
                reader = zstandard.ZstdDecompressor().stream_reader(fh, closefd=True)
            return io.BufferedReader(reader, buffer_size=1 << 20)
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e}") from None


def _decode_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, EOFError, lzma.LZMAError, zlib.error]
    try:
        import zstandard

        errs.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errs)


def _utf8(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw[: e.start].count(b"\n")
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}); "
            "convert the file to UTF-8 or drop it"
        ) from None


def _iter_jsonl(src: SourceFile) -> Iterator[tuple[str, str]]:
    path = src.path
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = _utf8(raw, path, lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise DataError(f'{path}:{lineno}: JSON line has no "text" field')
            text = obj["text"]
            if not isinstance(text, str):
                raise DataError(f'{path}:{lineno}: "text" must be a string')
            doc_id = obj.get("id")
            doc_id = f"{src.name}:{lineno}" if doc_id is None else str(doc_id)
            if text:
                yield doc_id, text


def _iter_text(src: SourceFile) -> Iterator[tuple[str, str]]:
    with open_binary(src.path) as f:
        raw = f.read()
    text = _utf8(raw, src.path, 1)
    if text:
        yield src.name, text


def iter_file(src: SourceFile) -> Iterator[tuple[str, str]]:
    """Documents of one source file; read/decompression errors raise DataError naming it."""
    it = _iter_jsonl(src) if src.is_jsonl else _iter_text(src)
    try:
        yield from it
    except DataError:
        raise
    except _decode_errors() as e:
        raise DataError(f"{src.path}: cannot read (corrupt or truncated?): {e}") from None


def iter_documents(
    inputs: Iterable[str | Path | SourceFile], max_docs: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` from every input in order, at most ``max_docs`` of them.

    ``inputs`` are paths (expanded with :func:`list_sources`) or already listed SourceFiles.
    Raises DataError (after the last file) if the corpus has no documents or no characters.
    """
    items = list(inputs)
    if all(isinstance(s, SourceFile) for s in items) and items:
        sources: list[SourceFile] = items  # type: ignore[assignment]
    else:
        sources = list_sources(items)  # type: ignore[arg-type]
    n = 0
    if max_docs is not None and max_docs <= 0:
        raise DataError(f"max_docs must be positive, got {max_docs}")
    for src in sources:
        for doc in iter_file(src):
            yield doc
            n += 1
            if max_docs is not None and n >= max_docs:
                return
    if n == 0:
        names = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise DataError(f"empty corpus: no non-empty documents in {names}")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
