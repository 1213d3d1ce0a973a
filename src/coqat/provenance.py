"""Where a result came from: the code's git commit (torch-free, cached)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the coqat source tree; ``$COQAT_COMMIT`` where there is no git checkout
    (e.g. a copied working tree on a remote machine), else ''."""
    env = os.environ.get("COQAT_COMMIT", "").strip()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else env
    except (OSError, subprocess.SubprocessError):
        return env
