"""Training throughput (tokens/s) of coqat's trainer: the one table behind every time estimate
(``coqat sweep plan``, the sweep ETA, the time limit of ``coqat sweep run``).

The table is ``throughput-h200.json`` beside this module: the 4-bit QAT rows of the single-process
H200 benchmarks it names (``bench/results/``, with date, commit and command; the test suite checks
the copy against those files). A ladder size of the table at the benchmark's shape gets its
measured tokens/s; any other model gets the model-FLOP utilisation (MFU) interpolated in log N
between the measured sizes (clamped at the ends) times the peak, over its own FLOPs per token.
CPU runs use :data:`CPU_FLOPS`.

The table's ``overheads`` are what a worker process pays on the GPU besides steady training,
measured over whole sweep calls (see :func:`overheads`): compiling each new graph (a model shape's
FP step, and its QAT step per bit width) once per process, a piece's evaluations and checkpoints,
and the process's start.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

TABLE_PATH = Path(__file__).with_name("throughput-h200.json")

# Model FLOP/s of a small CPU run, evaluations and start-up included: the tiny example sweep
# (8.15e11 FLOPs with sharing) ran in 39 s on a 2-core machine at load average ~6 with one
# torch thread (2026-11-30, `coqat sweep run examples/sweeps/tiny.yaml`): 2.1e10.
CPU_FLOPS = 2.0e10


def on_cpu(device: str) -> bool:
    """Whether a run with this ``device`` setting trains on the CPU here ('auto' without CUDA)."""
    if device != "auto":
        return device == "cpu"
    return not _cuda_available()


@functools.cache
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@functools.cache
def bench_table() -> dict[str, Any]:
    """The shipped benchmark table (see module doc)."""
    return json.loads(TABLE_PATH.read_text("utf-8"))


def bench_rows() -> list[dict[str, Any]]:
    """The table's rows (size, bits, params, d_model, n_layers, seq_len, batch, tokens_per_s,
    mfu), smallest model first."""
    return sorted(bench_table()["rows"], key=lambda r: r["params"])


#: the overheads of :func:`overheads`, in seconds
OVERHEAD_KEYS = ("compile_fp_s", "compile_qat_s", "piece_s", "process_start_s")


def interp_log_params(rows: list[dict[str, Any]], params: float, key: str) -> float:
    """``key`` of ``rows`` (sorted by ``params``) interpolated linearly in log N at ``params``,
    clamped to the first and last row outside their range."""
    xs = [math.log(r["params"]) for r in rows]
    return float(np.interp(math.log(params), xs, [float(r[key]) for r in rows]))


def gpu_tokens_per_s(model: Any) -> float:
    """Single-process tokens/s of ``model`` (a ModelConfig) on the benchmarked GPU: MFU
    interpolated in log N over the table, times the peak, over the model's FLOPs per token."""
    from coqat.model.config import flops_per_token, param_counts

    mfu = interp_log_params(bench_rows(), param_counts(model).total, "mfu")
    return mfu * bench_table()["peak_tflops"] * 1e12 / flops_per_token(model)


def overheads(cfg: Any) -> dict[str, float]:
    """Seconds a run (a RunConfig) pays besides steady training, from the table's
    ``overheads``: ``compile_fp_s`` and ``compile_qat_s`` (the first FP / QAT-at-these-bits
    training of its model shape in a process; 0 when it does not compile), ``piece_s`` (each run
    or trunk segment: evaluations, checkpoints, set-up) and ``process_start_s``; interpolated in
    log N between the measured sizes, clamped at the ends. All 0 for a CPU run (its
    :data:`CPU_FLOPS` already includes them)."""
    from coqat.model.config import param_counts

    if on_cpu(cfg.device):
        return dict.fromkeys(OVERHEAD_KEYS, 0.0)
    ov = bench_table()["overheads"]
    rows = sorted(ov["rows"], key=lambda r: r["params"])
    n = param_counts(cfg.model).total
    out = {k: interp_log_params(rows, n, k) for k in OVERHEAD_KEYS if k != "process_start_s"}
    if cfg.compile == "off":
        out["compile_fp_s"] = out["compile_qat_s"] = 0.0
    out["process_start_s"] = float(ov["process_start_s"])
    return out


def tokens_per_s(cfg: Any, table: dict[str, float] | None = None, default: float | None = None
                 ) -> float:
    """Throughput estimate of a run (a RunConfig) on one device, alone on it: ``default`` if
    given; else ``table[cfg.size]`` (a user's measurement); else the CPU rate for a CPU run;
    else :func:`gpu_tokens_per_s`."""
    from coqat.model.config import flops_per_token

    if default:
        return float(default)
    if table and cfg.size in table:
        return float(table[cfg.size])
    if on_cpu(cfg.device):
        return CPU_FLOPS / flops_per_token(cfg.model)
    return gpu_tokens_per_s(cfg.model)


def parse_tokens_per_s(values: list[str]) -> Any:
    """``--tokens-per-s`` values: one number for every run, or ``SIZE=NUMBER`` entries
    (a table by size); None when none were given."""
    from coqat.errors import ConfigError

    if not values:
        return None
    table: dict[str, float] = {}
    for v in values:
        try:
            if "=" in v:
                k, x = v.split("=", 1)
                table[k.strip()] = float(x)
            else:
                return float(v)
        except ValueError:
            raise ConfigError("--tokens-per-s", f"{v!r} is not a number or SIZE=NUMBER") from None
    return table
