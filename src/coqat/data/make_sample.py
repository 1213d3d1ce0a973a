"""Rebuild the embedded sample: ``python -m coqat.data.make_sample SRC OUT``.

SRC is the reference corpus (``linux-c.jsonl.xz``, JSON Lines ``{"id", "text"}``). A document is
kept when its text is at most ``--max-bytes`` UTF-8 bytes (default 65536) and
``blake2b("sample:" + id)`` (first 8 bytes, big-endian, / 2**64) is below ``--fraction``
(default 0.02). Kept documents are written in input order as JSON Lines, xz preset 9, and a
NOTICE file is written beside OUT. The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
from pathlib import Path

from coqat.data.sources import SourceFile, file_sha256, iter_file

NOTICE = """\
linux-c-sample.jsonl.xz
=======================

A slice of the Linux kernel 6.1.192 C sources, taken from Debian's linux-source-6.1
package, version 6.1.192-3. One JSON object per line: {{"id": <path in the kernel tree>,
"text": <file contents>}}.

License: GPL-2.0 (GNU General Public License version 2), the Linux kernel's license;
see https://www.kernel.org/doc/html/latest/process/license-rules.html and the SPDX
headers in the files themselves.
Copyright (C) the Linux kernel authors (see each file's own copyright lines).

Selection rule (reproduce with `python -m coqat.data.make_sample SRC OUT`): from the
reference corpus linux-c.jsonl.xz (14,547 .c files of the 6.1.192 tree; sha256
{source_sha256}), keep a file when
its text is at most {max_bytes} UTF-8 bytes and blake2b("sample:" + path) with an 8-byte
digest, read big-endian and divided by 2**64, is below {fraction}. Files are in the
corpus's (path-sorted) order and unmodified. This sample: {docs} files, {chars} characters,
{nbytes} UTF-8 bytes.
"""


def selected(doc_id: str, text_bytes: int, fraction: float, max_bytes: int) -> bool:
    """The selection rule (see module docstring)."""
    h = hashlib.blake2b(f"sample:{doc_id}".encode(), digest_size=8).digest()
    return text_bytes <= max_bytes and int.from_bytes(h, "big") / 2.0**64 < fraction


def make_sample(src: Path, out: Path, fraction: float = 0.02, max_bytes: int = 65536) -> dict:
    """Write the sample to ``out`` and its NOTICE beside it; return counts."""
    docs = chars = nbytes = 0
    lines = []
    for doc_id, text in iter_file(SourceFile(src, src.name)):
        b = len(text.encode("utf-8"))
        if selected(doc_id, b, fraction, max_bytes):
            lines.append(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            docs, chars, nbytes = docs + 1, chars + len(text), nbytes + b
    out.parent.mkdir(parents=True, exist_ok=True)
    blob = lzma.compress("".join(lines).encode("utf-8"), format=lzma.FORMAT_XZ, preset=9)
    out.write_bytes(blob)
    stats = {"docs": docs, "chars": chars, "nbytes": nbytes, "xz_bytes": len(blob)}
    notice = NOTICE.format(
        fraction=fraction, max_bytes=max_bytes, source_sha256=file_sha256(src), **stats
    )
    (out.parent / "NOTICE").write_text(notice, encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="reference corpus, e.g. linux-c.jsonl.xz")
    ap.add_argument("out", type=Path, help="output .jsonl.xz (NOTICE is written beside it)")
    ap.add_argument("--fraction", type=float, default=0.02, help="hash fraction kept")
    ap.add_argument("--max-bytes", type=int, default=65536, help="largest document kept")
    args = ap.parse_args(argv)
    print(make_sample(args.src, args.out, args.fraction, args.max_bytes))


if __name__ == "__main__":
    main()
