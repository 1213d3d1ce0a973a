"""The ``coqat`` command. Subcommands register themselves from their layer's ``cli`` module;
every import that needs torch happens inside the command that uses it, so ``coqat plan`` starts
fast on a machine without a GPU stack."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) of every layer that adds subcommands, in help order
_LAYERS = (
    "coqat.data.cli",
    "coqat.train.cli",
    "coqat.sweep.cli",
    "coqat.plan.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coqat",
        description=(
            "Compute-optimal quantization-aware training: prepare data, train FP->QAT runs, "
            "run sweeps, fit scaling laws and plan QAT budgets."
        ),
    )
    from coqat import __version__

    parser.add_argument("--version", action="version", version=f"coqat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _LAYERS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a layer not installed in this build
            if e.name and e.name.startswith("coqat"):
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from coqat.errors import CoqatError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CoqatError as e:
        print(f"coqat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coqat: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
