"""Run one slice of the reference experiment on a GPU: an FP learning-rate sweep, then QAT-fraction
grids that share FP trunks. Every finished run is appended at once to ``--out/results.jsonl``, so
a slice cut short by its time limit keeps what it finished.

    python experiments/reference/run_slice.py --data /tmp/linux --slice s1 --out $OUT

Slices are defined in SLICES below (the sweep of session 1 is "s1"); the results are merged into
the reference store with ``python experiments/reference/ingest.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

BASE = {
    "model": {"seq_len": 512, "vocab_size": 8192},
    "optim": {"batch_size": 128, "lr": 3e-3},
    "schedule": {"warmup": 0.02, "cooldown": 0.2},
    "qat": {"cooldown": 0.2, "schedule": "fused"},
}

FRACTIONS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)

SLICES = {
    # a CPU smoke test of this script
    "smoke": {
        "base": {
            "model": {"seq_len": 32},
            "optim": {"batch_size": 4},
            "device": "cpu",
            "data": {"val_tokens": 1024},
        },
        "lr_sweep": {"tiny": (3e-3, 6e-3)},
        "lr_sweep_tokens_per_param": 0.05,
        "lr": {},
        "grids": [{"size": "tiny", "bits": 4, "s_total": (0.2,), "fractions": (0.0, 0.5, 1.0)}],
    },
    # session 1, second call: 2m at 2, 1 and 6 bits; seeds and the standard schedule at 4 bits
    "s2": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3},
        "grids": [
            {"size": "2m", "bits": 2, "s_total": (20, 80, 320), "fractions": FRACTIONS},
            {"size": "2m", "bits": 1, "s_total": (20, 80, 320), "fractions": FRACTIONS},
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0, 0.2, 0.6, 1.0),
                "seeds": (1, 2),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {"size": "2m", "bits": 6, "s_total": (20, 80), "fractions": FRACTIONS},
        ],
    },
    # next session, first call: what s2 did not reach (seeds, the standard schedule, 6 bits),
    # plus an exact rerun of two s1/s2 points to measure GPU run-to-run nondeterminism
    "s3": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3},
        "grids": [
            {"size": "2m", "bits": 4, "s_total": (80,), "fractions": (0.0, 0.2, 0.6, 1.0),
             "seeds": (0, 1, 2)},
            {"size": "2m", "bits": 4, "s_total": (80,), "fractions": (0.1, 0.2, 0.4, 0.6),
             "schedules": ("standard",)},
            {"size": "2m", "bits": 2, "s_total": (80,), "fractions": (0.1, 0.2, 0.4, 0.6),
             "schedules": ("standard",)},
            {"size": "2m", "bits": 6, "s_total": (20, 80), "fractions": FRACTIONS},
        ],
    },
    # session 1 (2026-11-29): LR sweeps of the three smallest sizes, then 2m at 4 and 2 bits
    "s1": {
        "lr_sweep": {
            "2m": (1.5e-3, 3e-3, 6e-3),
            "4m": (1.5e-3, 3e-3, 6e-3),
            "7m": (1.5e-3, 3e-3, 6e-3),
        },
        "lr_sweep_tokens_per_param": 10,
        "grids": [
            {"size": "2m", "bits": 4, "s_total": (20, 80, 320), "fractions": FRACTIONS},
            {"size": "2m", "bits": 2, "s_total": (20, 80, 320), "fractions": FRACTIONS},
        ],
    },
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(size: str, tokens: int, data: str, base: dict | None = None, **over):
    from coqat.config import apply_overrides, from_dict
    from coqat.train.config import RunConfig

    d = _merge(BASE, base or {})
    d = _merge(d, {"size": size, "tokens": tokens, "data": {"path": data}})
    d["eval_every"] = tokens  # evaluate at the phase switch and at the end only
    return from_dict(RunConfig, apply_overrides(d, [f"{k}={v}" for k, v in over.items()]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--slice", required=True, choices=sorted(SLICES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting runs after this")
    args = ap.parse_args()

    from coqat.model import param_counts
    from coqat.train.phases import plan_phases
    from coqat.train.run import execute, train_trunk, trunk_key

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/coqat-ref") / args.slice
    sl = SLICES[args.slice]

    def record(kind: str, res: dict, **extra) -> None:
        res = res | {"experiment": kind, "slice": args.slice} | extra
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        print(
            json.dumps(
                {
                    k: res.get(k)
                    for k in (
                        "experiment",
                        "size",
                        "bits",
                        "lr",
                        "D_total",
                        "f",
                        "loss",
                        "loss_fp",
                        "loss_ptq",
                        "wall_fp",
                        "wall_qat",
                    )
                }
            ),
            flush=True,
        )

    def time_left() -> bool:
        return time.time() - t_start < args.budget_s

    best_lr = dict(sl.get("lr", {}))
    for size, lrs in sl["lr_sweep"].items():
        n = None
        losses = {}
        for lr in lrs:
            if not time_left():
                break
            cfg0 = run_config(size, 10**12, args.data, sl.get("base"))
            n = param_counts(cfg0.model).total
            tokens = int(sl["lr_sweep_tokens_per_param"] * n)
            cfg = run_config(
                size, tokens, args.data, sl.get("base"), **{"optim.lr": lr, "qat.bits": 16}
            )
            res = execute(cfg, work / f"lr-{size}-{lr:g}")
            losses[lr] = res["loss"]
            record("lr_sweep", res)
        finite = {k: v for k, v in losses.items() if math.isfinite(v)}
        if finite:
            best_lr[size] = min(finite, key=finite.get)
    print("best lr", best_lr, flush=True)

    for grid in sl["grids"]:
        size, bits = grid["size"], grid["bits"]
        lr = best_lr.get(size, BASE["optim"]["lr"])
        cfg0 = run_config(size, 10**12, args.data, sl.get("base"))
        nbytes = param_counts(cfg0.model).total * bits / 8
        for s_total in grid["s_total"]:
            if not time_left():
                break
            tps = cfg0.tokens_per_step
            tokens = max(1, round(s_total * nbytes / tps)) * tps
            for seed in grid.get("seeds", (0,)):
                cfgs = [
                    run_config(
                        size,
                        tokens,
                        args.data,
                        sl.get("base"),
                        **{
                            "optim.lr": lr,
                            "qat.bits": bits,
                            "qat.fraction": f,
                            "qat.schedule": sched,
                            "seed": seed,
                        },
                    )
                    for sched in grid.get("schedules", ("fused",))
                    for f in grid["fractions"]
                    if not (sched == "standard" and f in (0.0, 1.0))
                ]
                branch = sorted({plan_phases(c).branch_step for c in cfgs} - {0})
                tdir = work / f"trunk-{trunk_key(cfgs[0])}"
                t0 = time.time()
                ckpts = train_trunk(cfgs[0], tdir, branch)
                trunk_s = time.time() - t0
                for c in cfgs:
                    if not time_left():
                        break
                    b = plan_phases(c).branch_step
                    name = f"{size}-b{bits}-S{s_total}-f{c.qat.fraction:g}-{c.qat.schedule}-s{seed}"
                    res = execute(c, work / name, start_from=ckpts.get(b))
                    record(
                        "grid",
                        res,
                        s_target=s_total,
                        trunk_s=trunk_s,
                        trunk=trunk_key(c),
                        branch_step=b,
                    )
    print(f"slice done in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
