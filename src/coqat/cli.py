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


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, letting a command's trailing positionals (``intermixed``: the name of a
    ``nargs='*'`` list such as train's KEY=VALUE overrides) also come between or after flags."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "intermixed", None)
    if extra and dest and not any(x.startswith("-") for x in extra):
        setattr(args, dest, [*(getattr(args, dest) or []), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _os_error(e: OSError) -> str:
    """An OSError as one line naming the path (``a/b: Not a directory``)."""
    import re
    from pathlib import Path

    name = str(e.filename) if e.filename is not None else ""
    tmp = re.fullmatch(r"(.*/)?\.(.+)\.\d+\.tmp", name)  # atomic writes' temporary names
    if tmp:
        name = f"{tmp.group(1) or ''}{tmp.group(2)}"
    what = e.strerror or str(e)
    if isinstance(e, FileExistsError) and name and Path(name).is_file():
        what = "is a file, not a directory"
    return f"cannot access {name}: {what}" if name else what


def main(argv: list[str] | None = None) -> int:
    """Run the command; an expected failure (bad input, an unreadable or unwritable path) is one
    line on stderr, ``coqat: error: ...``, and exit status 2. A traceback means a bug."""
    from coqat.errors import CoqatError
    from coqat.log import setup_logging

    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging()
    try:
        rc = args.func(args)
    except CoqatError as e:
        print(f"coqat: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written: the user's to fix
        print(f"coqat: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coqat: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
