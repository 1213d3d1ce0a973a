"""coqat's trainer against the plain compiled loop, side by side in one call, plus many small runs
on one GPU. Prints compact tables at the end and writes everything as JSON.

    python bench/compare_plain.py [--plain bench/plain_loop.py] [--data DIR] [--budget 560]

What it measures (seq 512, 131,072 tokens per step, vocab 8192; one subprocess per job, jobs
spread over the visible GPUs most important first, each under a time limit; no job starts that
could not end before ``--budget`` seconds):

* ``coqat``: ``bench/throughput.py``'s measurement of ``Trainer.train_step`` at 2m / 7m / 30m /
  150m, FP and 4-bit QAT, in two settings: **after** = the defaults of the commit measured
  (every result records its resolved ``perf``; since 2026-11-30 ``perf.kernels=plain``, before
  that ``fused``; ``perf.batches=auto`` -> on the device, ``perf.cuda_graph=auto`` -> captured
  below 60M parameters) and **before** = the step as it ran before ``coqat.train.step``
  (``kernels=plain, batches=host, cuda_graph=off``). At 2m and 150m (FP) also a torch.profiler
  kernel breakdown (GPU ms per step, top kernels by CUDA time).
* ``plain``: the plain loop (``--plain``: a copy of ``../shared/bench/plain_loop.py``; bf16
  autocast, fused AdamW, torch.compile, random tokens) at the same shapes, FP.
* ``concurrent``: many small runs per GPU: P processes on one GPU, each training its own 2m model
  (``--small-batch`` sequences x 512 tokens per step; the reference sweeps use 128), all started
  together after compiling; aggregate tokens/s over a common window vs one process alone, after
  and before.

MFU = model FLOPs / (989 TFLOP/s, the H200's dense bf16 peak), model FLOPs per token
= 6 x (block linears + tied output projection) + 6 x L x T x d (``coqat.model.flops_per_token``;
plain_loop.py uses the same formula and is passed ``--peak 989``).

Data: ``--data`` names a prepared folder; by default the script writes a folder of uniformly
random tokens (114M train tokens, the size of the reference corpus; vocab 8192) under /tmp, so
no tokenizer has to be trained (throughput does not depend on the token values).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK_TFLOPS = 989.0  # H200 dense bf16 (datasheet)
SHAPES = {"2m": (128, 4, 4), "7m": (256, 6, 4), "30m": (512, 8, 8), "150m": (896, 16, 14)}
BEFORE = {"kernels": "plain", "batches": "host", "cuda_graph": "off"}
AFTER: dict[str, str] = {}  # the defaults
RESULT = "RESULT "


# ----------------------------------------------------------------------------------- data
def random_data(path: Path, train_tokens: int = 114_000_000, vocab: int = 8192) -> Path:
    """A prepared-data folder of uniformly random tokens (written once)."""
    import hashlib

    import numpy as np

    from coqat.data.manifest import FORMAT_VERSION, MANIFEST, Manifest, SplitInfo

    if (path / MANIFEST).exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", train_tokens), ("val", 2_000_000)):
        arr = rng.integers(0, vocab, n, dtype=np.uint16)
        (path / f"{name}.bin").write_bytes(arr.tobytes())
        sha = hashlib.sha256(arr.tobytes()).hexdigest()
        splits[name] = SplitInfo(file=f"{name}.bin", tokens=n, documents=1, sha256=sha)
    m = Manifest(
        format_version=FORMAT_VERSION, tokenizer_sha256="random-tokens", vocab_size=vocab,
        eot_id=0, dtype="uint16", splits=splits, sources=(), val_fraction=0.0,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), bytes_per_token=0.0,
    )  # fmt: skip
    from coqat.config import save_json

    save_json(m, path / MANIFEST)
    return path


# ----------------------------------------------------------------------------------- jobs
def job_coqat(a: argparse.Namespace) -> None:
    """Measurements of one size in this process, one RESULT line each."""
    import torch

    sys.path.insert(0, str(HERE))
    from throughput import measure

    import coqat.model.loss as loss_mod

    chunk0 = loss_mod.CHUNK_LOGITS
    for spec in a.variants:  # after:16:profile, before:4, after:16:kernels=fused:chunk=24, ...
        name, bits, *flags = spec.split(":")
        opts = dict(f.split("=") for f in flags if "=" in f)
        perf = dict(AFTER if name == "after" else BEFORE)
        if "kernels" in opts:
            perf["kernels"] = opts["kernels"]
        loss_mod.CHUNK_LOGITS = 1 << int(opts["chunk"]) if "chunk" in opts else chunk0
        if torch.cuda.is_available():
            torch.backends.cuda.enable_cudnn_sdp(opts.get("sdpa") != "flash")
        name = "+".join([name, *(f"{k}={v}" for k, v in opts.items())])
        t0 = time.perf_counter()
        try:
            r = measure(a.data, a.size, float(bits), 512, a.batch, a.steps, a.warmup, a.device,
                        "auto", "default", "auto", a.profile if "profile" in flags else 0, perf)
        except Exception as e:  # noqa: BLE001 - report it and go on with the next variant
            r = {"size": a.size, "bits": float(bits), "error": f"{type(e).__name__}: {e}"}
        r.update(variant=name, job_s=round(time.perf_counter() - t0, 1))
        if "tokens_per_s" in r:
            r["mfu"] = r["model_tflops"] / PEAK_TFLOPS
        print(RESULT + json.dumps(r), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def job_worker(a: argparse.Namespace) -> None:
    """One of the concurrent processes: compile, say ready, wait for go, train for a window."""
    import torch

    from coqat.config import from_dict
    from coqat.train.config import RunConfig
    from coqat.train.run import Trainer

    perf = AFTER if a.variant == "after" else BEFORE
    cfg = from_dict(RunConfig, {
        "size": a.size, "model": {"seq_len": 512}, "data": {"path": a.data},
        "optim": {"batch_size": a.batch}, "tokens": a.batch * 512 * 100_000, "seed": a.rank,
        "device": a.device, "perf": dict(perf),
    })  # fmt: skip
    tr = Trainer(cfg)
    for _ in range(a.warmup):
        loss, _, _ = tr.train_step()
    float(loss)
    Path(a.sync, f"ready{a.rank}").touch()
    go = Path(a.sync, "go")
    while not go.exists():
        time.sleep(0.005)
    t0 = float(go.read_text())
    sync = torch.cuda.synchronize if tr.cuda else (lambda: None)
    while time.time() < t0:
        time.sleep(0.001)
    steps = 0
    while time.time() < t0 + a.seconds:
        loss, _, _ = tr.train_step()
        steps += 1
        if steps % 8 == 0:  # keep the host at most a few steps ahead of the window's end
            sync()
    sync()
    wall = time.time() - t0
    tokens = steps * a.batch * 512
    print(RESULT + json.dumps({"rank": a.rank, "steps": steps, "tokens": tokens, "wall_s": wall,
                               "tokens_per_s": tokens / wall, "loss": float(loss),
                               "captured": tr.runner.captured}), flush=True)  # fmt: skip


def job_concurrent(a: argparse.Namespace) -> None:
    """P worker processes on this job's GPU; one RESULT line with the aggregate."""
    sync = Path(tempfile.mkdtemp(prefix="coqat-conc-"))
    cmd = [sys.executable, __file__, "--job", "worker", "--data", a.data, "--size", a.size,
           "--batch", str(a.batch), "--variant", a.variant, "--warmup", str(a.warmup),
           "--seconds", str(a.seconds), "--sync", str(sync), "--device", a.device]  # fmt: skip
    procs = [subprocess.Popen([*cmd, "--rank", str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(a.procs)]  # fmt: skip
    t_start = time.time()
    while len(list(sync.glob("ready*"))) < a.procs and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    ready_s = time.time() - t_start
    (sync / "go").write_text(repr(time.time() + 0.5))
    outs = [p.communicate()[0] for p in procs]
    rows = [json.loads(ln[len(RESULT):]) for o in outs for ln in o.splitlines()
            if ln.startswith(RESULT)]  # fmt: skip
    r = {"variant": a.variant, "size": a.size, "batch": a.batch, "procs": a.procs,
         "workers": rows, "ready_s": round(ready_s, 1), "complete": len(rows) == a.procs}
    if rows:
        r["aggregate_tokens_per_s"] = sum(w["tokens_per_s"] for w in rows)
    print(RESULT + json.dumps(r), flush=True)


# ----------------------------------------------------------------------------------- scheduler
def plan_jobs(a: argparse.Namespace) -> list[dict]:
    """(name, argv, limit seconds) in priority order."""
    me = [sys.executable, __file__, "--data", a.data, "--device", a.device, *a.job_args]
    plain = [sys.executable, a.plain, "--seq", "512", "--batch", "256", "--steps", "30",
             "--peak", str(PEAK_TFLOPS)]  # fmt: skip

    def coqat(size: str, variants: list[str], est: int, limit: int) -> dict:
        return {"name": f"coqat-{size}", "kind": "coqat", "est": est, "limit": limit,
                "argv": [*me, "--job", "coqat", "--size", size, "--variants", *variants]}

    def yard(size: str, est: int, limit: int) -> dict:
        d, n_layers, h = SHAPES[size]
        return {"name": f"plain-{size}", "kind": "plain", "size": size, "est": est,
                "limit": limit, "argv": [*plain, "--shape", str(d), str(n_layers), str(h)]}

    def conc(variant: str, procs: int, est: int, limit: int) -> dict:
        return {"name": f"concurrent-{variant}-{procs}", "kind": "concurrent", "est": est,
                "limit": limit,
                "argv": [*me, "--job", "concurrent", "--size", "2m", "--batch",
                         str(a.small_batch), "--variant", variant, "--procs", str(procs)]}

    # est: expected seconds (a job starts only if that much budget is left); limit: killed after
    jobs = [
        coqat("2m", ["after:16:profile", "after:4", "before:16:profile", "before:4"], 140, 260),
        yard("2m", 40, 120),
        coqat("150m", ["after:16:profile", "after:4", "before:16:profile"], 200, 330),
        yard("150m", 60, 180),
        conc("after", 1, 70, 150),
        conc("after", 4, 90, 210),
        coqat("7m", ["after:16", "after:4", "before:16"], 100, 200),
        yard("7m", 40, 120),
        coqat("30m", ["after:16", "after:4", "before:16"], 110, 220),
        yard("30m", 45, 150),
        conc("before", 1, 60, 150),
        conc("before", 4, 90, 210),
        # diagnostics: loss chunks of 2^24 / 2^28 logits (default 2^26), flash attention
        # instead of cuDNN's
        coqat("2m", ["after:16:kernels=fused:profile", "after:16:kernels=fused:chunk=24",
                     "after:16:kernels=fused:chunk=28", "after:16:sdpa=flash"], 130, 220),
        coqat("150m", ["after:16:kernels=fused", "after:16:sdpa=flash"], 130, 220),
    ]
    for j in jobs[-2:]:
        j["name"] += "-diagnostics"
    if a.smoke:  # the plumbing on a CPU: 2m only, no plain loop (it needs CUDA)
        jobs = [j for j in jobs if j["kind"] != "plain" and "150m" not in j["name"]
                and "7m" not in j["name"] and "30m" not in j["name"]]
    only = set(a.only or [])
    return [j for j in jobs if not only or j["name"] in only]


def run_jobs(jobs: list[dict], gpus: list[str], budget: float, logs: Path) -> list[dict]:
    t0 = time.time()
    queue, running, done = list(jobs), {}, []
    while queue or running:
        for g in gpus:
            if g in running or not queue:
                continue
            left = budget - (time.time() - t0)
            while queue and queue[0]["est"] > left:  # would not finish in time: skip
                j = queue.pop(0)
                j.update(status="skipped (budget)", results=[])
                done.append(j)
            if not queue:
                break
            j = queue.pop(0)
            j["limit"] = min(j["limit"], left)  # killed at the budget's end, results kept
            log = open(logs / f"{j['name']}.log", "w")  # noqa: SIM115 - closed when it ends
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=g, PYTHONUNBUFFERED="1")
            p = subprocess.Popen(j["argv"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)  # fmt: skip
            j.update(gpu=g, start_s=round(time.time() - t0, 1))
            running[g] = (p, j, time.time(), log)
            print(f"[{time.time() - t0:6.1f}s] start {j['name']} on GPU {g}", flush=True)
        time.sleep(0.5)
        for g, (p, j, ts, log) in list(running.items()):
            timed_out = time.time() - ts > j["limit"]
            if p.poll() is None and not timed_out:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # this job's own process group
                p.wait()
            log.close()
            text = (logs / f"{j['name']}.log").read_text(errors="replace")
            j["results"] = parse(j, text)
            j["status"] = "timed out" if timed_out else f"exit {p.returncode}"
            j["wall_s"] = round(time.time() - ts, 1)
            print(f"[{time.time() - t0:6.1f}s] {j['status']:>9} {j['name']} "
                  f"({j['wall_s']} s, {len(j['results'])} results)", flush=True)
            if p.returncode and not j["results"]:
                print("   " + "\n   ".join(text.splitlines()[-6:]), flush=True)
            done.append(j)
            del running[g]
    return done


def parse(job: dict, text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith(RESULT):
            out.append(json.loads(line[len(RESULT):]))
        elif job["kind"] == "plain" and line.startswith("{") and '"yardstick"' in line:
            out.append(json.loads(line))
    return out


# ----------------------------------------------------------------------------------- report
def tables(done: list[dict]) -> str:
    coq = {(r["size"], r.get("variant"), r.get("bits")): r
           for j in done if j["kind"] == "coqat" for r in j["results"]}  # fmt: skip
    yard = {j["size"]: j["results"][0] for j in done if j["kind"] == "plain" and j["results"]}

    def get(size, variant, bits, key):
        r = coq.get((size, variant, float(bits))) or {}
        return r.get(key)

    def ratio(x, z):
        return f"{x / z:.3f}" if x and z else "-"

    L = ["", f"coqat vs the plain loop (tokens/s; MFU of {PEAK_TFLOPS:g} TFLOP/s dense bf16, "
         "6N + 6LTd per token; before = perf.kernels=plain, batches=host, cuda_graph=off)",
         "| size | coqat after | plain loop | after / plain | MFU after | MFU plain | "
         "coqat before | after / before | QAT/FP after | QAT/FP before | step ms after | "
         "host ms/step after |", "|" + "---|" * 12]  # fmt: skip
    for size in SHAPES:
        after, before = get(size, "after", 16, "tokens_per_s"), get(size, "before", 16,
                                                                     "tokens_per_s")
        y = yard.get(size) or {}
        mfu = get(size, "after", 16, "mfu")
        cells = [
            size, _fmt(after), _fmt(y.get("tok_s")), ratio(after, y.get("tok_s")),
            f"{mfu:.1%}" if mfu else "-", f"{y['mfu']:.1%}" if y.get("mfu") else "-",
            _fmt(before), ratio(after, before),
            ratio(get(size, "after", 4, "step_ms"), get(size, "after", 16, "step_ms")),
            ratio(get(size, "before", 4, "step_ms"), get(size, "before", 16, "step_ms")),
            _num(get(size, "after", 16, "step_ms")),
            _num(get(size, "after", 16, "host_ms_per_step")),
        ]  # fmt: skip
        L.append("| " + " | ".join(cells) + " |")
    extra = [(k, r) for k, r in coq.items() if k[1] not in ("after", "before") and k[2] == 16]
    if extra:
        L += ["", "Diagnostics (FP; same measurement, one setting changed from 'after')",
              "| size | setting | tokens/s | vs after | step ms |", "|---|---|---|---|---|"]
        for (size, variant, _), r in extra:
            tps = r.get("tokens_per_s")
            L.append(f"| {size} | {variant} | {_fmt(tps)} | "
                     f"{ratio(tps, get(size, 'after', 16, 'tokens_per_s'))} | "
                     f"{_num(r.get('step_ms'))} |")  # fmt: skip
    L += [f"error {k}: {r['error']}" for k, r in coq.items() if "error" in r]
    prof = [(k, r["profile"]) for k, r in coq.items() if "profile" in r]
    if prof:
        L += ["", "Kernel breakdown (torch.profiler; GPU ms per step, top kernels by CUDA time)"]
        for (size, variant, bits), p in prof:
            L.append(f"- {size} {variant} bits={bits:g}: GPU {p['gpu_ms_per_step']:.2f} ms of "
                     f"{p['wall_ms_per_step_profiled']:.2f} ms wall/step, "
                     f"{p['kernels_per_step']:.0f} kernels/step")  # fmt: skip
            for k in p["top"][:8]:
                L.append(f"    {k['us'] / 1000:7.3f} ms  x{k['calls']:<5g} {k['kernel'][:80]}")
    conc = [r for j in done if j["kind"] == "concurrent" for r in j["results"]]
    if conc:
        alone = {r["variant"]: r.get("aggregate_tokens_per_s") for r in conc if r["procs"] == 1}
        L += ["", "Many small runs on one GPU (2m, each process its own model; aggregate "
              "tokens/s over a common window)",
              "| setting | processes | tokens/s each | aggregate | vs one alone, same setting | "
              "vs one alone, before |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in conc:
            agg = r.get("aggregate_tokens_per_s")
            each = ", ".join(_fmt(w["tokens_per_s"]) for w in r["workers"]) or "-"
            cells = [f"{r['variant']} (batch {r['batch']})", str(r["procs"]), each, _fmt(agg),
                     ratio(agg, alone.get(r["variant"])), ratio(agg, alone.get("before"))]
            L.append("| " + " | ".join(cells) + " |")
    missing = [f"{j['name']} ({j['status']})" for j in done if not j.get("results")]
    if missing:
        L += ["", "No results: " + ", ".join(missing)]
    return "\n".join(L)


def _device_names() -> str:
    """GPU names from nvidia-smi (no CUDA context in this parent process)."""
    try:
        cmd = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return "; ".join(r.stdout.strip().splitlines()) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"


def _fmt(v) -> str:
    if not v:
        return "-"
    return f"{v / 1e6:.3f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# ----------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", choices=["coqat", "worker", "concurrent"], help=argparse.SUPPRESS)
    ap.add_argument("--plain", default=None, help="plain_loop.py (default: bench/plain_loop.py, "
                    "else ../shared/bench/plain_loop.py)")  # fmt: skip
    ap.add_argument("--data", default=None, help="prepared data folder (default: random tokens)")
    ap.add_argument("--budget", type=float, default=560.0, help="seconds for all jobs")
    ap.add_argument("--gpus", default="auto", help="GPU ids for jobs, e.g. 0,1 (auto: all)")
    ap.add_argument("--only", nargs="*", help="run only these jobs (names as printed)")
    ap.add_argument("--small-batch", type=int, default=128, help="sequences/step, small runs")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/compare_plain.json)")
    ap.add_argument("--smoke", action="store_true",
                    help="check the plumbing on a CPU: 2m, a few steps, no plain loop")
    # job arguments
    ap.add_argument("--size", default="2m")
    ap.add_argument("--variants", nargs="*", default=[])
    ap.add_argument("--variant", default="after")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--profile", type=int, default=5)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sync", default="")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    a.job_args = []
    if a.smoke and not a.job:
        a.device, a.budget = "cpu", min(a.budget, 300.0)
        a.small_batch, a.plain = 2, a.plain or "none"
        a.job_args = ["--batch", "4", "--steps", "2", "--warmup", "2", "--seconds", "3"]
    if a.job:
        {"coqat": job_coqat, "worker": job_worker, "concurrent": job_concurrent}[a.job](a)
        return 0

    t_all = time.time()
    # $OUT on the device; elsewhere beside --out (or under /tmp), never inside the checkout
    out_dir = (Path(os.environ["OUT"]) if os.environ.get("OUT")
               else Path(a.out).parent if a.out else Path(tempfile.gettempdir()) / "coqat-bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    if a.plain is None:
        for cand in (HERE / "plain_loop.py", HERE.parent.parent / "shared/bench/plain_loop.py"):
            if cand.exists():
                a.plain = str(cand)
                break
        else:
            print("no plain_loop.py: copy ../shared/bench/plain_loop.py to bench/ or pass --plain")
            return 2
    if not a.data:
        n = 2_000_000 if a.smoke else 114_000_000
        a.data = str(random_data(Path(f"/tmp/coqat-bench-random-tokens-{n}"), n))
    import torch

    gpus = ([g.strip() for g in a.gpus.split(",")] if a.gpus != "auto"
            else [str(i) for i in range(torch.cuda.device_count())])  # fmt: skip
    if a.smoke:
        gpus = [""]
    if not gpus:
        print("no CUDA device (--smoke checks the plumbing on a CPU)")
        return 2
    from coqat.provenance import git_commit

    prov = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(), "gpus": gpus,
        "device": _device_names(),
        "torch": torch.__version__, "command": " ".join(sys.argv), "peak_tflops": PEAK_TFLOPS,
        "flops_per_token": "6*(N_linear + N_embedding) + 6*L*T*d (coqat.model.flops_per_token)",
        "data": a.data, "plain_loop": a.plain,
    }  # fmt: skip
    jobs = plan_jobs(a)
    done = run_jobs(jobs, gpus, a.budget - (time.time() - t_all), logs)
    text = tables(done)
    print(text)
    path = Path(a.out) if a.out else out_dir / "compare_plain.json"
    path.write_text(json.dumps({"provenance": prov, "jobs": done, "table": text}, indent=1))
    print(f"\nJSON: {path}; job logs: {logs}; total {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
