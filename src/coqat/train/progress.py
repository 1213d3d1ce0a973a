"""Progress of a run, on a terminal or not: phase (FP / QAT / eval), step, tokens/s of training
alone, ETA, the last training and validation loss.

On a terminal a rich bar (on stderr, shared with the log messages of :mod:`coqat.log`);
otherwise a log line at every phase change and every ``every_s`` seconds, so a batch job's log
shows the same. Evaluation time is kept apart: tokens/s counts training time only, and the ETA
adds the evaluations still to come at their measured cost.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger("coqat.train")

PHASES = {"fp": "FP", "qat": "QAT", "eval": "eval"}


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class RunProgress:
    """Tracks one run's progress. ``steps``: total optimizer steps; ``start``: the step it
    starts (or resumes) at; ``evals``: evaluations planned in the steps still to come."""

    def __init__(
        self,
        steps: int,
        tokens_per_step: int,
        start: int = 0,
        *,
        label: str = "train",
        evals: int = 0,
        tty: bool | None = None,
        every_s: float = 30.0,
    ):
        from coqat.log import is_tty

        self.steps, self.tps, self.start = steps, tokens_per_step, start
        self.label = label
        self.step = start
        self.phase_name = "fp"
        self.loss = float("nan")
        self.val = float("nan")
        self.evals_left = evals
        self.t0 = time.perf_counter()
        self.eval_s = 0.0
        self.n_evals = 0
        self._eval_t: float | None = None
        self.every_s = every_s
        self._last_line = self.t0
        self._bar: Any = None
        if is_tty() if tty is None else tty:
            self._bar = _Bar(self)

    # ---------------------------------------------------------------------------- numbers
    @property
    def train_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_s - self._eval_running()

    def _eval_running(self) -> float:
        return time.perf_counter() - self._eval_t if self._eval_t is not None else 0.0

    @property
    def tokens_per_s(self) -> float:
        t = self.train_seconds
        return (self.step - self.start) * self.tps / t if t > 0 and self.step > self.start else 0.0

    @property
    def eta_s(self) -> float:
        rate = self.tokens_per_s
        if rate <= 0:
            return float("nan")
        per_eval = self.eval_s / self.n_evals if self.n_evals else 0.0
        return (self.steps - self.step) * self.tps / rate + self.evals_left * per_eval

    def line(self) -> str:
        pct = 100.0 * self.step / max(self.steps, 1)
        parts = [
            f"{self.label} {PHASES.get(self.phase_name, self.phase_name)}",
            f"step {self.step:,}/{self.steps:,} ({pct:.0f}%)",
        ]
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if math.isfinite(self.val):
            parts.append(f"val {self.val:.4f}")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:,.0f} tok/s")
            parts.append(f"ETA {_duration(self.eta_s)}")
        return ", ".join(parts)

    # ---------------------------------------------------------------------------- events
    def set_phase(self, name: str) -> None:
        if name != self.phase_name:
            self.phase_name = name
            if self._bar is None and name != "eval":
                log.info("%s", self.line())
        self._refresh()

    def update(self, step: int, loss: float | None = None) -> None:
        self.step = step
        if loss is not None:
            self.loss = loss
        self._refresh()
        now = time.perf_counter()
        if self._bar is None and now - self._last_line >= self.every_s:
            self._last_line = now
            log.info("%s", self.line())

    def eval_begin(self) -> None:
        self._eval_t = time.perf_counter()
        self._resume_phase = self.phase_name
        self.phase_name = "eval"
        self._refresh()

    def eval_end(self, loss: float | None = None) -> None:
        if self._eval_t is not None:
            self.eval_s += time.perf_counter() - self._eval_t
            self._eval_t = None
            self.n_evals += 1
            self.evals_left = max(0, self.evals_left - 1)
        if loss is not None:
            self.val = loss
        self.phase_name = getattr(self, "_resume_phase", self.phase_name)
        self._refresh()

    def message(self, text: str, *args: Any) -> None:
        log.info(text, *args)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.refresh()


class _Bar:
    """The rich bar of a RunProgress on a terminal."""

    def __init__(self, rp: RunProgress):
        from rich.progress import BarColumn, Progress, TextColumn

        from coqat.log import console

        self.rp = rp
        self.p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            console=console(),
            transient=False,
        )
        self.task = self.p.add_task(rp.label, total=rp.steps, completed=rp.start, info="")
        self.p.start()

    def refresh(self) -> None:
        rp = self.rp
        desc = f"{rp.label} {PHASES.get(rp.phase_name, rp.phase_name)}"
        info = rp.line().split(", ", 1)[1] if ", " in rp.line() else ""
        self.p.update(self.task, completed=rp.step, description=desc, info=info)

    def close(self) -> None:
        self.p.stop()
