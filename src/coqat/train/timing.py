"""Where a run's time goes: steady-state training, warm-up, evaluation and checkpoints.

The counters live in ``Trainer.info["timing"]`` (saved in checkpoints, so a resumed run keeps
them). The training loop closes a *lap* at every logged step, where it reads the loss and so waits
for the device; a lap's time minus the evaluation and checkpoint time inside it (both measured
between device synchronisations) is training time. Laps that include one of the first
``WARMUP_STEPS`` steps after a start, a resume or the switch to QAT (compilation, allocator
warm-up) count as warm-up; the others are the steady state. ``tokens_per_s_steady`` = steady
tokens / steady seconds is the figure to judge scaling by; a run's ``tokens_per_s`` divides all
its tokens by the whole training wall time instead, compilation and evaluation included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WARMUP_STEPS = 3
_KEYS = ("steady_steps", "steady_s", "warmup_s", "eval_s", "checkpoint_s")


class Clock:
    """Lap timer over the counters ``state()`` returns (a dict it fills in)."""

    def __init__(self, state: Callable[[], dict[str, float]], sync: Callable[[], None] | None):
        self._state = state
        self._sync = sync or (lambda: None)
        self._segment = 0
        self._last: tuple[int, float] | None = None
        self._paused_at_lap = 0.0

    def state(self) -> dict[str, float]:
        s = self._state()
        for k in _KEYS:
            s.setdefault(k, 0.0)
        return s

    def _paused(self) -> float:
        s = self.state()
        return s["eval_s"] + s["checkpoint_s"]

    def start(self, step: int) -> None:
        """A training segment begins at ``step`` (its first steps are warm-up)."""
        self._segment = step
        self._last = (step, time.perf_counter())
        self._paused_at_lap = self._paused()

    def lap(self, step: int) -> None:
        """Close the lap ending at ``step`` (call after the device finished it)."""
        if self._last is None:
            return self.start(step)
        s0, t0 = self._last
        now = time.perf_counter()
        dt = now - t0 - (self._paused() - self._paused_at_lap)
        st = self.state()
        if s0 < self._segment + WARMUP_STEPS:
            st["warmup_s"] += dt
        else:
            st["steady_steps"] += step - s0
            st["steady_s"] += dt
        self._last = (step, now)
        self._paused_at_lap = self._paused()

    def begin(self) -> float:
        """Start timing an evaluation or checkpoint (after the queued training work)."""
        self._sync()
        return time.perf_counter()

    def end(self, what: str, t0: float) -> None:
        """Add the time since ``begin`` to ``what`` ('eval' or 'checkpoint')."""
        self._sync()
        self.state()[f"{what}_s"] += time.perf_counter() - t0

    def summary(self, tokens_per_step: int) -> dict[str, Any]:
        s = self.state()
        steady = None  # no step after the warm-up ones
        if s["steady_s"] > 0:
            steady = s["steady_steps"] * tokens_per_step / s["steady_s"]
        return {
            "tokens_per_s_steady": steady,
            "wall_warmup": s["warmup_s"],
            "wall_eval": s["eval_s"],
            "wall_checkpoint": s["checkpoint_s"],
        }
