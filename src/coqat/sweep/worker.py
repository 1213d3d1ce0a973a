"""The worker loop: claim work from the store, train it, record the result; repeat.

``python -m coqat.sweep.worker STORE [ROOT]`` runs one worker (the local executor starts
``slots`` of them; the SLURM executor one per array task). Work is a trunk (train the shared FP
trunk to each branch step still needed, marking each checkpoint ready as soon as it is written)
or a run (train it, from its trunk checkpoint when one is ready, resuming from its own checkpoint
when an earlier attempt was interrupted). The worker exits when no run of its code version is
pending or running any more; with a deadline, as soon as nothing it could still claim fits
before it (the rest stays pending). Each finished run is recorded in the store the moment it
ends, with the number of workers that shared its device (``slots_per_device``), from which later
estimates measure the device's efficiency. The worker's estimates include the compilation of each
graph (model shape, FP or QAT at a bit width) this process has not trained yet.

While it holds a claim a heartbeat thread renews the lease. If the lease is lost (the worker
stalled for longer than the lease and another worker took the work over), the heartbeat
interrupts the work and the worker moves on without recording anything for it. SIGTERM and
Ctrl-C give the current claim back (pending) and stop the worker.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from coqat.sweep.store import Claim, Store, SweepSelection, new_owner

ENGINES = {"real": "coqat.train.run", "fake": "coqat.sweep.fake"}


def load_engine(engine: Any) -> Any:
    """An object with ``execute`` and ``train_trunk``: a module path, 'real'/'fake', or the
    object itself."""
    if isinstance(engine, str):
        return importlib.import_module(ENGINES.get(engine, engine))
    return engine


def engine_name(engine: Any) -> str:
    if isinstance(engine, str):
        return ENGINES.get(engine, engine)
    name = getattr(engine, "__name__", None)
    if not name or name not in sys.modules:
        raise ValueError("engine: pass a module path (string) for worker subprocesses")
    return name


class _Heartbeat:
    """Renews a claim's lease from a thread with its own connection."""

    def __init__(self, store_path: Path, claim: Claim, lease_s: float):
        self.store_path, self.claim, self.lease_s = store_path, claim, lease_s
        self.lost = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="coqat-heartbeat")

    def _run(self) -> None:
        st = None
        interval = max(0.05, self.lease_s / 4)
        while not self._stop.wait(interval):
            try:
                st = st or Store(self.store_path, create=False)
                ok = st.heartbeat(self.claim, self.lease_s)
            except Exception:  # noqa: BLE001 - busy/unreachable store: try again
                continue
            if not ok and not self._stop.is_set():
                self.lost = True
                _thread.interrupt_main()
                break
        if st is not None:
            st.close()

    def __enter__(self) -> _Heartbeat:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(timeout=10)


class _Stop(KeyboardInterrupt):
    pass


def _sigterm(signum, frame):  # pragma: no cover - exercised through subprocesses
    raise _Stop(f"signal {signum}")


def progress_marker(folder: str | Path) -> str:
    """A marker of the newest checkpoint in a run's or trunk's folder (files named
    ``checkpoint*`` or ``step_*``): ``name:mtime_ns:size``, '' when there is none. A new
    checkpoint (written, then renamed into place) changes it."""
    best = None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return ""
    for e in entries:
        if not (e.name.startswith("checkpoint") or e.name.startswith("step_")):
            continue
        try:
            st = e.stat()
        except OSError:
            continue
        if e.name.endswith(".tmp") or not e.is_file():
            continue
        cand = (st.st_mtime_ns, e.name, st.st_size)
        best = max(best, cand) if best else cand
    return f"{best[1]}:{best[0]}:{best[2]}" if best else ""


def work(
    store_path: str | Path,
    root_dir: str | Path | None = None,
    *,
    engine: Any = "coqat.train.run",
    version: str | None = None,
    owner: str | None = None,
    lease_s: float = 120.0,
    poll_s: float = 2.0,
    max_attempts: int = 5,
    sweep: SweepSelection = None,
    share: bool = True,
    keep_trunks: bool = False,
    progress: bool = False,
    wait: bool = True,
    log=None,
    deadline: float | None = None,
    efficiency: float | None = None,
    slots_per_device: int = 1,
    tokens_per_s: Any = None,
) -> dict[str, int]:
    """Run the worker loop until no work is left; returns counts of what this worker did.

    ``deadline`` (seconds since the epoch): claim only work whose estimate
    (:class:`coqat.sweep.estimate.Estimator` with ``efficiency``, ``slots_per_device`` and
    ``tokens_per_s``; with the overheads of a piece, and the compilation of the graphs this
    process has not trained yet) ends before it; check again before each trunk segment; stop
    when nothing else fits (the rest stays pending for the next call). ``sweep``: train only
    the runs of this sweep (or of any of these sweeps); None: every pending run of the store.
    """
    from coqat.config import from_dict
    from coqat.sweep.estimate import DEFAULT_EFFICIENCY, Estimator, device_label
    from coqat.sweep.keys import code_version
    from coqat.train.config import RunConfig

    store_path = Path(store_path)
    st = Store(store_path, create=False)
    root = Path(root_dir) if root_dir else st.root()
    if root is None:
        raise ValueError("root_dir: not given and the store records no run root")
    version = code_version() if version is None else version
    owner = owner or new_owner()
    eng = load_engine(engine)
    log = log or (lambda msg: print(f"[{owner}] {msg}", file=sys.stderr, flush=True))
    est = Estimator(
        slots_per_device=slots_per_device,
        efficiency=efficiency or DEFAULT_EFFICIENCY,
        table=tokens_per_s,
        device_of=lambda d: device_label(eng, d),
    )

    def progress_of(kind: str, folder: str) -> str:
        return progress_marker(root / folder)

    def left_s() -> float | None:
        return None if deadline is None else deadline - time.time()

    stats: Counter[str] = Counter()
    try:
        while True:
            c = hb = None
            try:  # a signal anywhere in here gives this worker's claim back
                est.measure(st)
                c = st.claim(
                    owner,
                    version=version,
                    lease_s=lease_s,
                    max_attempts=max_attempts,
                    sweep=sweep,
                    trunks=share,
                    seconds=est.seconds,
                    budget_s=left_s(),
                    progress_of=progress_of,
                    overhead=est.row_overhead_s,
                )
                if c is None:
                    cnt = st.counts(sweep=sweep, version=version)
                    if not wait or cnt["pending"] + cnt["running"] == 0:
                        break
                    if deadline is not None and not _may_unblock(
                        st, est, left_s(), version, sweep
                    ):
                        if st.left:
                            log(f"time limit: {len(st.left)} ready pieces do not fit in the "
                                f"{max(0.0, left_s()):.0f} s left; leaving them pending")
                        break
                    time.sleep(poll_s)
                    continue
                cfg = from_dict(RunConfig, c.config)
                hb = _Heartbeat(store_path, c, lease_s)
                with hb:
                    if c.kind == "trunk":
                        _do_trunk(st, eng, c, cfg, root, progress, log, stats, est, left_s)
                    else:
                        _do_run(st, eng, c, cfg, root, progress, log, stats, keep_trunks,
                                slots_per_device, est)
            except KeyboardInterrupt:
                if c is not None and hb is not None and hb.lost:
                    log(f"lost the lease of {c.kind} {c.key} (another worker took it over)")
                    stats["lost"] += 1
                    continue
                # also a claim committed but not yet returned when the signal came
                st.release_owner(owner)
                if c is not None:
                    log(f"interrupted; gave {c.kind} {c.key} back")
                raise
    finally:
        st.close()
    return dict(stats)


def _may_unblock(st: Store, est: Any, left: float | None, version: str, sweep: SweepSelection
                 ) -> bool:
    """Under a deadline, with nothing to claim: is it worth waiting? Only while another worker
    trains a trunk that a pending run waits for, and that run's own part would still fit."""
    from coqat.sweep.store import own_tokens

    if left is None or left <= 0:
        return False
    live = {t["key"] for t in st.trunks() if t["status"] == "running"}
    for r in st.rows(("pending",), sweep=sweep, version=version):
        if r["trunk"] not in live:
            continue
        own = est.seconds(r, own_tokens(r, branched=True))
        if own + est.overhead_s("run", est._config(r), branched=True) <= left:
            return True
    return False


def _do_trunk(st, eng, c, cfg, root, progress, log, stats, est=None, left_s=None) -> None:
    from coqat.sweep.store import tokens_per_step

    tdir = root / c.trunk_dir
    try:
        while True:
            needed = st.trunk_needed_steps(c.key)
            if not needed:
                break
            s = needed[0]
            have = st.trunk_ready_steps(c.key)
            ready = [k for k, p in have.items() if k < s and Path(p).exists()]
            left = left_s() if left_s else None
            if left is not None and est is not None:
                waiting = st.waiting_runs(c.key)
                row = waiting[0] if waiting else None
                if row is not None:
                    seg = est.seconds(row, (s - max(ready, default=0)) * tokens_per_step(row))
                    seg += est.overhead_s("trunk", cfg)  # compiling, when it is the first here
                    if seg > left:
                        log(f"trunk {c.key}: the segment to step {s} (est. {seg:.0f} s) does "
                            f"not fit in the {left:.0f} s left; leaving it pending")
                        st.release(c)
                        stats["trunk_left"] += 1
                        return
            log(f"trunk {c.key}: training to step {s}")
            paths = eng.train_trunk(cfg, tdir, sorted(set(ready) | {s}), progress=progress)
            st.trunk_step_ready(c, s, paths[s])
            stats["trunk_steps"] += 1
            if est is not None:
                est.trained("trunk", cfg)
        st.finish_trunk(c)
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - recorded; its runs then train alone
        err = traceback.format_exc()
        log(f"trunk {c.key} failed; its runs will train alone:\n{err}")
        st.finish_trunk(c, error=err)
        stats["trunk_failed"] += 1


def _do_run(st, eng, c, cfg, root, progress, log, stats, keep_trunks, slots_per_device=1,
            est=None) -> None:
    rdir = root / c.run_dir
    sf = c.start_from if c.start_from and Path(c.start_from).exists() else None
    if c.start_from and sf is None:
        log(f"run {c.key}: trunk checkpoint {c.start_from} is gone; training it alone")
    log(f"run {c.key}: {cfg.size or 'custom'} B={cfg.qat.bits:g} f={cfg.qat.fraction:g} "
        f"{cfg.qat.schedule} D={cfg.tokens:,} seed={cfg.seed}" + (f" from {sf}" if sf else ""))
    try:
        res = eng.execute(cfg, rdir, resume=True, start_from=sf, progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - recorded with its traceback
        err = traceback.format_exc()
        log(f"run {c.key} failed:\n{err}")
        st.fail(c.key, err)
        stats["failed"] += 1
        return
    finally:  # its graphs are compiled in this process now (also after a failure)
        if est is not None:
            est.trained("run", cfg, branched=sf is not None)
    status = res.get("status")
    if status in ("done", "diverged"):
        # the workers that shared the device: turns its wall time into a device efficiency
        st.complete(c.key, {**res, "slots_per_device": slots_per_device})
        stats[status] += 1
    else:
        st.fail(c.key, f"the engine returned status {status!r}")
        stats["failed"] += 1
    if c.trunk and not keep_trunks and st.trunk_finished(c.trunk):
        for p in st.drop_trunk_steps(c.trunk):
            Path(p).unlink(missing_ok=True)
        tdir = st.trunk_dir(c.trunk)
        if tdir:  # the trunk's periodic checkpoint
            for p in (root / tdir).glob("checkpoint*"):
                p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m coqat.sweep.worker",
        description="One sweep worker: claims trunks and runs from the store until none is left.",
    )
    p.add_argument("store", help="results store (SQLite file)")
    p.add_argument("root", nargs="?", default=None,
                   help="run root (default: the one recorded in the store)")
    p.add_argument("--engine", default="coqat.train.run",
                   help="module with execute/train_trunk ('fake' for a dry run)")
    p.add_argument("--code-version", default=None, help="claim runs of this code version")
    p.add_argument("--owner", default=None, help="owner tag (default: a fresh uuid)")
    p.add_argument("--lease", type=float, default=120.0, help="lease seconds")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between claims when waiting")
    p.add_argument("--max-attempts", type=int, default=5, help="attempts before a run fails")
    p.add_argument("--sweep", action="append", default=None,
                   help="only runs of this sweep (repeatable: of any of these sweeps)")
    p.add_argument("--no-share", action="store_true", help="train every run alone")
    p.add_argument("--keep-trunks", action="store_true", help="keep trunk checkpoints")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds since the epoch: claim only work estimated to end before it")
    p.add_argument("--efficiency", type=float, default=None,
                   help="device efficiency for time estimates when the store has no measurement")
    p.add_argument("--slots-per-device", type=int, default=1,
                   help="workers sharing this worker's device (they share its throughput)")
    p.add_argument("--tokens-per-s", action="append", default=[], metavar="[SIZE=]TOKENS_PER_S",
                   help="throughput table for time estimates (as coqat sweep plan)")
    args = p.parse_args(argv)
    from coqat.sweep.throughput import parse_tokens_per_s

    signal.signal(signal.SIGTERM, _sigterm)
    owner = new_owner(args.owner) if args.owner else None
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"worker {os.getpid()} ({args.owner or 'no tag'}) starts"
          + (f" on CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""), file=sys.stderr,
          flush=True)
    try:
        stats = work(
            args.store, args.root, engine=args.engine, version=args.code_version, owner=owner,
            lease_s=args.lease, poll_s=args.poll, max_attempts=args.max_attempts,
            sweep=args.sweep, share=not args.no_share, keep_trunks=args.keep_trunks,
            deadline=args.deadline, efficiency=args.efficiency,
            slots_per_device=args.slots_per_device,
            tokens_per_s=parse_tokens_per_s(args.tokens_per_s),
        )
    except KeyboardInterrupt:
        return 130
    print(f"worker {os.getpid()} finished: {stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
