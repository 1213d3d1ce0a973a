"""``coqat data prepare`` and ``coqat data info`` (registered by the top-level CLI)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from coqat.data.split import DEFAULT_VAL_FRACTION
from coqat.data.tokenizer import DEFAULT_VOCAB


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``data`` with its ``prepare`` and ``info`` subcommands on ``subparsers``."""
    data = subparsers.add_parser("data", help="prepare and inspect tokenized corpora")
    data.set_defaults(func=lambda args: data.print_help())
    sub = data.add_subparsers(dest="data_command", metavar="{prepare,info}")

    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus into train.bin/val.bin + tokenizer.json + manifest.json",
        description="Train a byte-level BPE on the training split (or load --tokenizer) and "
        "write memmap-able token files with a manifest (written last).",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="INPUT",
        help=".jsonl/.txt/... files or folders, optionally .xz/.gz/.zst compressed",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--sample",
        action="store_true",
        help="use the embedded Linux C sample (3.5 MB) as input",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=DEFAULT_VOCAB,
        help=f"BPE vocabulary size incl. <|endoftext|> (default {DEFAULT_VOCAB})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help=f"fraction of documents (by id hash) held out (default {DEFAULT_VAL_FRACTION})",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="existing tokenizer.json to use instead of training one (--vocab is then ignored)",
    )
    p.add_argument(
        "--max-docs", type=int, default=None, help="read only the first N documents (quick runs)"
    )
    p.add_argument("--seed", type=int, default=0, help="salt of the id hash of the split")
    p.add_argument(
        "--suffix",
        action="append",
        dest="suffixes",
        metavar="SUFFIX",
        default=None,
        help="read only files ending in SUFFIX from folders (repeatable; e.g. --suffix .py); "
        "default: every known text and JSON Lines suffix",
    )
    p.set_defaults(func=_prepare, intermixed="inputs")

    i = sub.add_parser("info", help="summarize a prepared directory's manifest")
    i.add_argument("dir", type=Path, help="directory written by `coqat data prepare`")
    i.add_argument("--verify", action="store_true", help="also check token files' sizes and sha256")
    i.set_defaults(func=_info)
    return data


def _print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in (header, *rows):
            print("  " + "  ".join(f"{c:>14}" for c in r))
        return
    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="right" if h != "split" else "left")
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def _summary(m: Any, title: str) -> None:
    rows = [
        (name, f"{s.tokens:,}", f"{s.documents:,}", f"{s.text_bytes / max(s.tokens, 1):.3f}")
        for name, s in m.splits.items()
    ]
    _print_table(title, rows, ("split", "tokens", "documents", "bytes/token"))
    print(
        f"vocab {m.vocab_size}, eot id {m.eot_id}, dtype {m.dtype}, "
        f"bytes/token {m.bytes_per_token}, tokenizer sha256 {m.tokenizer_sha256[:16]}…"
    )


def _prepare(args: argparse.Namespace) -> None:
    from coqat.data import prepare, sample_path
    from coqat.errors import ConfigError

    inputs = list(args.inputs)
    if args.sample:
        inputs.append(sample_path())
    if not inputs:
        raise ConfigError("inputs", "give at least one INPUT path or --sample")
    t0 = time.perf_counter()
    m = prepare(
        inputs,
        args.out,
        vocab_size=args.vocab,
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        max_docs=args.max_docs,
        seed=args.seed,
        suffixes=args.suffixes,
    )
    _summary(m, f"{args.out} ({time.perf_counter() - t0:.1f} s)")


def _info(args: argparse.Namespace) -> None:
    from coqat.data import TokenDataset, load_manifest

    m = load_manifest(args.dir)
    if args.verify:
        for s in m.splits:
            TokenDataset(args.dir, s, verify=True)
    _summary(m, f"{args.dir} (created {m.created})" + (" verified" if args.verify else ""))
    for s in m.sources:
        print(f"source {s.path} ({s.bytes:,} bytes, sha256 {s.sha256[:16]}…)")
