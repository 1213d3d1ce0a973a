"""Live sweep progress: a rich table (done / running / pending / failed, current runs, ETA) on a
terminal, plain log lines otherwise. Reads the store from a thread with its own connection."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coqat.sweep.store import SweepSelection


def snapshot(
    store_path: str | Path,
    *,
    sweep: SweepSelection = None,
    version: str | None = None,
    slots: int = 1,
    tokens_per_s: dict[str, float] | float | None = None,
) -> dict[str, Any]:
    """Counts, the running runs and an ETA for the sweep in the store.

    ETA = tokens still to train (pending and running runs, without the part they share with a
    trunk) / (measured tokens/s of finished runs, or the default table) / slots.
    """
    from coqat.sweep.store import Store

    with Store(store_path, readonly=True) as st:
        counts = st.counts(sweep=sweep, version=version)
        rows = st.rows(("pending", "running", "done"), sweep=sweep, version=version)
    done = [r for r in rows if r["status"] == "done" and (r["wall"] or 0) > 0]
    measured = sum(r["D_total"] for r in done) / sum(r["wall"] for r in done) if done else None
    remaining_s = 0.0
    now = time.time()
    running = []
    for r in rows:
        if r["status"] == "done":
            continue
        d = r["D_total"] or 0
        own = d - (r["branch_step"] or 0) * _tps(r) if r["trunk"] else d
        rate = measured or _default_rate(r, tokens_per_s)
        remaining_s += own / rate
        if r["status"] == "running":
            running.append(
                {
                    "key": r["key"],
                    "size": r["size"],
                    "bits": r["bits"],
                    "f": r["f"],
                    "schedule": r["schedule"],
                    "D_total": r["D_total"],
                    "owner": r["owner"],
                    "elapsed": now - (r["started"] or now),
                    "attempts": r["attempts"],
                }
            )
    return {
        "counts": counts,
        "running": running,
        "eta_s": remaining_s / max(1, slots),
        "tokens_per_s": measured,
    }


def _tps(row: dict[str, Any]) -> int:
    cfg = json.loads(row["config"])
    return int(cfg["optim"]["batch_size"]) * int(cfg["model"]["seq_len"])


def _default_rate(row: dict[str, Any], tokens_per_s: Any) -> float:
    if isinstance(tokens_per_s, int | float) and tokens_per_s:
        return float(tokens_per_s)
    from coqat.config import from_dict
    from coqat.sweep.throughput import tokens_per_s as tokens_per_s_for
    from coqat.train.config import RunConfig

    cfg = from_dict(RunConfig, json.loads(row["config"]))
    return tokens_per_s_for(cfg, tokens_per_s if isinstance(tokens_per_s, dict) else None)


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def render(snap: dict[str, Any], title: str = "sweep"):
    from rich.console import Group
    from rich.table import Table

    c = snap["counts"]
    summary = Table(title=title, show_edge=False)
    for k in ("done", "running", "pending", "diverged", "failed", "ETA"):
        summary.add_column(k, justify="right")
    summary.add_row(
        *(str(c.get(k, 0)) for k in ("done", "running", "pending", "diverged", "failed")),
        _fmt_s(snap["eta_s"]),
    )
    cur = Table(show_edge=False)
    for k in ("run", "size", "B", "f", "schedule", "D", "elapsed", "try"):
        cur.add_column(k)
    for r in snap["running"]:
        cur.add_row(
            r["key"], str(r["size"]), f"{r['bits']:g}", f"{r['f']:.3f}", str(r["schedule"]),
            f"{r['D_total']:,}", _fmt_s(r["elapsed"]), str(r["attempts"]),
        )
    return Group(summary, cur) if snap["running"] else summary


def log_line(snap: dict[str, Any]) -> str:
    c = snap["counts"]
    return (
        f"sweep: {c['done']} done, {c['running']} running, {c['pending']} pending, "
        f"{c['diverged']} diverged, {c['failed']} failed; ETA {_fmt_s(snap['eta_s'])}"
    )


class Monitor:
    """Shows progress until :meth:`stop`: a live table on a TTY, else a log line whenever the
    counts change (and at least every ``log_every`` seconds)."""

    def __init__(
        self,
        store_path: str | Path,
        *,
        sweep: SweepSelection = None,
        version: str | None = None,
        slots: int = 1,
        tokens_per_s: Any = None,
        interval: float = 1.0,
        log_every: float = 60.0,
        stream=None,
    ):
        self.kw = dict(sweep=sweep, version=version, slots=slots, tokens_per_s=tokens_per_s)
        self.store_path = store_path
        self.interval, self.log_every = interval, log_every
        self.stream = stream or sys.stderr
        names = [sweep] if isinstance(sweep, str) else list(sweep or ())
        self.title = f"sweep {', '.join(names)}" if names else "sweep"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="coqat-progress")

    def _snap(self) -> dict[str, Any] | None:
        try:
            return snapshot(self.store_path, **self.kw)
        except Exception:  # noqa: BLE001 - a busy store: show the next one
            return None

    def _run(self) -> None:
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            with Live(console=Console(file=self.stream), refresh_per_second=2) as live:
                while True:
                    s = self._snap()
                    if s is not None:
                        live.update(render(s, self.title))
                    if self._stop.wait(self.interval):
                        break
            return
        last, last_t = None, 0.0
        while True:
            s = self._snap()
            if s is not None:
                line = log_line(s)
                if line.split("; ETA")[0] != last or time.time() - last_t > self.log_every:
                    print(line, file=self.stream, flush=True)
                    last, last_t = line.split("; ETA")[0], time.time()
            if self._stop.wait(self.interval):
                break

    def start(self) -> Monitor:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
