"""Where a result came from: the code's git commit (torch-free, cached)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the coqat source tree, or ``$COQAT_COMMIT`` when set (a working tree
    copied to a remote machine has no .git, or a stale one); '' when neither is known."""
    env = os.environ.get("COQAT_COMMIT", "").strip()
    if env:  # set explicitly: wins over a (possibly stale) .git copied along with the tree
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
