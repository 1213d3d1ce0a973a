"""Throughput per call: tokens trained, wall time, and the efficiency against a single-process
benchmark of the same sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def bench_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """The rows of single-process throughput JSON files (``bench/results``): size, bits,
    params, tokens_per_s, mfu."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    keep = ("size", "bits", "params", "tokens_per_s", "mfu", "model_tflops")
    return [{k: r.get(k) for k in keep} for r in rows]


def bench_speed(bench: list[dict[str, Any]], size: str, peak_tflops: float = 790.0) -> float:
    """Single-process tokens/s of a ladder size: its bench row (4-bit QAT first, else FP), or,
    for a size without one, the MFU of the 4-bit rows interpolated in log N times
    ``peak_tflops`` over the size's FLOPs per token (seq 512, vocabulary 8192)."""
    from coqat.model.config import flops_per_token, ladder, param_counts

    rows = sorted((r for r in bench if r["size"] == size), key=lambda r: r["bits"] != 4.0)
    if rows:
        return float(rows[0]["tokens_per_s"])
    b4 = sorted((r for r in bench if r["bits"] == 4.0), key=lambda r: r["params"])
    cfg = ladder(size, seq_len=512, vocab_size=8192)
    mfu = float(np.interp(np.log(param_counts(cfg).total),
                          np.log([r["params"] for r in b4]), [r["mfu"] for r in b4]))
    return mfu * peak_tflops * 1e12 / flops_per_token(cfg)


def per_call(records: list[dict[str, Any]], calls: list[dict[str, Any]],
             bench: list[dict[str, Any]]) -> dict[str, Any]:
    """Per call (``calls``: call, wall_s, workers, ...): runs, tokens trained (every run's
    private part plus each FP trunk once, to its latest branch), their single-process time at
    the bench speed of their size, tokens/s and ``efficiency`` = that time / the call's wall."""
    speeds: dict[str, float] = {}

    def tps(r: dict[str, Any]) -> float:
        if r["size"] not in speeds:
            speeds[r["size"]] = bench_speed(bench, r["size"])
        return speeds[r["size"]]

    per: dict[str, dict[str, Any]] = {c["call"]: {**c, "n_runs": 0, "tokens": 0.0,
                                                   "equiv_s": 0.0} for c in calls}
    trunks: dict[tuple, tuple[int, dict]] = {}
    for r in records:
        d = per.setdefault(r["call"], {"call": r["call"], "n_runs": 0, "tokens": 0.0,
                                       "equiv_s": 0.0, "wall_s": None})
        b = int(r.get("branch_step") or 0)
        priv = (int(r["steps"]) - b) * int(r["tokens_per_step"])
        d["n_runs"] += 1
        d["tokens"] += priv
        d["equiv_s"] += priv / tps(r)
        if r.get("trunk"):
            k = (r["call"], r["trunk"])
            tok = b * int(r["tokens_per_step"])
            if tok >= trunks.get(k, (0, r))[0]:
                trunks[k] = (tok, r)
    for (call, _), (tok, r) in sorted(trunks.items(), key=lambda kv: kv[0]):
        per[call]["tokens"] += tok
        per[call]["equiv_s"] += tok / tps(r)
    for d in per.values():
        w = d.get("wall_s")
        d["tokens_per_s"] = d["tokens"] / w if w else None
        d["efficiency"] = d["equiv_s"] / w if w else None
    conc = [d["efficiency"] for d in per.values()
            if (d.get("workers") or 1) > 1 and d["efficiency"]]
    return {
        "calls": list(per.values()),
        "total_wall_s": float(sum(d["wall_s"] or 0 for d in per.values())),
        "mean_efficiency_concurrent": float(np.mean(conc)) if conc else None,
        "bench_tokens_per_s": {k: speeds[k] for k in sorted(speeds)},
    }
