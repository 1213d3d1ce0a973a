"""Status messages: Python ``logging`` (logger ``coqat`` and its children) to stderr.

Library code logs (``logging.getLogger(__name__)``) and never prints; the ``coqat`` command calls
:func:`setup_logging` once. On a terminal the messages go through rich (above any live progress
bar, :func:`console`); otherwise as plain time-stamped lines, so a log file or a batch job sees
the same progress. ``COQAT_LOG_LEVEL`` (DEBUG, INFO, WARNING) sets the level; INFO by default.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def console():
    """The rich console of status output (stderr), shared by log messages and progress bars."""
    from rich.console import Console

    return Console(stderr=True)


def is_tty() -> bool:
    return sys.stderr.isatty()


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler that writes to the current ``sys.stderr`` (which tests may replace)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: str | None = None) -> None:
    """Show coqat's INFO messages on stderr (once per process; later calls only set the level)."""
    logger = logging.getLogger("coqat")
    level = (level or os.environ.get("COQAT_LOG_LEVEL") or "INFO").upper()
    logger.setLevel(level)
    if any(getattr(h, "_coqat", False) for h in logger.handlers):
        return
    if is_tty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=console(), show_path=False, show_level=False, log_time_format="%H:%M:%S"
        )
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._coqat = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
