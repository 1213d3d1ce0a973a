"""Two GPUs in one call: DDP scaling, FSDP2 against DDP, the largest ladder size, a 2-GPU sweep.

    COQAT_COMMIT=<commit> python bench/multi_gpu.py --data /tmp/linux --out $OUT/multi_gpu.json

Parts (``--parts``, default all; each has a time budget, and a part that no longer fits in the
remaining ``--budget-s`` is skipped and says so; the JSON is rewritten after every part):

a. **DDP scaling.** ``coqat train`` of one config on 1 GPU and under ``torchrun
   --nproc_per_node=2`` (DDP): 30m as in issue 20's first look (2.6e7 tokens, 4-bit QAT over 30%,
   batch 256 x 512, 198 steps) and a short 150m run (48 steps). The two 1-GPU runs share the
   machine (30m on GPU 0, 150m on GPU 1, at once); the 2-GPU runs run alone. Every rank keeps
   128 sequences per micro-batch, so the compiled graphs are the same on 1 and 2 GPUs. Scaling
   efficiency = steady tokens/s on 2 GPUs / (2 x steady tokens/s on 1), steady = after the first
   3 steps of each phase, evaluation and checkpoints excluded (``coqat.train.timing``).
b. **FSDP2 vs DDP**: the 150m run of (a) on 2 GPUs with ``dist.strategy=fsdp``: tokens/s,
   peak memory, losses against the DDP run.
c. **The largest ladder size** (2.2b) on 2 GPUs with FSDP: a few real 4-bit QAT steps of
   ``Trainer.train_step``: tokens/s, peak memory, MFU = tokens/s x FLOPs per token /
   (2 x ``--peak``). Before it, the time of DDP's gradient all-reduce
   (``coqat.train.distributed.average_gradients``) for the 30m and 150m gradients.
d. **A sweep over both GPUs**: ``coqat sweep run --slots 2 --devices auto`` of three 30m runs
   (the config of (a), seeds 0-2; seed 0 repeats (a)'s 1-GPU run) into one store; when the last
   run is alone and has written a checkpoint, its worker is killed (SIGKILL) and the run must
   resume on the other GPU. Checks every run done exactly once; aggregate tokens/s.

NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1) for every process started here. ``--smoke`` runs the same orchestration
on CPU with a tiny model (gloo), to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                "NVSHMEM_DISABLE_NVLS": "1"}
# seconds each part is expected to take (to skip what cannot fit) and may take at most
# (measured on two H200s, 2026-11-30: a 291 s -- 115 + 71 + ~105 --, b 51 s with a's DDP run
# reused, c 52 s, d 83 s)
PART_EST = {"a": 300, "b": 60, "c": 60, "d": 90}
PART_MAX = {"a": 380, "b": 150, "c": 130, "d": 160}
STEADY_WARMUP = 3  # coqat.train.timing.WARMUP_STEPS


def sizes(smoke: bool) -> dict[str, dict]:
    """The runs of parts a, b and d: ladder size, tokens, batch, micro-batch, extra overrides."""
    if smoke:
        cpu = {"opts": ["--device", "cpu", "--compile", "off"],
               "extra": ["model.vocab_size=512", "data.val_tokens=2048"]}
        return {
            "30m": {"size": "tiny", "tokens": 8 * 32 * 24, "batch": 8, "seq": 32, "micro": 4,
                    **cpu},
            "150m": {"size": "tiny", "tokens": 8 * 32 * 16, "batch": 8, "seq": 32, "micro": 4,
                     **cpu},
        }
    return {
        "30m": {"size": "30m", "tokens": 26_000_000, "batch": 256, "seq": 512, "micro": 128,
                "opts": [], "extra": []},
        "150m": {"size": "150m", "tokens": 48 * 256 * 512, "batch": 256, "seq": 512,
                 "micro": 128, "opts": [], "extra": []},
    }


class Bench:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.out = Path(args.out) if args.out else None
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = (self.out.parent / "multi_gpu_logs") if self.out else self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, **NO_MULTICAST)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), self.env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        if args.smoke:
            self.env["OMP_NUM_THREADS"] = "1"
        self.runs = sizes(args.smoke)
        self.results: dict[str, dict] = {}  # "30m/1/ddp" -> result.json (+ process wall)
        self.report = {"provenance": provenance(args), "parts": {}}

    # ------------------------------------------------------------------------- helpers
    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
            os.replace(tmp, self.out)

    def popen(self, cmd: list[str], gpus: str | None, log: str,
              extra_env: dict | None = None) -> subprocess.Popen:
        env = dict(self.env, **(extra_env or {}))
        if gpus is not None and not self.args.smoke:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        fh = open(self.logs / log, "w")  # noqa: SIM115 - owned by the child
        # a process group of its own: a timeout kills torchrun's ranks with it (killing only the
        # launcher left the 150m DDP ranks training beside part b's run, 2026-11-30)
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
        fh.close()
        p.started = time.perf_counter()  # type: ignore[attr-defined]
        return p

    def train_cmd(self, name: str, nproc: int, out: Path, extra: list[str]) -> list[str]:
        r = self.runs[name]
        flags = ["train", "--out", str(out), "--data", self.args.data, "--size", r["size"],
                 "--tokens", str(r["tokens"]), "--bits", "4", "--fraction", "0.3",
                 "--batch-size", str(r["batch"]), "--seq-len", str(r["seq"]), "--no-resume",
                 *r["opts"], "--json", f"optim.micro_batch_size={r['micro']}",
                 f"eval_every={r['tokens']}", *r["extra"], *extra]
        if nproc == 1:
            return [sys.executable, "-m", "coqat.cli", *flags]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(nproc), "-m", "coqat.cli", *flags]

    def wait(self, procs: dict[str, subprocess.Popen], limit: float) -> dict[str, dict]:
        """Wait for ``procs`` (key -> process) up to ``limit`` s; kill the rest."""
        end = time.perf_counter() + limit
        out = {}
        for key, p in procs.items():
            try:
                rc = p.wait(timeout=max(1.0, end - time.perf_counter()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = "timeout"
            out[key] = {"rc": rc, "process_s": round(time.perf_counter() - p.started, 1)}
        return out

    def train(self, jobs: list[tuple[str, int, str, list[str], str]], limit: float) -> None:
        """Run ``(size, nproc, gpus, extra overrides, strategy label)`` jobs at once."""
        procs, dirs = {}, {}
        for name, nproc, gpus, extra, label in jobs:
            key = f"{name}/{nproc}/{label}"
            d = self.work / key.replace("/", "-")
            dirs[key] = d
            procs[key] = self.popen(self.train_cmd(name, nproc, d, extra), gpus,
                                    key.replace("/", "-") + ".log")
        for key, st in self.wait(procs, limit).items():
            res = {}
            if (dirs[key] / "result.json").exists():
                res = json.loads((dirs[key] / "result.json").read_text())
            else:
                st["error"] = tail(self.logs / (key.replace("/", "-") + ".log"))
            self.results[key] = {**res, **st}

    def need(self, jobs, limit) -> None:
        """Train the jobs whose results are missing (parts reuse each other's runs)."""
        todo = [j for j in jobs if f"{j[0]}/{j[1]}/{j[4]}" not in self.results]
        if todo:
            self.train(todo, limit)

    # ------------------------------------------------------------------------- parts
    def part_a(self, limit: float) -> dict:
        end = time.perf_counter() + limit
        self.need([("30m", 1, "0", [], "single"), ("150m", 1, "1", [], "single")], limit)
        for name in ("30m", "150m"):
            self.need([(name, 2, "0,1", ["dist.strategy=ddp"], "ddp")],
                      max(1.0, end - time.perf_counter()))
        rows = []
        for name in ("30m", "150m"):
            one, two = self.results[f"{name}/1/single"], self.results[f"{name}/2/ddp"]
            row = {"size": name, "one_gpu": summary(one), "two_gpus": summary(two)}
            for k in ("tokens_per_s_steady", "tokens_per_s"):
                if one.get(k) and two.get(k):
                    row[f"efficiency_{k.removeprefix('tokens_per_s').strip('_') or 'overall'}"] = (
                        two[k] / (2 * one[k]))
            for k in ("loss_fp", "loss"):
                if one.get(k) is not None and two.get(k) is not None:
                    row[f"delta_{k}"] = two[k] - one[k]
            rows.append(row)
        return {"runs": rows, "note": "1-GPU runs of 30m (GPU 0) and 150m (GPU 1) ran at the "
                "same time; 2-GPU runs alone; efficiency = 2-GPU / (2 x 1-GPU)"}

    def part_b(self, limit: float) -> dict:
        end = time.perf_counter() + limit
        dtype = self.args.fsdp_param_dtype
        self.need([("150m", 2, "0,1", ["dist.strategy=fsdp", f"dist.param_dtype={dtype}"],
                    f"fsdp-{dtype}")], limit)
        self.need([("150m", 2, "0,1", ["dist.strategy=ddp"], "ddp")],
                  max(1.0, end - time.perf_counter()))
        f, d = self.results[f"150m/2/fsdp-{dtype}"], self.results["150m/2/ddp"]
        out = {"fsdp": summary(f), "ddp": summary(d), "param_dtype": dtype}
        if f.get("tokens_per_s_steady") and d.get("tokens_per_s_steady"):
            out["fsdp_over_ddp_tokens_per_s"] = f["tokens_per_s_steady"] / d["tokens_per_s_steady"]
        for k in ("loss_fp", "loss_ptq", "loss"):
            if f.get(k) is not None and d.get(k) is not None:
                out[f"delta_{k}"] = f[k] - d[k]
        return out

    def part_c(self, limit: float) -> dict:
        js = self.work / "step.json"
        js.unlink(missing_ok=True)
        a = self.args
        size = "tiny" if a.smoke else a.step_size
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(Path(__file__).resolve()), "--worker-step", "--data", a.data,
               "--step-size", size, "--work", str(self.work), "--out-json", str(js),
               "--peak", str(a.peak), "--fsdp-param-dtype", a.fsdp_param_dtype]
        if a.smoke:
            cmd.append("--smoke")
        # the model is initialised on the host first (as in every run): give it threads
        threads = {} if a.smoke or "OMP_NUM_THREADS" in self.env else {"OMP_NUM_THREADS": "8"}
        st = self.wait({"c": self.popen(cmd, "0,1", "c-step.log", threads)}, limit)["c"]
        if js.exists():
            return {**json.loads(js.read_text()), **st}
        return {**st, "error": tail(self.logs / "c-step.log")}

    def part_d(self, limit: float) -> dict:
        r = self.runs["30m"]
        d = self.work / "sweep"
        spec = d / "sweep.yaml"
        d.mkdir(parents=True, exist_ok=True)
        base = {"model": {"vocab_size": 512 if self.args.smoke else 8192, "seq_len": r["seq"]},
                "data": {"path": self.args.data},
                "optim": {"batch_size": r["batch"], "micro_batch_size": r["micro"]},
                "eval_every": r["tokens"], "checkpoint_every": r["tokens"] // 4}
        if self.args.smoke:
            base["model"].update(d_model=32, n_layers=2, n_heads=2)
            base["data"]["val_tokens"] = 2048
            base.update(device="cpu", compile="off")
        spec.write_text(json.dumps({
            "name": "bench-2gpu", "base": base, "sizes": [r["size"]], "tokens": [r["tokens"]],
            "bits": [4], "fractions": [0.3], "seeds": [0, 1, 2],
        }))  # JSON is YAML
        store, root = d / "store.db", d / "root"
        cmd = [sys.executable, "-m", "coqat.cli", "sweep", "run", str(spec), "--store",
               str(store), "--root", str(root), "--slots", "2", "--devices", "auto",
               "--no-share", "--no-progress"]
        p = self.popen(cmd, "0,1", "d-sweep.log")
        killed = watch_and_kill(p, store, root, limit)
        st = self.wait({"d": p}, max(1.0, limit - (time.perf_counter() - p.started)))["d"]
        out = {**st, "killed": killed, **sweep_summary(store, root)}
        if out.get("tokens") and st.get("process_s"):
            out["end_to_end_tokens_per_s"] = out["tokens"] / st["process_s"]
        ref = self.results.get("30m/1/single", {})
        if ref.get("tokens_per_s_steady") and out.get("tokens_per_s_steady_median"):
            out["one_gpu_steady_tokens_per_s"] = ref["tokens_per_s_steady"]
            out["per_run_steady_over_one_gpu"] = (out["tokens_per_s_steady_median"]
                                                  / ref["tokens_per_s_steady"])
            out["aggregate_over_one_gpu"] = out["aggregate_tokens_per_s"] / ref[
                "tokens_per_s_steady"]
        if ref.get("loss") is not None and out.get("losses", {}).get("0") is not None:
            out["seed0_minus_part_a_loss"] = out["losses"]["0"] - ref["loss"]
        return out

    def run(self) -> None:
        for part in self.args.parts.split(","):
            fn = getattr(self, f"part_{part}", None)
            if fn is None:
                raise SystemExit(f"--parts: unknown part {part!r}; choose from a,b,c,d")
            if self.left() < PART_EST[part]:
                self.report["parts"][part] = {"skipped": f"{self.left():.0f} s left of the "
                                              f"budget, the part needs ~{PART_EST[part]} s"}
            else:
                t = time.perf_counter()
                try:
                    self.report["parts"][part] = fn(min(PART_MAX[part], self.left()))
                except Exception as e:  # noqa: BLE001 - recorded, the next part still runs
                    self.report["parts"][part] = {"error": f"{type(e).__name__}: {e}"}
                self.report["parts"][part]["part_s"] = round(time.perf_counter() - t, 1)
            self.report["total_s"] = round(time.perf_counter() - self.t0, 1)
            self.save()
        print(table(self.report))


# ----------------------------------------------------------------------------- sweep watching
def _owner_pid(owner: str | None) -> int | None:
    try:
        return int(owner.split(":")[1]) if owner else None
    except (IndexError, ValueError):
        return None


def watch_and_kill(p: subprocess.Popen, store: Path, root: Path, limit: float) -> dict:
    """While the sweep runs: once no run is pending and exactly one is running, after that run
    wrote a checkpoint, SIGKILL its worker. Returns what was killed (or why not)."""
    end = time.perf_counter() + limit
    while p.poll() is None and time.perf_counter() < end:
        time.sleep(0.25)
        if not store.exists():
            continue
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
                rows = db.execute("SELECT key, status, owner, run_dir FROM runs").fetchall()
        except sqlite3.Error:
            continue
        pending = [r for r in rows if r[1] == "pending"]
        running = [r for r in rows if r[1] == "running"]
        if pending or len(running) != 1:
            continue
        key, _, owner, run_dir = running[0]
        rdir = root / run_dir
        if not (rdir / "checkpoint.pt").exists() or (rdir / "result.json").exists():
            continue
        pid = _owner_pid(owner)
        if pid is None:
            continue
        step = last_step(rdir / "metrics.jsonl")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        return {"key": key, "pid": pid, "at_step": step,
                "after_s": round(time.perf_counter() - p.started, 1)}
    return {"error": "no moment with one run left after a checkpoint (nothing killed)"}


def last_step(path: Path) -> int | None:
    if not path.exists():
        return None
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass
    return max(steps) if steps else None


def sweep_summary(store: Path, root: Path) -> dict:
    """Counts, per-run results, where each run finished, duplicate-free logs."""
    if not store.exists():
        return {"error": "no store"}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key, status, attempts, run_dir, result FROM runs").fetchall()
    gpu_of_pid = {}
    for log in sorted((root / "logs").glob("worker-*.log")):
        for m in re.finditer(r"worker (\d+) \([^)]*\) starts(?: on CUDA_VISIBLE_DEVICES=(\S+))?",
                             log.read_text(errors="replace")):
            gpu_of_pid[int(m.group(1))] = m.group(2)
    runs, losses, steady, tokens = [], {}, [], 0
    first = last = None
    for key, status, attempts, run_dir, result in rows:
        res = json.loads(result) if result else {}
        rdir = root / run_dir
        recs = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()
                if x.strip()] if (rdir / "metrics.jsonl").exists() else []
        train_steps = [r["step"] for r in recs if "loss" in r]
        runs.append({
            "key": key, "status": status, "attempts": attempts, "seed": res.get("seed"),
            "pid": res.get("pid"), "gpu": gpu_of_pid.get(res.get("pid")),
            "results_on_disk": int((rdir / "result.json").exists()),
            "duplicate_logged_steps": len(train_steps) - len(set(train_steps)),
            "loss": res.get("loss"), "tokens_per_s_steady": res.get("tokens_per_s_steady"),
        })
        if res:
            losses[str(res.get("seed"))] = res.get("loss")
            tokens += res.get("D_total", 0)
            if res.get("tokens_per_s_steady"):
                steady.append(res["tokens_per_s_steady"])
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        t = db.execute("SELECT MIN(started), MAX(finished) FROM runs").fetchone()
        first, last = t
    wall = (last - first) if first and last else None
    return {
        "runs": runs, "losses": losses, "done": sum(r["status"] == "done" for r in runs),
        "tokens": tokens,
        "every_run_done_once": all(r["status"] == "done" and r["results_on_disk"] == 1
                                   and r["duplicate_logged_steps"] == 0 for r in runs),
        "gpu_of_worker_pid": gpu_of_pid,
        "first_claim_to_last_result_s": wall,
        "aggregate_tokens_per_s": tokens / wall if wall else None,
        "tokens_per_s_steady_median": statistics.median(steady) if steady else None,
        "seed_loss_sd": statistics.stdev(losses.values()) if len(losses) > 1 else None,
    }


# ----------------------------------------------------------------------------- worker (part c)
def worker_step(args) -> None:
    """Under torchrun: the gradient all-reduce times, then QAT steps of the largest size."""
    import torch

    from coqat.config import from_dict
    from coqat.model import flops_per_token, ladder, param_counts
    from coqat.model.llama import Llama
    from coqat.train.config import RunConfig
    from coqat.train.distributed import average_gradients, init_distributed
    from coqat.train.run import Trainer

    dev = "cpu" if args.smoke else "cuda"
    info = init_distributed(dev)
    device = torch.device(dev, info.local_rank) if dev == "cuda" else torch.device("cpu")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    out: dict = {"allreduce": {}}
    for name in ("tiny",) if args.smoke else ("30m", "150m"):
        with torch.device("meta"):
            shapes = [(p.shape, p.numel()) for p in Llama(ladder(name, seq_len=512)).parameters()]
        params = []
        for shape, _ in shapes:
            p = torch.nn.Parameter(torch.empty(shape, device=device))
            p.grad = torch.randn(shape, device=device)
            params.append(p)
        for _ in range(2):
            average_gradients(params, info)
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            average_gradients(params, info)
        sync()
        out["allreduce"][name] = {"ms": 100 * (time.perf_counter() - t0),
                                  "grad_mib": sum(n for _, n in shapes) * 4 / 2**20}
        del params
    # 32 sequences of 512 tokens per rank, one micro-batch: ~60 GB per H200 at 2.2b
    batch, micro, seq, steps, warm = (8, 4, 32, 4, 2) if args.smoke else (64, 32, 512, 4, 2)
    cfg = {"size": args.step_size, "model": {"seq_len": seq}, "data": {"path": args.data},
           "optim": {"batch_size": batch, "micro_batch_size": micro},
           "tokens": batch * seq * (steps + warm + 2), "qat": {"bits": 4, "fraction": 1.0},
           "dist": {"strategy": "fsdp", "param_dtype": args.fsdp_param_dtype}}
    if args.smoke:
        cfg["model"].update(d_model=32, n_layers=2, n_heads=2, vocab_size=512)
        cfg.update(device="cpu", compile="off")
    rc = from_dict(RunConfig, cfg)
    t_init = time.perf_counter()
    tr = Trainer(rc)
    tr.enter_qat()
    init_s = time.perf_counter() - t_init
    t_w = time.perf_counter()
    for _ in range(warm):
        loss, _, _ = tr.train_step()
    float(loss)
    warm_s = time.perf_counter() - t_w
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _, _ = tr.train_step()
    float(loss)
    sync()
    dt = time.perf_counter() - t0
    tps = steps * batch * seq / dt
    fpt = flops_per_token(rc.model)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if dev == "cuda" else None
    mems = [peak_mem]
    if info.enabled:
        import torch.distributed as dist

        mems = [None] * info.world
        dist.all_gather_object(mems, peak_mem)
    out.update({
        "size": args.step_size, "params": param_counts(rc.model).total, "world": info.world,
        "strategy": tr.strategy, "param_dtype": args.fsdp_param_dtype, "bits": 4,
        "batch": batch, "seq_len": seq, "micro": micro, "steps": steps,
        "step_s": dt / steps, "tokens_per_s": tps, "flops_per_token": fpt,
        "mfu": tps * fpt / (info.world * args.peak * 1e12),
        "mfu_formula": "tokens/s x (6 x (block linears + tied output) + 6 L T d) / "
                       f"({info.world} x {args.peak:g} TFLOP/s)",
        "peak_memory_gib_per_rank": mems, "init_and_switch_s": init_s, "warmup_s": warm_s,
        "loss": float(loss),
    })
    if info.main:
        Path(args.out_json).write_text(json.dumps(out, indent=2) + "\n")


# ----------------------------------------------------------------------------- output
def summary(r: dict) -> dict:
    keys = ("tokens_per_s_steady", "tokens_per_s", "wall_warmup", "wall_eval", "wall_checkpoint",
            "wall_fp", "wall_qat", "loss_fp", "loss_ptq", "loss", "peak_memory_gib", "steps",
            "world_size", "dist_strategy", "process_s", "rc", "error")
    return {k: r.get(k) for k in keys if k in r}


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def provenance(args) -> dict:
    info = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": platform.node(), "python": platform.python_version(),
            "commit": os.environ.get("COQAT_COMMIT", "")}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["devices"] = [torch.cuda.get_device_name(i)
                               for i in range(torch.cuda.device_count())]
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 else None
    except (ImportError, OSError, subprocess.SubprocessError, IndexError):
        pass
    if not info["commit"]:
        sys.path.insert(0, str(ROOT / "src"))
        from coqat.provenance import git_commit

        info["commit"] = git_commit()
    return info


def _f(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def table(rep: dict) -> str:
    p = rep["parts"]
    lines = [f"multi-GPU bench, commit {rep['provenance'].get('commit') or '?'}, "
             f"{rep['provenance'].get('date')}, total {rep.get('total_s')} s"]
    if "a" in p and "runs" in p["a"]:
        lines.append("a) DDP | size | GPUs | steady tok/s | overall tok/s | warm-up s | eval s | "
                     "loss FP | loss | peak GiB")
        for row in p["a"]["runs"]:
            for g, r in (("1", row["one_gpu"]), ("2", row["two_gpus"])):
                lines.append(
                    f"  | {row['size']} | {g} | {_f(r.get('tokens_per_s_steady'))} | "
                    f"{_f(r.get('tokens_per_s'))} | {_f(r.get('wall_warmup'), '{:.1f}')} | "
                    f"{_f(r.get('wall_eval'), '{:.1f}')} | {_f(r.get('loss_fp'), '{:.4f}')} | "
                    f"{_f(r.get('loss'), '{:.4f}')} | {_f(r.get('peak_memory_gib'), '{:.1f}')}")
            lines.append(f"  | {row['size']} | efficiency steady "
                         f"{_f(row.get('efficiency_steady'), '{:.3f}')}, overall "
                         f"{_f(row.get('efficiency_overall'), '{:.3f}')}; loss 2-1 GPU: FP "
                         f"{_f(row.get('delta_loss_fp'), '{:+.4f}')}, final "
                         f"{_f(row.get('delta_loss'), '{:+.4f}')}")
    if "b" in p and "fsdp" in p["b"]:
        b = p["b"]
        for lab in ("ddp", "fsdp"):
            r = b[lab]
            lines.append(f"b) 150m 2 GPUs {lab} | steady {_f(r.get('tokens_per_s_steady'))} "
                         f"tok/s | peak {_f(r.get('peak_memory_gib'), '{:.1f}')} GiB | loss FP "
                         f"{_f(r.get('loss_fp'), '{:.4f}')} | loss {_f(r.get('loss'), '{:.4f}')}")
        lines.append(f"   fsdp/ddp tokens/s {_f(b.get('fsdp_over_ddp_tokens_per_s'), '{:.3f}')}"
                     f", loss fsdp-ddp {_f(b.get('delta_loss'), '{:+.4f}')} "
                     f"(param dtype {b.get('param_dtype')})")
    if "c" in p and "tokens_per_s" in p["c"]:
        c = p["c"]
        mem = max(m for m in c["peak_memory_gib_per_rank"] if m is not None) if any(
            m is not None for m in c["peak_memory_gib_per_rank"]) else None
        lines.append(f"c) {c['size']} ({c['params']:,} params) FSDP x{c['world']} 4-bit QAT | "
                     f"{_f(c['tokens_per_s'])} tok/s | step {c['step_s']:.2f} s | MFU "
                     f"{100 * c['mfu']:.1f}% | peak {_f(mem, '{:.1f}')} GiB/rank")
        ar = ", ".join(f"{k} {v['ms']:.1f} ms ({v['grad_mib']:.0f} MiB)"
                       for k, v in c.get("allreduce", {}).items())
        lines.append(f"   DDP gradient all-reduce per step: {ar}")
    if "d" in p and "runs" in p["d"]:
        d = p["d"]
        k = d.get("killed", {})
        lines.append(f"d) sweep: {d['done']}/{len(d['runs'])} done, every run once: "
                     f"{d['every_run_done_once']}, aggregate {_f(d.get('aggregate_tokens_per_s'))}"
                     f" tok/s (x{_f(d.get('aggregate_over_one_gpu'), '{:.2f}')} of 1-GPU steady),"
                     f" per-run steady x{_f(d.get('per_run_steady_over_one_gpu'), '{:.3f}')}")
        killed = [r for r in d["runs"] if r["key"] == k.get("key")]
        if killed:
            lines.append(f"   killed pid {k['pid']} (GPU {d['gpu_of_worker_pid'].get(k['pid'])})"
                         f" at step {k.get('at_step')}; resumed by pid {killed[0]['pid']} "
                         f"(GPU {killed[0]['gpu']}), attempts {killed[0]['attempts']}")
        elif k:
            lines.append(f"   kill: {k}")
    for part, v in p.items():
        if "skipped" in v or "error" in v:
            lines.append(f"{part}) {v.get('skipped') or v.get('error')[-300:]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared data folder (vocab 8192)")
    ap.add_argument("--out", default=os.environ.get("OUT") and
                    str(Path(os.environ["OUT"]) / "multi_gpu.json"), help="results JSON")
    ap.add_argument("--parts", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--budget-s", type=float, default=540.0, help="seconds for all parts")
    ap.add_argument("--work", default="/tmp/coqat-multi-gpu", help="run folders")
    ap.add_argument("--step-size", default="2.2b", help="ladder size of part c")
    ap.add_argument("--fsdp-param-dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--peak", type=float, default=790.0,
                    help="peak TFLOP/s per GPU for MFU (790: the dense bf16 matmul rate measured "
                    "on the H200, bench/README.md; the datasheet says 989)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the orchestration")
    ap.add_argument("--worker-step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_step:
        sys.path.insert(0, str(ROOT / "src"))
        return worker_step(args)
    Bench(args).run()


if __name__ == "__main__":
    main()
