"""Time estimates of sweep work, and what fits before a deadline.

A piece of work is a run's own part (after its branch step when it branches from a trunk
checkpoint, else the whole run) or a trunk segment (from its latest checkpoint to the next branch
step). Its time on one worker is ``tokens / (tokens_per_s x efficiency / slots_per_device)``
plus its overheads (:meth:`Estimator.overhead_s`):

* ``tokens_per_s``: :func:`coqat.sweep.throughput.tokens_per_s` (the shipped benchmark table, or
  the user's ``--tokens-per-s``);
* ``efficiency``: the fraction of that throughput one device reaches in steady training,
  measured from the store's finished runs on the same device (median of their steady tokens/s,
  ``tokens_per_s_steady``, else trained tokens / wall time, over the table throughput, times the
  workers that shared their device, which the worker records with each result as
  ``slots_per_device``; runs without it, e.g. imported ones, do not count; by size when that
  size has finished runs there), else the ``efficiency`` given (``--efficiency``, default
  :data:`DEFAULT_EFFICIENCY`);
* ``slots_per_device``: workers sharing one device share its throughput;
* overheads (:func:`coqat.sweep.throughput.overheads`, GPU runs): ``piece_s`` for every piece,
  and the compilation of each graph the piece trains that its worker process has not trained yet
  (the FP step of its model shape, the QAT step at its bit width): the estimator remembers what
  its worker trained (:meth:`Estimator.trained`), so a first run of a shape in a process includes
  its compile time and a second one does not.

:func:`simulate` plays the claim order of :meth:`coqat.sweep.store.Store.claim` (branches whose
checkpoint is ready first, then trunks and lone runs, longest first;
a piece is claimed only when its estimate ends before the deadline; a trunk checks the time
before each segment) on K workers, for ``coqat sweep plan --estimate``. :func:`left_over` says
what a time-limited ``coqat sweep run`` left pending and why.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from coqat.sweep.store import SweepSelection, own_tokens, tokens_per_step

#: fraction of the benchmark throughput one device reaches in steady training when the store has
#: no finished run on it: the 2026-11-30 design calls (one worker per H200, batch 128 x 512,
#: experiments/reference/results/2026-11-30-c2/c3/c5) trained at 0.83-0.86 of the table's
#: tokens/s (4m-50m; 90m 1.02) once compiled; compilation and evaluation are overheads apart.
DEFAULT_EFFICIENCY = 0.8


class Estimator:
    """Seconds of work on one worker (see module doc).

    ``device_of(cfg_device)``: the device label (as the engine records it in ``device``) a run
    with ``cfg.device`` trains on here; default: the value itself.
    """

    def __init__(
        self,
        *,
        slots_per_device: int = 1,
        efficiency: float = DEFAULT_EFFICIENCY,
        table: dict[str, float] | float | None = None,
        device_of: Any = None,
        overheads: bool = True,
    ):
        if not (efficiency > 0 and math.isfinite(efficiency)):
            from coqat.errors import ConfigError

            raise ConfigError("--efficiency", f"must be a number > 0, got {efficiency!r}")
        self.slots_per_device = max(1, int(slots_per_device))
        self.default_efficiency = float(efficiency)
        self.table = table if isinstance(table, dict) else None
        self.rate = float(table) if isinstance(table, int | float) and table else None
        self.device_of = device_of or (lambda d: d)
        self.with_overheads = bool(overheads)
        self.compiled: set[tuple] = set()  # graphs this worker process has trained
        self._cfg: dict[str, Any] = {}
        self._alone: dict[str, float] = {}
        self._measured_runs: dict[str, tuple[str, str, float]] = {}
        self.measured: dict[tuple[str, str | None], float] = {}

    # ---------------------------------------------------------------- throughput of one run
    def _config(self, row: Any) -> Any:
        key = row["key"]
        if key not in self._cfg:
            from coqat.config import from_dict
            from coqat.train.config import RunConfig

            self._cfg[key] = from_dict(RunConfig, json.loads(row["config"]))
        return self._cfg[key]

    def alone_tokens_per_s(self, cfg: Any) -> float:
        """Table throughput of ``cfg`` alone on its device (efficiency 1)."""
        from coqat.sweep.throughput import tokens_per_s

        return tokens_per_s(cfg, self.table, self.rate)

    def efficiency(self, device: str, size: str | None) -> float:
        """Device efficiency: measured for (device, size), else for the device, else default."""
        return self.measured.get(
            (device, size), self.measured.get((device, None), self.default_efficiency)
        )

    def worker_tokens_per_s(self, cfg: Any) -> float:
        """What one worker gets: table x efficiency / workers sharing the device."""
        dev = self.device_of(cfg.device)
        return (
            self.alone_tokens_per_s(cfg) * self.efficiency(dev, cfg.size) / self.slots_per_device
        )

    def seconds_cfg(self, cfg: Any, tokens: int) -> float:
        return tokens / self.worker_tokens_per_s(cfg)

    def seconds(self, row: Any, tokens: int) -> float:
        """Seconds for ``tokens`` of the run in store row ``row`` (the store's cost function)."""
        key = row["key"]
        if key not in self._alone:
            self._alone[key] = self.worker_tokens_per_s(self._config(row))
        return tokens / self._alone[key]

    # ---------------------------------------------------------------- overheads
    def overheads(self, cfg: Any) -> dict[str, float]:
        """:func:`coqat.sweep.throughput.overheads` of ``cfg`` (all 0 with ``overheads=False``)."""
        from coqat.sweep.throughput import OVERHEAD_KEYS, overheads

        return overheads(cfg) if self.with_overheads else dict.fromkeys(OVERHEAD_KEYS, 0.0)

    @staticmethod
    def graphs(kind: str, cfg: Any, *, branched: bool = False) -> set[tuple]:
        """The compiled graphs a piece trains: ("fp", shape) when it trains FP steps (a trunk
        segment; a run before its QAT start, from its branch step when ``branched``), ("qat",
        shape, bits...) when it trains QAT steps."""
        from coqat.train.phases import plan_phases

        shape = (repr(cfg.model), cfg.optim.micro, cfg.precision, cfg.compile_mode)
        if kind == "trunk":
            return {("fp", *shape)}
        plan = plan_phases(cfg)
        start = plan.branch_step if branched else 0
        out = set()
        if plan.fp_steps > start:
            out.add(("fp", *shape))
        if plan.qat_steps > 0:
            q = cfg.qat
            out.add(("qat", *shape, q.bits, q.granularity, q.group_size, q.embed_bits))
        return out

    def overhead_s(self, kind: str, cfg: Any, *, branched: bool = False,
                   compiled: set[tuple] | None = None) -> float:
        """Seconds a piece costs besides its tokens: ``piece_s`` plus the compilation of each of
        its :meth:`graphs` not in ``compiled`` (default: what this worker trained)."""
        ov = self.overheads(cfg)
        done = self.compiled if compiled is None else compiled
        s = ov["piece_s"]
        for g in self.graphs(kind, cfg, branched=branched) - done:
            s += ov["compile_fp_s"] if g[0] == "fp" else ov["compile_qat_s"]
        return s

    def trained(self, kind: str, cfg: Any, *, branched: bool = False) -> None:
        """Remember that this worker process trained (so compiled) the piece's graphs."""
        self.compiled |= self.graphs(kind, cfg, branched=branched)

    def row_overhead_s(self, kind: str, row: Any) -> float:
        """:meth:`overhead_s` of a store row (the store's ``overhead`` callback): a trunk row,
        or a runs row (branched when its branch checkpoint is ready, ``row['ckpt']``)."""
        if kind == "trunk":  # its config parsed once, like a run's (trunk keys differ from runs')
            return self.overhead_s("trunk", self._config(row))
        keys = row.keys() if hasattr(row, "keys") else ()
        branched = bool(row["trunk"] and "ckpt" in keys and row["ckpt"])
        return self.overhead_s("run", self._config(row), branched=branched)

    # ---------------------------------------------------------------- measurement
    def measure(self, store: Any) -> dict[tuple[str, str | None], float]:
        """Re-measure device efficiencies from the store's finished runs (see module doc)."""
        from coqat.train.phases import plan_phases

        rows = store.db.execute(
            "SELECT key, size, device, config, D_total, trunk, branch_step, wall, result "
            "FROM runs WHERE status='done' AND wall > 0 AND device IS NOT NULL"
        ).fetchall()
        for r in rows:
            if r["key"] in self._measured_runs:
                continue
            try:
                res = json.loads(r["result"] or "{}")
                if not res.get("slots_per_device"):
                    continue  # how many workers shared its device is unknown: not a measurement
                cfg = self._config(r)
                rate = res.get("tokens_per_s_steady")
                if not rate:  # no steady figure: the whole wall time (overheads included)
                    tokens = cfg.tokens_per_step * plan_phases(cfg).steps
                    if res.get("branched_from"):  # its wall time counts its own part only
                        tokens -= cfg.tokens_per_step * plan_phases(cfg).branch_step
                    rate = tokens / r["wall"]
                eff = float(rate) / self.alone_tokens_per_s(cfg)
                eff *= float(res["slots_per_device"])
            except Exception:  # noqa: BLE001 - a row of another schema: not a measurement
                continue
            if math.isfinite(eff) and eff > 0:
                self._measured_runs[r["key"]] = (r["device"], r["size"], eff)
        by: dict[tuple[str, str | None], list[float]] = {}
        for dev, size, eff in self._measured_runs.values():
            by.setdefault((dev, size), []).append(eff)
            by.setdefault((dev, None), []).append(eff)
        self.measured = {k: statistics.median(v) for k, v in by.items()}
        self._alone.clear()
        return self.measured


def device_label(engine: Any, cfg_device: str) -> str:
    """The device label an engine records for runs with ``cfg.device`` on this machine: the
    engine's ``device_name(cfg_device)`` when it has one, else (the real engine) the CUDA device
    name when CUDA is used, else "cpu"."""
    f = getattr(engine, "device_name", None)
    if f is not None:
        return f(cfg_device)
    if cfg_device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


# -------------------------------------------------------------------- the schedule of a call
@dataclass
class Piece:
    kind: str  # "trunk" (one segment) or "run"
    key: str
    label: str
    est_s: float
    worker: int | None = None
    start: float = 0.0
    end: float = 0.0


@dataclass
class Schedule:
    """What :func:`simulate` predicts: pieces with worker and times; runs left and why."""

    pieces: list[Piece] = field(default_factory=list)
    left: list[tuple[Any, str]] = field(default_factory=list)  # (PlannedRun, reason)
    workers: int = 1
    budget_s: float | None = None

    @property
    def wall_s(self) -> float:
        return max((p.end for p in self.pieces), default=0.0)


def _run_label(cfg: Any) -> str:
    return (
        f"{cfg.size or 'custom'} B={cfg.qat.bits:g} f={cfg.qat.fraction:g} {cfg.qat.schedule} "
        f"D={cfg.tokens:,} seed={cfg.seed}"
    )


def simulate(plan: Any, est: Estimator, workers: int = 1, budget_s: float | None = None
             ) -> Schedule:
    """Play the store's claim order on ``workers`` workers (see module doc) for a
    :class:`coqat.sweep.tree.SweepPlan`: every worker, when free, takes the longest ready piece
    that ends before ``budget_s``; a trunk worker trains segment after segment while the next
    one fits, and each branch checkpoint is ready when its segment ends; a worker with nothing
    ready waits for the next checkpoint. Every worker is a new process: it starts after
    ``process_start_s`` and pays each graph's compilation once (:meth:`Estimator.overhead_s`).
    Deterministic."""
    runs = list(plan.runs)
    own = {}
    for i, r in enumerate(runs):
        steps = r.own_steps if r.trunk else r.steps
        own[i] = est.seconds_cfg(r.cfg, steps * r.tokens_per_step)
    order = {}  # registration order of the trunks: the store's tie-break
    for i, r in enumerate(runs):
        if r.trunk:
            order.setdefault(r.trunk, i)
    ready_at: dict[tuple[str, int], float] = {}  # (trunk, step) -> time the checkpoint exists
    trunk_busy: dict[str, float] = {}
    trunk_done: dict[str, int] = {}  # latest step trained
    claimed: set[int] = set()
    start_s = max((est.overheads(r.cfg)["process_start_s"] for r in runs), default=0.0)
    clock = [start_s] * max(1, workers)
    done = [False] * len(clock)
    compiled: list[set[tuple]] = [set() for _ in clock]  # graphs each worker process trained
    sched = Schedule(workers=len(clock), budget_s=budget_s)

    def seg_s(t: Any, a: int, b: int) -> float:
        return est.seconds_cfg(t.cfg, (b - a) * t.tokens_per_step)

    def extra(kind: str, cfg: Any, w: int | None, branched: bool = False) -> float:
        """Overheads of a piece on worker ``w`` (None: a new worker process)."""
        return est.overhead_s(kind, cfg, branched=branched,
                              compiled=set() if w is None else compiled[w])

    def waiting(k: str, now: float) -> list[int]:
        return sorted(
            (i for i, r in enumerate(runs)
             if r.trunk == k and i not in claimed and (k, r.branch_step) not in ready_at),
            key=lambda i: (runs[i].branch_step, i),
        )

    def fits(now: float, s: float) -> bool:
        return budget_s is None or now + s <= budget_s

    while not all(done):
        w = min((v for v in range(len(clock)) if not done[v]), key=lambda v: (clock[v], v))
        now = clock[w]
        cands = []
        for k, t in sorted(plan.trunks.items()):
            if trunk_busy.get(k, 0.0) > now:
                continue
            wt = waiting(k, now)
            if not wt:
                continue
            first, last = runs[wt[0]].branch_step, runs[wt[-1]].branch_step
            start = trunk_done.get(k, 0)
            total = seg_s(t, start, last) + sum(own[i] for i in wt)
            first_s = seg_s(t, start, first) + extra("trunk", t.cfg, w)
            cands.append((1, -total, 0, order[k], "trunk", first_s, k))
        for i, r in enumerate(runs):
            if i in claimed:
                continue
            if r.trunk and ready_at.get((r.trunk, r.branch_step), math.inf) > now:
                continue
            # a branch whose checkpoint is ready goes first (Store.claim)
            s_i = own[i] + extra("run", r.cfg, w, branched=bool(r.trunk))
            cands.append((0 if r.trunk else 1, -own[i], 1, i, "run", s_i, i))
        cands.sort(key=lambda c: c[:4])
        pick = next((c for c in cands if fits(now, c[5])), None)
        if pick is not None and pick[4] == "trunk":
            k, t = pick[6], plan.trunks[pick[6]]
            clock_w = now
            while (wt := waiting(k, clock_w)):
                a, b = trunk_done.get(k, 0), runs[wt[0]].branch_step
                s = seg_s(t, a, b) + extra("trunk", t.cfg, w)
                if not fits(clock_w, s):
                    break
                compiled[w] |= est.graphs("trunk", t.cfg)
                sched.pieces.append(
                    Piece("trunk", k, f"trunk {k} to step {b}", s, w, clock_w, clock_w + s)
                )
                clock_w += s
                ready_at[(k, b)] = clock_w
                trunk_done[k] = b
            trunk_busy[k] = clock_w
            clock[w] = clock_w
            continue
        if pick is not None:
            i, s_i = pick[6], pick[5]
            claimed.add(i)
            sched.pieces.append(
                Piece("run", str(i), _run_label(runs[i].cfg), s_i, w, now, now + s_i)
            )
            compiled[w] |= est.graphs("run", runs[i].cfg, branched=bool(runs[i].trunk))
            clock[w] = now + s_i
            continue
        later = [x for x in list(ready_at.values()) + list(trunk_busy.values()) + clock
                 if x > now]
        if later:
            clock[w] = min(later)
        else:
            done[w] = True
    for i, r in enumerate(runs):
        if i in claimed:
            continue
        if r.trunk and (r.trunk, r.branch_step) not in ready_at:
            t = plan.trunks[r.trunk]
            a = trunk_done.get(r.trunk, 0)
            seg = seg_s(t, a, r.branch_step) + extra("trunk", t.cfg, None)
            why = (
                f"waits for trunk {r.trunk}: its segment to step {r.branch_step} "
                f"(est. {_fmt(seg)} from step {a}) does not fit"
            )
        else:
            why = f"does not fit (est. {_fmt(own[i] + extra('run', r.cfg, None, bool(r.trunk)))})"
        sched.left.append((r, why))
    return sched


def format_schedule(sched: Schedule, *, per_piece: bool = True) -> str:
    lines = []
    if per_piece:
        for p in sorted(sched.pieces, key=lambda p: (p.start, p.worker or 0)):
            lines.append(
                f"  worker {p.worker}: {_fmt(p.start):>9} - {_fmt(p.end):>9}  {p.kind:<5} "
                f"{p.label}  (est. {_fmt(p.est_s)})"
            )
    n_runs = sum(1 for p in sched.pieces if p.kind == "run")
    limit = f" of the {_fmt(sched.budget_s)} limit" if sched.budget_s is not None else ""
    lines.append(
        f"estimate on {sched.workers} worker(s): {n_runs} runs and "
        f"{sum(1 for p in sched.pieces if p.kind == 'trunk')} trunk segments in "
        f"{_fmt(sched.wall_s)}{limit}; {len(sched.left)} runs would not fit"
    )
    for r, why in sched.left:
        lines.append(f"  left: {_run_label(r.cfg)}: {why}")
    return "\n".join(lines)


# -------------------------------------------------------------------- what a call left
def left_over(store: Any, est: Estimator, *, version: str | None = None,
              sweep: SweepSelection = None, budget_s: float | None = None) -> list[dict[str, Any]]:
    """The pending runs of a store and why a time-limited call left them: ``[{key, label,
    est_s, reason}]``, ``est_s`` being the piece that did not fit (the run's own part, or the
    trunk segment it waits for, overheads of a new worker process included). ``budget_s``:
    seconds left before the deadline."""
    out = []
    trunk_status = {t["key"]: t["status"] for t in store.trunks()}
    if budget_s is None:
        when = ""
    elif budget_s > 0:
        when = f", {_fmt(budget_s)} left"
    else:
        when = ", the time limit was reached"
    for r in store.rows(("pending",), sweep=sweep, version=version):
        ready_steps = store.trunk_ready_steps(r["trunk"]) if r["trunk"] else {}
        branched = bool(r["trunk"] and r["branch_step"] in ready_steps)
        cfg = est._config(r)
        own = est.seconds(r, own_tokens(r, branched))
        own += est.overhead_s("run", cfg, branched=branched, compiled=set())
        item = {"key": r["key"], "label": _run_label(cfg), "est_s": own}
        if r["trunk"] and not branched and trunk_status.get(r["trunk"]) != "failed":
            start = max((s for s in ready_steps if s < r["branch_step"]), default=0)
            seg = est.seconds(r, (r["branch_step"] - start) * tokens_per_step(r))
            seg += est.overhead_s("trunk", cfg, compiled=set())
            item["est_s"] = seg
            item["reason"] = (
                f"waits for trunk {r['trunk']} (its segment to step {r['branch_step']}: est. "
                f"{_fmt(seg)}{when})"
            )
        else:
            item["reason"] = f"not started (est. {_fmt(own)}{when})"
        out.append(item)
    return out


def _fmt(sec: float | None) -> str:
    from coqat.sweep.tree import _hms

    if sec is None or not math.isfinite(sec):
        return "-"
    return _hms(sec)
