"""``coqat sweep plan|run|status``, ``coqat results export|import|salvage`` and ``coqat report``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    sw = subparsers.add_parser(
        "sweep",
        help="plan, run and monitor sweeps of FP -> QAT runs",
        description="Sweeps: a YAML/TOML grid of runs (sizes x tokens x bits x fractions x "
        "schedules x seeds) trained with shared FP trunks, results in an SQLite store.",
    )
    sw.set_defaults(func=lambda a: sw.print_help())
    sub = sw.add_subparsers(dest="sweep_command", metavar="{plan,predict,run,status}")

    p = sub.add_parser(
        "plan",
        help="list the runs and trunks of a sweep file, with exact FLOPs and time estimates",
        description="Expand a sweep file, group runs by shared FP trunk and print the FLOPs with "
        "and without sharing (exact) and estimated time.",
    )
    p.add_argument("file", help="sweep file (.yaml/.yml/.toml)")
    _tps_arg(p)
    p.add_argument("--no-share", action="store_true", help="plan every run trained alone")
    p.add_argument("--runs", action="store_true", help="also list every run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    e = p.add_argument_group(
        "estimate (what `coqat sweep run` would do in a time limit)",
        "simulate the workers' claim order (longest first; a piece only when its estimate ends "
        "within the time limit; trunks segment by segment) and list the runs that would not fit",
    )
    e.add_argument("--estimate", action="store_true", help="print the simulated schedule")
    e.add_argument("--slots", type=int, default=1, help="concurrent workers (default 1)")
    e.add_argument("--devices", type=int, default=1,
                   help="devices the workers are spread over (default 1; slots share a device)")
    _time_args(e, run=False)
    e.add_argument("--store", default=None,
                   help="a results store: measure the efficiency from its finished runs")
    p.set_defaults(func=_plan)

    pr = sub.add_parser(
        "predict",
        help="write down each grid's optimal QAT fraction under several rules, before running",
        description="Pre-register predictions: for every grid of the sweep (runs that differ "
        "only in their QAT fraction) print and save the optimal fraction under each rule "
        "(a fraction rule or a fitted loss law), with the commit, so the measured optima can be "
        "scored against predictions made before the runs.",
    )
    pr.add_argument("file", help="sweep file (.yaml/.yml/.toml)")
    pr.add_argument("--law", action="append", metavar="LABEL=LAW",
                    help="a rule to predict with: LABEL=NAME_OR_JSON (a shipped law name such as "
                    "default or reference-linux-c-fraction, or a law JSON file); repeatable")
    pr.add_argument("--ci", type=float, default=0.9, help="interval level for laws with "
                    "bootstrap samples (default 0.9)")
    pr.add_argument("--train-split-tokens", type=int, default=None,
                    help="tokens of the train split (for epochs) when the sweep's data folder is "
                    "not on this machine")
    pr.add_argument("--out", default=None, help="write the predictions as JSON here")
    pr.set_defaults(func=_predict)

    r = sub.add_parser(
        "run",
        help="register a sweep's runs in a store and train them",
        description="Register the sweep's runs (idempotent) and train them with local workers or "
        "a SLURM job array. Safe to interrupt and re-run: finished runs are never trained again "
        "and interrupted ones resume from their checkpoints.",
    )
    r.add_argument("file", nargs="+", metavar="FILE",
                   help="sweep file(s) (.yaml/.yml/.toml); several are registered under their own "
                   "names and trained by the same workers in one claim order")
    r.add_argument("--store", required=True, help="results store (SQLite file; created if missing)")
    r.add_argument("--root", required=True, help="folder for run, trunk and log folders")
    r.add_argument("--slots", type=int, default=1,
                   help="concurrent workers (local: processes on this machine; slurm: array tasks)")
    r.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local workers or a SLURM job array via submitit")
    r.add_argument("--devices", default="auto",
                   help="local executor with --slots > 1: GPUs to spread the workers over, "
                   "round-robin, as CUDA_VISIBLE_DEVICES ids (e.g. 0,1); 'auto' (default): every "
                   "visible GPU when there are two or more; 'none': leave the environment as is")
    r.add_argument("--engine", default="real",
                   help="'real' (coqat.train.run), 'fake' (a dry run with synthetic losses) or "
                   "a module path with execute/train_trunk")
    r.add_argument("--no-share", action="store_true", help="train every run alone (no trunks)")
    r.add_argument("--retry-failed", action="store_true", help="make failed runs pending again")
    r.add_argument("--keep-trunks", action="store_true",
                   help="keep trunk checkpoints after all their runs finished")
    r.add_argument("--lease", type=float, default=120.0,
                   help="lease seconds (a worker silent this long loses its claim)")
    r.add_argument("--max-attempts", type=int, default=5,
                   help="attempts before a run whose worker keeps dying is marked failed")
    r.add_argument("--code-version", default=None,
                   help="code version in the run keys (default: version+git commit; "
                   "env COQAT_CODE_VERSION)")
    r.add_argument("--worker-id", default=None, help="tag in the owner id of this driver's workers")
    r.add_argument("--no-progress", action="store_true", help="no live table / progress lines")
    r.add_argument("--backup", default=None, metavar="PATH",
                   help="also keep a consistent copy of the store at PATH, written every "
                   "--backup-every seconds and at the end (write-then-rename): keep --store on a "
                   "local disk and PATH where the results must end up (a network or collected "
                   "folder, where SQLite's locks may not hold)")
    r.add_argument("--backup-every", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between copies with --backup (default 60)")
    _tps_arg(r)
    t = r.add_argument_group(
        "time limit",
        "claim only work (a run's own part, a trunk segment) whose estimate ends before the "
        "limit; leave the rest pending for the next call and say what was left and why. "
        "Estimate: the tokens/s table x the efficiency measured from the store's finished runs "
        "on the same device (else --efficiency), shared by the workers on one device, plus "
        "each piece's overheads and the compilation of each model shape and bit width a "
        "worker process trains first (docs/sweep.md).",
    )
    _time_args(t, run=True)
    g = r.add_argument_group("slurm (with --executor slurm)")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--time", type=int, default=240, help="minutes per array task (requeued)")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per task")
    g.add_argument("--cpus", type=int, default=8, help="CPUs per task")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per task (GB)")
    g.add_argument("--array-parallelism", type=int, default=None,
                   help="max array tasks running at once")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit parameter (e.g. slurm_account=abc); repeatable")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return (watch with `coqat sweep status`)")
    r.set_defaults(func=_run)

    s = sub.add_parser("status", help="counts, running and failed runs of a store",
                       description="Show the state of a results store.")
    s.add_argument("--store", required=True, help="results store (SQLite file)")
    s.add_argument("--sweep", default=None, help="only this sweep's runs")
    s.add_argument("--failed", action="store_true", help="print the error of every failed run")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)

    res = subparsers.add_parser("results", help="export results from a store, or import runs",
                                description="Export a results store for the law fitter, or "
                                "import finished runs into one.")
    res.set_defaults(func=lambda a: res.print_help())
    rsub = res.add_subparsers(dest="results_command", metavar="{export,import,salvage}")
    e = rsub.add_parser(
        "export", help="write finished runs as CSV or Parquet",
        description="Write the runs (N, D_fp, D_qat, bits, loss, cluster, ... ) as CSV or "
        "Parquet; `coqat fit` and coqat.law.Runs.from_any read it directly.",
    )
    e.add_argument("--store", required=True, help="results store (SQLite file)")
    e.add_argument("--format", choices=["csv", "parquet", "jsonl"], default=None,
                   help="output format (default: from the --out suffix); jsonl is what "
                   "`coqat results import` reads back")
    e.add_argument("--out", required=True, help="output file")
    e.add_argument("--sweep", default=None, help="only this sweep's runs")
    e.add_argument("--all", action="store_true",
                   help="every run (also pending/diverged/failed), not only finished ones")
    e.add_argument("--since", default=None, metavar="TIME",
                   help="only runs finished at or after TIME (epoch seconds or ISO 8601)")
    e.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="add this field to every record (e.g. call=2026-11-30-c2); repeatable")
    e.set_defaults(func=_export)
    im = rsub.add_parser(
        "import", help="add finished runs from JSONL or CSV files to a store",
        description="Add finished runs (one record each: result fields, the resolved `config`, "
        "provenance such as commit, time, device and call) to a results store, keeping their "
        "keys (a record without one: <config_hash>-<call>). Idempotent: known keys are left "
        "as they are.",
    )
    im.add_argument("files", nargs="+", metavar="FILE", help=".jsonl or .csv files of runs")
    im.add_argument("--store", required=True,
                    help="results store (SQLite file; created if missing)")
    im.add_argument("--sweep", default=None,
                    help="sweep name the runs are listed under (default: each file's stem)")
    im.set_defaults(func=_import)
    sv = rsub.add_parser(
        "salvage", help="copy every readable run of a damaged store into a new one",
        description="Copy every row SQLite can still read from a damaged results store ("
        "'database disk image is malformed') into a new store, table by table, and say how "
        "many rows of each table could not be read. The damaged file is only read.",
    )
    sv.add_argument("store", metavar="STORE", help="the damaged results store")
    sv.add_argument("--out", required=True, help="the new store (must not exist)")
    sv.set_defaults(func=_salvage)

    rep = subparsers.add_parser(
        "report", help="figures and a self-contained HTML report of a sweep",
        description="Loss vs QAT fraction, measured f* vs S_total with the closed form, "
        "predicted vs measured loss (with --law), fusion vs standard and the memory frontier, "
        "in OUT/report.html (figures embedded) and PNG files.",
    )
    src = rep.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="results store (SQLite file)")
    src.add_argument("--runs", help="runs file (.csv/.parquet/.jsonl) from `coqat results export`")
    src.add_argument(
        "--experiment", metavar="DIR",
        help="an experiment folder (e.g. experiments/reference): writes its summary, figures and "
        "README from DIR/analysis.yaml and its results store (coqat.sweep.experiment), then "
        "this report of the store (default --out DIR/report)",
    )
    rep.add_argument("--law", default=None, help="law JSON (with bootstrap samples for CI bands)")
    rep.add_argument("--out", default=None, help="output folder (required with --store/--runs)")
    rep.add_argument("--title", default="coqat sweep report", help="report title")
    rep.set_defaults(func=_report)


def _time_args(g: Any, run: bool) -> None:
    g.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="seconds from the start of the command" if run else
                   "seconds the workers have (default: no limit)")
    if run:
        g.add_argument("--deadline", default=None, metavar="TIME",
                       help="an absolute deadline instead: seconds since the epoch or an ISO "
                       "8601 time (e.g. 2026-12-01T18:00, local time unless it has a zone)")
    g.add_argument("--efficiency", type=float, default=None,
                   help="fraction of the table's tokens/s one device reaches in steady "
                   "training when the store has no finished run on it (default 0.8)")


def _deadline(args: argparse.Namespace, t0: float) -> float | None:
    """The absolute deadline of ``sweep run`` (seconds since the epoch), or None."""
    import datetime as dt
    import math

    from coqat.errors import ConfigError

    if args.time_limit is not None and args.deadline is not None:
        raise ConfigError("--deadline", "give --time-limit or --deadline, not both")
    if args.time_limit is not None:
        if not (args.time_limit > 0 and math.isfinite(args.time_limit)):
            raise ConfigError("--time-limit", f"must be seconds > 0, got {args.time_limit}")
        return t0 + args.time_limit
    if args.deadline is None:
        return None
    try:
        return float(args.deadline)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(args.deadline).timestamp()
    except ValueError:
        raise ConfigError(
            "--deadline", f"{args.deadline!r} is not seconds since the epoch or an ISO 8601 time"
        ) from None


def _tps_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokens-per-s", action="append", default=[], metavar="[SIZE=]TOKENS_PER_S",
        help="throughput for time estimates: one number for all runs or SIZE=VALUE per size "
        "(repeatable; default: measured H200 table)",
    )


def _parse_tps(values: list[str]) -> Any:
    from coqat.sweep.throughput import parse_tokens_per_s

    return parse_tokens_per_s(values)


def _plan(args: argparse.Namespace) -> int:
    from coqat.sweep.keys import code_version
    from coqat.sweep.spec import expand, load_spec
    from coqat.sweep.tree import format_plan, plan_sweep

    spec = load_spec(args.file)
    runs = expand(spec)
    plan = plan_sweep(runs, share=not args.no_share, tokens_per_s=_parse_tps(args.tokens_per_s),
                      version=code_version())
    sched = _estimate(args, plan) if args.estimate else None
    if args.json:
        out = {"sweep": spec.name, **plan.summary()}
        if sched is not None:
            out["estimate"] = {
                "workers": sched.workers,
                "time_limit_s": sched.budget_s,
                "wall_s": sched.wall_s,
                "runs": sum(1 for p in sched.pieces if p.kind == "run"),
                "left": [{"label": lbl, "reason": why} for lbl, why in
                         ((_label(r), why) for r, why in sched.left)],
            }
        print(json.dumps(out, indent=2))
        return 0
    print(format_plan(plan, spec.name))
    if args.runs:
        for r in plan.runs:
            c = r.cfg
            print(f"  {c.size or '-':>5} D={c.tokens:>12,} B={c.qat.bits:<4g} "
                  f"f={c.qat.fraction:<5g} {c.qat.schedule:<8} seed={c.seed} "
                  f"trunk={r.trunk or '-'} branch={r.branch_step}")
    if sched is not None:
        from coqat.sweep.estimate import format_schedule

        print(format_schedule(sched))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from coqat.sweep.predict import main_predict

    return main_predict(args)


def _label(r: Any) -> str:
    from coqat.sweep.estimate import _run_label

    return _run_label(r.cfg)


def _estimate(args: argparse.Namespace, plan: Any) -> Any:
    from coqat.errors import ConfigError
    from coqat.sweep.estimate import DEFAULT_EFFICIENCY, Estimator, simulate

    if args.slots < 1:
        raise ConfigError("--slots", f"must be >= 1, got {args.slots}")
    if args.devices < 1:
        raise ConfigError("--devices", f"must be >= 1, got {args.devices}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise ConfigError("--time-limit", f"must be seconds > 0, got {args.time_limit}")
    gpu: list[str] = []  # the GPU whose finished runs in --store measure the efficiency

    def device_of(cfg_device: str) -> str:
        return "cpu" if cfg_device == "cpu" else (gpu[0] if gpu else "cpu")

    est = Estimator(
        slots_per_device=-(-args.slots // args.devices),
        efficiency=args.efficiency or DEFAULT_EFFICIENCY,
        table=_parse_tps(args.tokens_per_s),
        device_of=device_of,
    )
    if args.store:
        from collections import Counter

        from coqat.sweep.store import Store

        with Store(args.store, readonly=True) as st:
            est.measure(st)
            devs = Counter(r["device"] for r in st.rows(("done",)) if r["device"])
        gpu.extend(d for d, _ in devs.most_common() if d not in ("cpu", "fake"))
    return simulate(plan, est, workers=args.slots, budget_s=args.time_limit)


def _run(args: argparse.Namespace) -> int:
    import time

    from coqat.errors import ConfigError

    deadline = _deadline(args, time.time())
    if args.backup is not None and not (args.backup_every > 0
                                        and math.isfinite(args.backup_every)):
        raise ConfigError("--backup-every", f"must be seconds > 0, got {args.backup_every}")
    slurm = None
    if args.executor == "slurm":
        slurm = {"timeout_min": args.time, "gpus_per_node": args.gpus,
                 "cpus_per_task": args.cpus}
        if args.partition:
            slurm["slurm_partition"] = args.partition
        if args.mem_gb:
            slurm["mem_gb"] = args.mem_gb
        if args.array_parallelism:
            slurm["slurm_array_parallelism"] = args.array_parallelism
        for kv in args.slurm_param:
            if "=" not in kv:
                raise ConfigError("--slurm-param", f"{kv!r} is not KEY=VALUE")
            k, v = kv.split("=", 1)
            import yaml

            slurm[k.strip()] = yaml.safe_load(v)
    keep = contextlib.nullcontext()
    if args.backup is not None:
        from coqat.sweep.safekeep import PeriodicBackup

        keep = PeriodicBackup(args.store, args.backup, every=args.backup_every)
    with keep:
        res = _run_sweep(args, deadline, slurm)
    if args.backup is not None:
        print(f"store copied to {args.backup} ({keep.copies} copies)")
    return _report_run(res)


def _run_sweep(args: argparse.Namespace, deadline: float | None, slurm: dict | None) -> dict:
    from coqat.sweep.executor import run_sweep

    return run_sweep(
        args.file if len(args.file) > 1 else args.file[0], args.store, args.root,
        slots=args.slots, worker_id=args.worker_id,
        progress=not args.no_progress, engine=args.engine, executor=args.executor,
        version=args.code_version, share=not args.no_share, retry_failed=args.retry_failed,
        keep_trunks=args.keep_trunks, lease_s=args.lease, max_attempts=args.max_attempts,
        tokens_per_s=_parse_tps(args.tokens_per_s), slurm=slurm, wait=not args.no_wait,
        devices=args.devices, deadline=deadline, efficiency=args.efficiency,
    )


def _report_run(res: dict) -> int:
    c = res["counts"]
    print(f"sweep {res['sweep']}: {res['registered']} new runs registered; "
          f"{c['done']} done, {c['diverged']} diverged, {c['failed']} failed, "
          f"{c['pending'] + c['running']} left"
          + (f"; SLURM jobs {', '.join(map(str, res['jobs']))}" if res.get("jobs") else ""))
    left = res.get("left") or []
    if left:
        print(f"time limit: {len(left)} runs left pending (run the same command again to "
              "continue them):")
        for item in left[:20]:
            print(f"  {item['label']}: {item['reason']}")
        if len(left) > 20:
            print(f"  ... and {len(left) - 20} more")
    return 1 if c["failed"] else 0


def _status(args: argparse.Namespace) -> int:
    from coqat.sweep.progress import log_line, snapshot
    from coqat.sweep.store import Store

    with Store(args.store, readonly=True) as st:
        sweeps = st.sweeps()
        failed = st.rows(("failed",), sweep=args.sweep)
        trunks = st.trunks()
    snap = snapshot(args.store, sweep=args.sweep)
    if args.json:
        print(json.dumps({"sweeps": sweeps, **snap,
                          "failed": [{"key": f["key"], "error": f["error"]} for f in failed],
                          "trunks": [{k: t[k] for k in ("key", "status", "owner", "error")}
                                     for t in trunks]}, indent=2, default=str))
        return 0
    print(f"store {args.store}: sweeps {', '.join(sweeps) or '-'}")
    print(log_line(snap))
    for r in snap["running"]:
        print(f"  running {r['key']} {r['size']} B={r['bits']:g} f={r['f']:.3f} "
              f"{r['schedule']} owner={r['owner']} try {r['attempts']}")
    t_counts: dict[str, int] = {}
    for t in trunks:
        t_counts[t["status"]] = t_counts.get(t["status"], 0) + 1
    if trunks:
        print("trunks: " + ", ".join(f"{v} {k}" for k, v in sorted(t_counts.items())))
    for f in failed:
        err = (f["error"] or "").strip().splitlines()
        print(f"  failed {f['key']}: {err[-1] if err else '?'}")
        if args.failed:
            print("    " + "\n    ".join(err))
    return 0


def _export(args: argparse.Namespace) -> int:
    from coqat.errors import ConfigError
    from coqat.sweep.importer import _epoch
    from coqat.sweep.store import Store

    since = None
    if args.since is not None:
        since = _epoch(float(args.since) if args.since.replace(".", "", 1).isdigit()
                       else args.since)
        if since is None:
            raise ConfigError("--since", f"{args.since!r} is neither epoch seconds nor ISO 8601")
    tags = {}
    for kv in args.tag:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ConfigError("--tag", f"{kv!r} is not KEY=VALUE")
        tags[k] = v
    with Store(args.store, readonly=True) as st:
        statuses = None if args.all else ("done",)
        n = len(st.records_since(statuses, args.sweep, since, tags))
        p = st.export(args.out, args.format, statuses, args.sweep, since, tags)
    print(f"wrote {n} runs to {p}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from coqat.sweep.importer import import_files

    for r in import_files(args.files, args.store, sweep=args.sweep):
        print(f"{r['file']}: {r['new']} new, {r['known']} known (sweep {r['sweep']})")
    return 0


def _salvage(args: argparse.Namespace) -> int:
    from coqat.sweep.safekeep import salvage_store
    from coqat.sweep.store import Store

    counts = salvage_store(args.store, args.out)
    for name, c in counts.items():
        print(f"{name}: {c['copied']} rows copied, {c['unreadable']} unreadable")
    with Store(args.out, readonly=True) as st:
        check = st.integrity_check()
    print(f"wrote {args.out} (integrity: {check})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from coqat.sweep.report import build_report

    store, out = args.store, args.out
    if args.experiment is not None:
        from coqat.sweep.experiment import load_experiment, report_experiment

        folder, spec = load_experiment(args.experiment)
        for what, p in report_experiment(folder).items():
            print(f"wrote {p} ({what})")
        store, out = folder / spec.store, out or folder / "report"
    elif out is None:
        from coqat.errors import ConfigError

        raise ConfigError("--out", "required with --store or --runs (an output folder)")
    p = build_report(out, store=store, runs=args.runs, law=args.law, title=args.title)
    print(f"wrote {p}", file=sys.stdout)
    return 0
