"""Run a sweep: register its runs in the store, then let workers claim and train them.

* ``executor="local"``: ``slots`` workers on this machine. ``slots=1`` runs the worker loop in
  this process; more slots start ``python -m coqat.sweep.worker`` processes (logs in
  ``ROOT/logs/``), restarting one that dies while work is left, and spread them over the GPUs
  round-robin through ``CUDA_VISIBLE_DEVICES`` (``devices``: "auto" = every visible GPU when there
  are two or more; on one H200 machine of two, two slices on two GPUs did twice the work of one
  per second held, experiments/reference/README.md 7.).
* ``executor="slurm"``: a SLURM job array of ``slots`` workers through submitit (optional:
  ``pip install submitit``), each running the same worker loop against the shared store. A
  preempted or timed-out task is requeued; its claim expires after the lease and the work resumes
  from the run's (or trunk's) last checkpoint.

Every worker can be killed at any moment: the store stays consistent and a later worker finishes
the work (see :mod:`coqat.sweep.store` for the claim protocol).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coqat.errors import CoqatError


def register(
    spec_or_runs: Any,
    store_path: str | Path,
    root_dir: str | Path,
    *,
    version: str | None = None,
    share: bool = True,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Expand the sweep and register its runs (idempotent). Returns the sweep name and counts."""
    from coqat.sweep.keys import code_version
    from coqat.sweep.spec import load_runs
    from coqat.sweep.store import Store

    name, runs = load_runs(spec_or_runs)
    version = code_version() if version is None else version
    with Store(store_path) as st:
        info = st.register(runs, name, root_dir, version=version, share=share)
        if retry_failed:
            info["reset"] = st.reset(("failed",))
    info.update(sweep=name, version=version)
    return info


def run_sweep(
    spec_or_runs: Any,
    store_path: str | Path,
    root_dir: str | Path,
    slots: int = 1,
    worker_id: str | None = None,
    progress: bool = True,
    *,
    engine: Any = "coqat.train.run",
    executor: str = "local",
    version: str | None = None,
    share: bool = True,
    retry_failed: bool = False,
    keep_trunks: bool = False,
    lease_s: float = 120.0,
    poll_s: float = 2.0,
    max_attempts: int = 5,
    tokens_per_s: Any = None,
    slurm: dict[str, Any] | None = None,
    wait: bool = True,
    devices: str | list[str] | None = "auto",
    deadline: float | None = None,
    efficiency: float | None = None,
) -> dict[str, Any]:
    """Register the sweep's runs and execute them (see module doc). Returns the store's counts
    for the sweep (and the SLURM job ids for ``executor="slurm"``).

    ``spec_or_runs`` may also be a list of sweep files (or SweepSpecs): each is registered
    under its own name and the workers train them together, in one claim order (``counts`` and
    ``left`` cover them all; ``result["sweeps"]`` names them). Workers train only the runs of
    these sweeps, not other runs pending in the same store.

    ``deadline`` (seconds since the epoch): workers claim only work whose estimate ends before
    it (see :mod:`coqat.sweep.estimate`; ``efficiency`` when the store has no measurement) and
    stop when nothing else fits; ``result["left"]`` lists the runs left pending and why.
    """
    from coqat.sweep.progress import Monitor
    from coqat.sweep.store import Store, new_owner
    from coqat.sweep.worker import engine_name, work

    if executor not in ("local", "slurm"):
        raise CoqatError(f"executor: {executor!r} is not allowed; choose one of ['local', 'slurm']")
    if slots < 1:
        raise CoqatError(f"slots: must be >= 1, got {slots}")
    if executor == "slurm" and devices not in (None, "auto", "none"):
        raise CoqatError("devices: only for the local executor (SLURM assigns GPUs per task)")
    gpus = parse_devices(devices) if executor == "local" and slots > 1 else None
    if efficiency is not None and not (efficiency > 0 and efficiency < float("inf")):
        raise CoqatError(f"efficiency: must be a number > 0, got {efficiency!r}")
    store_path, root_dir = Path(store_path).resolve(), Path(root_dir).resolve()
    if executor == "slurm":
        _require_submitit()
    specs = sweep_files(spec_or_runs)
    infos = [register(x, store_path, root_dir, version=version, share=share,
                      retry_failed=retry_failed and i == 0)
             for i, x in enumerate(specs)]  # fmt: skip
    sweeps = list(dict.fromkeys(i["sweep"] for i in infos))
    sweep, version = ", ".join(sweeps), infos[0]["version"]
    info = {"new": sum(i["new"] for i in infos), "known": sum(i["known"] for i in infos)}
    wkw = dict(
        version=version, lease_s=lease_s, poll_s=poll_s, max_attempts=max_attempts,
        share=share, keep_trunks=keep_trunks, deadline=deadline, efficiency=efficiency,
        slots_per_device=slots_per_device(executor, slots, gpus), tokens_per_s=tokens_per_s,
        sweep=sweeps,  # the workers train these sweeps' runs, not others pending in the store
    )
    result: dict[str, Any] = {"sweep": sweep, "sweeps": sweeps, "registered": info["new"],
                              "known": info["known"]}
    monitor = (
        Monitor(store_path, sweep=sweeps, version=version, slots=slots, tokens_per_s=tokens_per_s)
        if progress
        else None
    )
    if executor == "slurm":
        jobs = submit_slurm(store_path, root_dir, slots, engine=engine_name(engine), slurm=slurm,
                            **wkw)
        result["jobs"] = [j.job_id for j in jobs]
        if wait:
            if monitor:
                monitor.start()
            try:
                for j in jobs:
                    j.wait()
            finally:
                if monitor:
                    monitor.stop()
    elif slots == 1:
        owner = new_owner(worker_id) if worker_id else None
        if monitor:
            monitor.start()
        try:
            work(store_path, root_dir, engine=engine, owner=owner, log=_quiet if progress else None,
                 **wkw)
        finally:
            if monitor:
                monitor.stop()
    else:
        if monitor:
            monitor.start()
        try:
            _local_pool(store_path, root_dir, slots, engine_name(engine), worker_id, wkw, gpus)
        finally:
            if monitor:
                monitor.stop()
    with Store(store_path, create=False) as st:
        result["counts"] = st.counts(sweep=sweeps, version=version)
        if deadline is not None and result["counts"]["pending"]:
            from coqat.sweep.estimate import (
                DEFAULT_EFFICIENCY,
                Estimator,
                device_label,
                left_over,
            )
            from coqat.sweep.worker import load_engine

            eng = load_engine(engine)
            est = Estimator(slots_per_device=wkw["slots_per_device"],
                            efficiency=efficiency or DEFAULT_EFFICIENCY, table=tokens_per_s,
                            device_of=lambda d: device_label(eng, d))
            est.measure(st)
            result["left"] = left_over(st, est, version=version, sweep=sweeps,
                                       budget_s=deadline - time.time())
    return result


def sweep_files(spec_or_runs: Any) -> list[Any]:
    """The sweeps of ``run_sweep``'s first argument: a list of sweep files (paths) or SweepSpecs
    as it is, anything else (one file, one spec, a list of RunConfigs) as a list of one."""
    from coqat.sweep.spec import SweepSpec

    if (isinstance(spec_or_runs, list | tuple) and spec_or_runs
            and all(isinstance(x, str | Path | SweepSpec) for x in spec_or_runs)):
        return list(spec_or_runs)
    return [spec_or_runs]


def slots_per_device(executor: str, slots: int, gpus: list[str] | None) -> int:
    """Workers that share one device: local slots spread round-robin over ``gpus`` (all on one
    device without); a SLURM task has its own."""
    if executor != "local":
        return 1
    return -(-slots // len(gpus)) if gpus else slots


def _quiet(msg: str) -> None:
    if "failed" in msg or "lost" in msg:
        print(msg, file=sys.stderr, flush=True)


def worker_command(store_path: Path, root_dir: Path, engine: str, tag: str | None,
                   wkw: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "coqat.sweep.worker", str(store_path), str(root_dir),
           "--engine", engine, "--code-version", wkw["version"], "--lease", str(wkw["lease_s"]),
           "--poll", str(wkw["poll_s"]), "--max-attempts", str(wkw["max_attempts"])]
    if tag:
        cmd += ["--owner", tag]
    for name in wkw.get("sweep") or ():
        cmd += ["--sweep", name]
    if wkw.get("deadline") is not None:
        cmd += ["--deadline", repr(float(wkw["deadline"]))]
    if wkw.get("efficiency") is not None:
        cmd += ["--efficiency", repr(float(wkw["efficiency"]))]
    if wkw.get("slots_per_device", 1) != 1:
        cmd += ["--slots-per-device", str(wkw["slots_per_device"])]
    tps = wkw.get("tokens_per_s")
    if isinstance(tps, dict):
        for k, v in tps.items():
            cmd += ["--tokens-per-s", f"{k}={v!r}"]
    elif tps:
        cmd += ["--tokens-per-s", repr(float(tps))]
    if not wkw["share"]:
        cmd.append("--no-share")
    if wkw["keep_trunks"]:
        cmd.append("--keep-trunks")
    return cmd


def parse_devices(spec: str | list[str] | None) -> list[str] | None:
    """The GPUs local workers are spread over: ``None`` / "none" -> None (workers inherit the
    environment); "auto" -> the entries of ``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch
    counts, when there are two or more (else None); "0,1" or ["0", "1"] -> those ids, as
    ``CUDA_VISIBLE_DEVICES`` takes them (they replace the parent's value)."""
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            ids = [x.strip() for x in env.split(",") if x.strip()]
        else:
            try:
                import torch
            except ImportError:
                return None
            ids = [str(i) for i in range(torch.cuda.device_count())]
        return ids if len(ids) >= 2 else None
    ids = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else [str(x) for x in spec]
    if not ids or not all(x.isdigit() or (x.startswith("GPU-") and len(x) > 4) for x in ids):
        raise CoqatError(
            f"--devices: {spec!r} is not allowed; give 'auto', 'none' or comma-separated GPU "
            "indices or UUIDs such as 0,1"
        )
    return ids


def worker_env(slot: int, gpus: list[str] | None) -> dict[str, str]:
    """The environment of local worker ``slot``: the parent's, with its GPU (round-robin)."""
    env = os.environ.copy()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def _local_pool(store_path: Path, root_dir: Path, slots: int, engine: str,
                worker_id: str | None, wkw: dict[str, Any],
                gpus: list[str] | None = None) -> None:
    from coqat.sweep.store import Store

    logs = root_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[int, subprocess.Popen] = {}
    restarts = 0

    def spawn(i: int) -> None:
        tag = f"{worker_id or 'w'}{i}"
        fh = open(logs / f"worker-{i}.log", "a")  # noqa: SIM115 - owned by the child
        procs[i] = subprocess.Popen(
            worker_command(store_path, root_dir, engine, tag, wkw),
            stdout=fh, stderr=subprocess.STDOUT, env=worker_env(i, gpus),
        )
        fh.close()

    for i in range(slots):
        spawn(i)
    try:
        while procs:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if rc != 0:
                    with Store(store_path, create=False) as st:
                        c = st.counts(version=wkw["version"])
                    if c["pending"] + c["running"] and restarts < 3 * slots:
                        restarts += 1
                        print(f"worker {i} exited with {rc}; restarting it (see {logs})",
                              file=sys.stderr)
                        spawn(i)
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait()
        raise


def _require_submitit():
    try:
        import submitit
    except ImportError:
        raise CoqatError(
            "the slurm executor needs submitit: pip install submitit (then re-run the command)"
        ) from None
    return submitit


class SlurmWorker:
    """The callable each SLURM array task runs; requeued on preemption/timeout."""

    def __init__(self, store_path: str, root_dir: str, engine: str, wkw: dict[str, Any]):
        self.store_path, self.root_dir, self.engine, self.wkw = store_path, root_dir, engine, wkw

    def __call__(self) -> dict[str, int]:
        from coqat.sweep.worker import work

        tag = os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get(
            "SLURM_ARRAY_TASK_ID", ""
        )
        from coqat.sweep.store import new_owner

        return work(self.store_path, self.root_dir, engine=self.engine,
                    owner=new_owner(f"slurm{tag}"), **self.wkw)

    def checkpoint(self, *args: Any, **kwargs: Any):  # pragma: no cover - needs SLURM
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmWorker(self.store_path, self.root_dir,
                                                              self.engine, self.wkw))


def submit_slurm(store_path: Path, root_dir: Path, n_workers: int, *, engine: str,
                 slurm: dict[str, Any] | None = None, **wkw: Any) -> list[Any]:
    """Submit ``n_workers`` worker tasks as one SLURM job array with submitit.

    ``slurm``: submitit parameters, e.g. ``{"slurm_partition": "gpu", "timeout_min": 240,
    "gpus_per_node": 1, "cpus_per_task": 8, "slurm_array_parallelism": 16}``; ``folder`` (logs)
    defaults to ``ROOT/slurm``.
    """
    submitit = _require_submitit()
    params = dict(slurm or {})
    folder = params.pop("folder", str(root_dir / "slurm" / "%j"))
    params.setdefault("timeout_min", 240)
    params.setdefault("gpus_per_node", 1)
    params.setdefault("tasks_per_node", 1)
    params.setdefault("nodes", 1)
    ex = submitit.AutoExecutor(folder=folder, cluster=params.pop("cluster", None))
    ex.update_parameters(**params)
    worker = SlurmWorker(str(store_path), str(root_dir), engine, wkw)
    with ex.batch():
        jobs = [ex.submit(worker) for _ in range(n_workers)]
    return jobs
