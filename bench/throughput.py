"""Training throughput of coqat's own trainer: tokens/s, step time, peak memory and MFU.

For each ladder size it times real ``Trainer.train_step`` calls (the code path of every run:
fused AdamW, bf16 autocast and torch.compile on CUDA) in full precision and with fake-quantized
weights at the given bit widths, after warm-up steps that include compilation.

MFU = achieved model FLOPs / peak, with model FLOPs per token = 6 * N_matmul + 6 * L * T * d
(``coqat.model.flops_per_token``: block linears and the tied output projection, plus causal
attention) and the peak given by ``--peak`` (default 790 TFLOP/s: the dense bf16 matmul rate
measured on this H200 with an 8192^3 product; the datasheet says 989).

    python bench/throughput.py --data DIR --sizes 2m 7m 17m 30m --bits 16 4 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def measure(
    data: str,
    size: str,
    bits: float,
    seq_len: int,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    compile_: str,
    compile_mode: str = "default",
    embed_bits: str = "auto",
    profile: int = 0,
    perf: dict | None = None,
) -> dict:
    """One (size, bits) measurement; ``perf``: overrides of ``RunConfig.perf`` (kernels,
    batches, cuda_graph), e.g. ``{"kernels": "plain", "batches": "host", "cuda_graph": "off"}``
    for the step as it ran before coqat.train.step."""
    import torch

    from coqat.config import from_dict
    from coqat.model import flops_per_token, param_counts
    from coqat.train.config import RunConfig
    from coqat.train.run import Trainer

    cfg = from_dict(
        RunConfig,
        {
            "size": size,
            "model": {"seq_len": seq_len},
            "data": {"path": data},
            "optim": {"batch_size": batch},
            # the timed steps, warm-up, host-time steps (<= 20), profiled steps, and a margin
            "tokens": batch * seq_len * (steps + warmup + 20 + profile + 10),
            "qat": {
                "bits": bits,
                "fraction": 1.0 if bits != 16 else 0.0,
                "embed_bits": embed_bits,
            },
            "device": device,
            "compile": compile_,
            "compile_mode": compile_mode,
            "perf": dict(perf or {}),
        },
    )
    tr = Trainer(cfg)
    if bits != 16:
        tr.enter_qat()
    cuda = tr.cuda
    t_c = time.perf_counter()
    for _ in range(warmup):
        loss, _, _ = tr.train_step()
    float(loss)
    compile_s = time.perf_counter() - t_c
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _, _ = tr.train_step()
    float(loss)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = steps * batch * seq_len
    host_ms = host_time(tr, min(steps, 20)) if cuda else None
    fpt = flops_per_token(cfg.model)
    kernels = profile_kernels(tr, profile) if profile and cuda else None
    return {
        "size": size,
        "bits": bits,
        "params": param_counts(cfg.model).total,
        "d_model": cfg.model.d_model,
        "n_layers": cfg.model.n_layers,
        "seq_len": seq_len,
        "batch": batch,
        "tokens_per_s": tokens / dt,
        "step_ms": 1000 * dt / steps,
        "warmup_s": compile_s,
        "host_ms_per_step": host_ms,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "model_tflops": fpt * tokens / dt / 1e12,
        "final_loss": float(loss),
        "perf": {**vars(cfg.perf), "batches_used": tr.runner.batches.kind,
                 "graph_captured": tr.runner.captured},
        **({"profile": kernels} if kernels is not None else {}),
    }


def host_time(tr, steps: int) -> float:
    """Median host time of one step launched onto an idle GPU (synchronised before each step,
    not after): the CPU work per step. Above the GPU kernel time per step, the run is host-bound;
    close to the whole step time, something in the step waits for the GPU."""
    import statistics

    import torch

    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr.train_step()
        times.append(1000 * (time.perf_counter() - t0))
    torch.cuda.synchronize()
    return statistics.median(times)


def profile_kernels(tr, steps: int, top: int = 12) -> dict:
    """GPU kernel time per step (torch.profiler over ``steps`` steps): the total, its share of
    the wall step time (low = launch/CPU-bound), and the ``top`` kernels by time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    rows = []
    for e in prof.key_averages():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            rows.append((t / steps, e.count / steps, e.key))
    rows.sort(reverse=True)
    gpu_us = sum(r[0] for r in rows)
    return {
        "gpu_ms_per_step": gpu_us / 1000,
        "wall_ms_per_step_profiled": 1000 * wall / steps,
        "kernels_per_step": sum(r[1] for r in rows),
        "top": [{"us": round(t, 1), "calls": c, "kernel": k[:90]} for t, c, k in rows[:top]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared data folder")
    ap.add_argument("--sizes", nargs="+", default=["2m", "7m", "17m", "30m"])
    ap.add_argument("--bits", nargs="+", type=float, default=[16, 4])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument(
        "--tokens-per-step", type=int, default=131072, help="batch = tokens_per_step / seq_len"
    )
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto")
    ap.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode: default, reduce-overhead (CUDA graphs), ...",
    )
    ap.add_argument(
        "--embed-bits",
        default="auto",
        help="QAT bits of the tied embedding: auto = max(B, 4), fp, or a width",
    )
    ap.add_argument(
        "--profile", type=int, default=0, metavar="STEPS",
        help="also profile this many steps: GPU kernel time per step and the top kernels",
    )
    ap.add_argument("--kernels", choices=["fused", "plain"], help="perf.kernels")
    ap.add_argument("--batches", choices=["auto", "device", "host"], help="perf.batches")
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], help="perf.cuda_graph")
    ap.add_argument("--peak", type=float, default=790.0, help="peak TFLOP/s for MFU")
    ap.add_argument("--out", help="write results JSON here")
    args = ap.parse_args()

    import torch

    rows = []
    for size in args.sizes:
        for bits in args.bits:
            seq = args.seq_len
            r = measure(
                args.data,
                size,
                bits,
                seq,
                args.tokens_per_step // seq,
                args.steps,
                args.warmup,
                args.device,
                args.compile,
                args.compile_mode,
                args.embed_bits,
                args.profile,
                {k: v for k, v in (("kernels", args.kernels), ("batches", args.batches),
                                   ("cuda_graph", args.cuda_graph)) if v},
            )
            r["mfu"] = r["model_tflops"] / args.peak
            rows.append(r)
            print(json.dumps(r), flush=True)
    fp: dict[str, float] = {}  # the latest FP step of each size: repeats pair in order
    for r in rows:
        if r["bits"] == 16:
            fp[r["size"]] = r["step_ms"]
        elif r["size"] in fp:
            r["qat_step_over_fp"] = r["step_ms"] / fp[r["size"]]
    from coqat.provenance import git_commit

    commit = git_commit()
    out = {
        "provenance": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else platform.processor(),
            "torch": torch.__version__,
            "commit": commit,
            "command": "python bench/throughput.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v is not None and k != "out"
            ),
            "peak_tflops": args.peak,
            "flops_per_token": "6*(N_linear + N_embedding) + 6*L*T*d (coqat.model.flops_per_token)",
        },
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
