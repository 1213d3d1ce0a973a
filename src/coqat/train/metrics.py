"""Metrics as JSON Lines, one object per event; a TensorBoard mirror with COQAT_TENSORBOARD=1."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    """Append-only JSONL log. On resume, lines past ``resume_step`` (written after the checkpoint
    the run resumes from) are dropped so that every step appears once."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a kill
                if rec.get("step", 0) <= resume_step and not rec.get("final"):
                    keep.append(line)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, self.path)
        self._f = open(self.path, "a")
        self._tb = _optional_tensorboard(self.path.parent)

    def write(self, **rec: Any) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in rec.items()}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, int | float) and k not in ("step", "tokens"):
                    self._tb.add_scalar(f"{rec.get('phase', 'run')}/{k}", v, rec.get("step", 0))

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _optional_tensorboard(logdir: Path):
    if os.environ.get("COQAT_TENSORBOARD", "") not in ("1", "true"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(logdir / "tb"))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
