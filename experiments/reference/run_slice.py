"""Run one slice of the reference experiment on a GPU: an FP learning-rate sweep, then QAT-fraction
grids that share FP trunks. Every finished run is appended at once to ``--out/results.jsonl``, so
a slice cut short by its time limit keeps what it finished.

    python experiments/reference/run_slice.py --data /tmp/linux --slice s1 --out $OUT

Slices are defined in SLICES below (the sweep of session 1 is "s1"); the results are merged into
the reference store with ``python experiments/reference/ingest.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from pathlib import Path

BASE = {
    "model": {"seq_len": 512, "vocab_size": 8192},
    "optim": {"batch_size": 128, "lr": 3e-3},
    "schedule": {"warmup": 0.02, "cooldown": 0.2},
    # sessions 1-2: the fused QAT decay is 20% of the QAT phase ("decay-qat")
    "qat": {"cooldown": 0.2, "cooldown_of": "qat", "schedule": "fused"},
}

FRACTIONS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)

# from session 3 (slice s7 showed it; README 4.): the fused decay is 20% of the whole run, as
# long as the FP run's own cooldown, capped at the QAT phase ("decay-total"); finer at small f,
# where the optimum moved
DECAY_TOTAL = {"qat.cooldown_of": "total"}
FRACTIONS_V2 = (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)


def v2(size: str, bits: float, *s_total: float, **extra) -> dict:
    """A decay-total grid over FRACTIONS_V2."""
    return {
        "size": size,
        "bits": bits,
        "s_total": s_total,
        "fractions": FRACTIONS_V2,
        "overrides": DECAY_TOTAL,
    } | extra


SLICES = {
    # a CPU smoke test of this script (tests/test_run_slice.py; data with a vocabulary <= 512)
    "smoke": {
        "base": {
            "model": {"seq_len": 32, "vocab_size": 512},
            "optim": {"batch_size": 4},
            "device": "cpu",
            "data": {"val_tokens": 1024},
        },
        "lr_sweep": {"tiny": (1e-3, 6e-3)},  # neither is BASE's lr: the grid must use the sweep
        "lr_sweep_tokens_per_param": 0.05,
        "lr": {},
        # split over 2 workers: part 1 gets f = 1 and f = 0 (waits for the trunk's last checkpoint)
        "grids": [
            {
                "size": "tiny",
                "bits": 4,
                "s_total": (0.2,),
                "fractions": (0.0, 0.5, 1.0),
                "split": 2,
            }
        ],
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
    # session 2, call 2: what call 1 (s3) did not reach, largest units first so that they start
    # at once on the concurrent workers (4m at the lr of the 4m sweep, 1.5e-3)
    "s3b": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3, "4m": 1.5e-3},
        "grids": [
            {"size": "4m", "bits": 4, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "4m", "bits": 1, "s_total": (320, 80), "fractions": FRACTIONS},
            {"size": "4m", "bits": 2, "s_total": (80,), "fractions": FRACTIONS},
            {
                "size": "2m",
                "bits": 2,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0,),
                "seeds": (0, 1),
                "overrides": {"schedule.cooldown": 0.1},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0,),
                "seeds": (0, 1),
                "overrides": {"schedule.cooldown": 0.4},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.2, 0.6),
                "seeds": (1,),
                "overrides": {"qat.cooldown": 0.4},
            },
            {"size": "2m", "bits": 6, "s_total": (80,), "fractions": FRACTIONS},
        ],
    },
    # session 2, call 3: first 7m grids (lr 1.5e-3 from the 7m sweep), 6 bits at 2m, a
    # CUDA-graph (compile_mode=reduce-overhead) replicate of two s3 runs, 12m at lr 3e-3
    "s4": {
        "lr_sweep": {"12m": (3e-3,)},
        "lr_sweep_tokens_per_param": 10,
        "lr": {"2m": 3e-3, "7m": 1.5e-3},
        "grids": [
            {"size": "7m", "bits": 2, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "7m", "bits": 1, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "2m", "bits": 6, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "7m", "bits": 4, "s_total": (20,), "fractions": FRACTIONS},
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.2, 0.6),
                "seeds": (1,),
                "overrides": {"compile_mode": "reduce-overhead"},
            },
        ],
    },
    # next session, first: is the short QAT cooldown what costs small fractions? The decay as
    # 20% of the whole run (qat.cooldown_of = total: the FP cooldown's length, moved into QAT)
    # and over the whole QAT phase (qat.cooldown = 1), against the slices' 20% of the QAT phase,
    # on shared trunks (same call), 2 seeds; and 6 bits, where f = 0.1 lost to PTQ
    "s5": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3},
        "grids": [
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.6),
                "seeds": (0, 1),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.6),
                "seeds": (0, 1),
                "overrides": {"qat.cooldown_of": "total"},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2),
                "seeds": (0, 1),
                "overrides": {"qat.cooldown": 1.0},
            },
            {"size": "2m", "bits": 6, "s_total": (80,), "fractions": (0.0, 0.1, 0.2)},
            {
                "size": "2m",
                "bits": 6,
                "s_total": (80,),
                "fractions": (0.1, 0.2),
                "overrides": {"qat.cooldown_of": "total"},
            },
        ],
    },
    # the memory-budget check (question 5): ~1.4-2.2 MB of weights, D = 151.5M tokens, each
    # candidate at two fractions around the law's f* (predictions/memory-budget.json, recorded
    # before these runs; 4m at 4 bits is the measured 4m 4-bit S=80 grid); 17m needs its lr sweep
    "s6": {
        "lr_sweep": {"17m": (1.5e-3, 3e-3)},
        "lr_sweep_tokens_per_param": 10,
        "lr": {"7m": 1.5e-3, "12m": 3e-3},
        "grids": [
            {"size": "7m", "bits": 2, "tokens": 151_453_696, "fractions": (0.25, 0.65)},
            {"size": "12m", "bits": 1, "tokens": 151_453_696, "fractions": (0.25, 0.65)},
            {"size": "17m", "bits": 1, "tokens": 151_453_696, "fractions": (0.25, 0.65)},
        ],
    },
    # session 3, call 1: the LR sweeps the next grids need (17m; 12m at 6e-3, its optimum was
    # at the edge), s5 (the QAT decay question), then the 12m memory-budget candidate, which
    # waits for its sweep in this call
    "s7": {
        "lr_sweep": {"17m": (1.5e-3, 3e-3), "12m": (6e-3,)},
        "lr_sweep_tokens_per_param": 10,
        "lr_prior": {  # session 2's 12m sweep at the same 10 tokens per parameter
            "12m": {3.75e-4: 1.4254, 7.5e-4: 1.3297, 1.5e-3: 1.3033, 3e-3: 1.2937},
        },
        "lr": {"2m": 3e-3, "7m": 1.5e-3},
        "grids": [],  # s5's grids, then s6's 12m candidate (set below SLICES)
    },
    # session 3, call 2: the memory-budget candidates (decay-qat, as predicted; 17m at the lr of
    # the s7 sweep, 1.5e-3 < 3e-3), then decay-total grids at 2m
    "s8": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3, "7m": 1.5e-3, "12m": 3e-3, "17m": 1.5e-3},
        "grids": [],  # s6's three candidates, then the grids below (set below SLICES)
    },
    # session 3, call 3: decay-total grids at 4m and 7m, trimmed to the device time left (a 7m
    # worker ran at 0.19 x the bench in s8): no f = 0.05 / 0.8, and no f = 1 at 7m 2-bit
    "s9": {
        "lr_sweep": {},
        "lr": {"4m": 1.5e-3, "7m": 1.5e-3},
        "grids": [
            v2("7m", 2, 80, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6)),
            v2("4m", 4, 80, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0)),
            v2("7m", 1, 80, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0)),
            v2("4m", 2, 80, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0)),
            v2("4m", 1, 80),
        ],
    },
    # session 4, call 1: a fourth size with decay total (12m at 2 bits, S = 80), split so that
    # the cell uses three workers; the 17m lr sweep down to 7.5e-4 (it ended at its lower edge,
    # 1.5e-3) on the fourth
    "s10": {
        "lr_sweep": {"17m": (7.5e-4,)},
        "lr_sweep_tokens_per_param": 10,
        "lr": {"12m": 3e-3},
        "grids": [v2("12m", 2, 80, split=3)],
    },
    # session 4, call 2: a fifth size (17m, 1 bit, S = 80, at the best of the three 17m rates
    # once s10's sweep point is passed with --done); on the fourth worker, fused vs standard with
    # decay total at 4 and 6 bits (same call: same trunk) and a second seed of the 2m 4-bit grid
    "s11": {
        "lr_sweep": {},
        "lr_prior": {"17m": {1.5e-3: 1.1987, 3e-3: 1.2123}},  # session 3 (s7)
        "lr": {"2m": 3e-3},
        "grids": [
            v2("17m", 1, 80, split=3),
            v2("2m", 4, 80, fractions=(0.1, 0.2, 0.4, 0.6), schedules=("standard", "fused")),
            v2("2m", 6, 80, fractions=(0.1, 0.2, 0.4), schedules=("standard", "fused")),
            v2("2m", 4, 80, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0), seeds=(1,)),
        ],
    },
    # session 4, call 3: does f* grow with S under decay total? S = 320 at 4m (2 and 1 bits;
    # the decay-qat 4m 1-bit optimum grew 0.29 -> 0.55 there); 12m at 1 bit. The 12m cell, last
    # in the list, never ran: when the first 4m part ended (~250 s) it no longer fitted the
    # budget (`simulate` now shows this before a call; s13 takes it first)
    "s12": {
        "lr_sweep": {},
        "lr": {"4m": 1.5e-3, "12m": 3e-3},
        "grids": [
            v2("4m", 2, 320, split=2),
            v2("4m", 1, 320, split=2),
            v2("12m", 1, 80, split=2),
        ],
    },
    # session 5, call 1 (4 workers, --eff 0.22): the sixth size's LR check (30m, 1.5e-3 and 3e-3
    # at 5 tokens per parameter, ~150M tokens each: at 10 the two runs would not end within a
    # call while sharing the GPU; the per-worker share of a 17m unit was 0.21-0.25 in s8/s10);
    # the first S = 1000 grid (2m, 1 bit, decay total); fused vs standard with decay total at 2
    # and 1 bits (2m and 4m at 1 bit, S = 80; same call, same trunk), where the paper saw no gain
    "s13": {
        "lr_sweep": {"30m": (1.5e-3, 3e-3)},
        "lr_sweep_tokens_per_param": 5,
        "lr": {"2m": 3e-3, "4m": 1.5e-3},
        "grids": [
            v2("2m", 1, 1000, split=2),
            v2("2m", 2, 80, fractions=(0.1, 0.2, 0.4, 0.6), schedules=("standard", "fused")),
            v2("2m", 1, 80, fractions=(0.1, 0.2, 0.4, 0.6), schedules=("standard", "fused")),
            v2("4m", 1, 80, fractions=(0.1, 0.2, 0.4, 0.6), schedules=("standard", "fused")),
        ],
    },
    # session 5, call 2 (3 workers, --eff 0.32, --done with s13's results for the 30m lr, 1.5e-3):
    # 30m at 1 bit, S = 80, three fractions around the law's optimum (0.44 at 17m). Nine
    # fractions would be ~0.3 GPU-hours, and a 10-minute call keeps no checkpoint for the next;
    # split 3: the trunk runs alone until the f = 0.7 branch (0.3 D), so the real shares exceed
    # the uniform --eff of the estimate
    "s14": {
        "lr_sweep": {},
        "lr": {},
        "grids": [v2("30m", 1, 80, fractions=(0.2, 0.45, 0.7), split=3)],
    },
    # session 5, call 3 (1 worker, --eff 0.9): the held-out size, 50m (48.5M parameters) at
    # 1 bit, S = 80: one run of 485M tokens took 532 s alone (compilation and evaluations
    # included; bench 2026-11-29: 1.17M tokens/s), so one fraction per call; lr 1.5e-3 (17m's and
    # 30m's best; no 50m sweep fits the budget)
    "s15": {
        "lr_sweep": {},
        "lr": {"50m": 1.5e-3},
        "grids": [v2("50m", 1, 80, fractions=(0.45,))],
    },
    # next session: bracket the 50m optimum (the law says 0.69-0.87, 30m measured >= 0.45), one
    # fraction per call (--workers 1 --eff 0.8, as s15 measured; each call trains its own FP trunk)
    "s16": {"lr_sweep": {}, "lr": {"50m": 1.5e-3}, "grids": [v2("50m", 1, 80, fractions=(0.2,))]},
    "s17": {"lr_sweep": {}, "lr": {"50m": 1.5e-3}, "grids": [v2("50m", 1, 80, fractions=(0.7,))]},
    # session 5, last minutes of device time (~250 s left, one cold start): seed 1 of the S = 1000
    # grid (2m, 1 bit) at f = 0.3, 0.6, 1: does the interior optimum (0.6 < 0.3, 1) survive a seed?
    "s20": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3},
        "grids": [v2("2m", 1, 1000, fractions=(0.3, 0.6, 1.0), seeds=(1,), split=3)],
    },
    # next session: a held-out point in the issue's ~60-100M range. 90m (91.2M parameters) at
    # S = 80 is ~1,900 s (0.8 of the bench), four calls; at 1 bit and S = 20 one run is 228M
    # tokens (~3,480 steps), which fits a call alone (--workers 1 --eff 0.8). It extrapolates in
    # S too (the decay-total fit has S >= 80), so it tests N and S together
    "s19": {"lr_sweep": {}, "lr": {"90m": 1.5e-3}, "grids": [v2("90m", 1, 20, fractions=(0.3,))]},
    # next session: is the 30m curve interior? f = 0.1 and 1 (QAT from scratch) at 1 bit, S = 80
    # (--workers 2 --eff 0.4: two 300M-token runs; 0.1 trains its own trunk to 0.9 D)
    "s18": {
        "lr_sweep": {},
        "lr": {"30m": 1.5e-3},
        "grids": [v2("30m", 1, 80, fractions=(0.1, 1.0), split=2)],
    },
    # session 6, call 2 (GPU 1 of two, 4 workers, --eff 0.22): S = 20 grids at 1 bit, so that
    # the 90m held-out point (s19, S = 20) is inside the fitted S range, and the S range
    # reaches down to ~10-20: 7m, 12m, 17m and 30m
    "s21": {
        "lr_sweep": {},
        "lr": {"7m": 1.5e-3, "12m": 3e-3, "17m": 1.5e-3, "30m": 1.5e-3},
        "grids": [
            v2("30m", 1, 20, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0), split=3),
            v2("17m", 1, 20, split=2),
            v2("12m", 1, 20),
            v2("7m", 1, 20, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0)),
        ],
    },
    # session 6, call 3 (GPU 1 of two): a second 90m held-out point at S = 20, f = 0.7
    "s22": {"lr_sweep": {}, "lr": {"90m": 1.5e-3}, "grids": [v2("90m", 1, 20, fractions=(0.7,))]},
    # session 6, last ~250 s: seed 1 of the 17m and 12m S = 20 grids at three fractions
    "s23": {
        "lr_sweep": {},
        "lr": {"12m": 3e-3, "17m": 1.5e-3},
        "grids": [
            v2("17m", 1, 20, fractions=(0.1, 0.3, 0.6), seeds=(1,), split=3),
            v2("12m", 1, 20, fractions=(0.1, 0.3, 0.6), seeds=(1,)),
        ],
    },
    # next session (a machine of two H200s: one slice per GPU, CUDA_VISIBLE_DEVICES and --out/--work
    # per GPU as in session 6): the 90m optimum at S = 20 (f = 0.3 and 0.7 ran in s19/s22; the
    # shipped law says 0.24, the closed form with a size term 0.45, the paper 0.11), one
    # fraction per GPU and call (--workers 1 --eff 0.8; s19 and s22 took 431 and 359 s)
    "s24": {"lr_sweep": {}, "lr": {"90m": 1.5e-3}, "grids": [v2("90m", 1, 20, fractions=(0.1,))]},
    "s25": {"lr_sweep": {}, "lr": {"90m": 1.5e-3}, "grids": [v2("90m", 1, 20, fractions=(0.45,))]},
    "s26": {"lr_sweep": {}, "lr": {"90m": 1.5e-3}, "grids": [v2("90m", 1, 20, fractions=(1.0,))]},
    # a second bit width above 17m: 30m at 2 bits, S = 20 (4 workers, --eff 0.22)
    "s27": {
        "lr_sweep": {},
        "lr": {"30m": 1.5e-3},
        "grids": [v2("30m", 2, 20, fractions=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 1.0), split=4)],
    },
    # (session 1's plan for the next session; superseded by s3 below)
    "s3-draft": {
        "lr_sweep": {},
        "lr": {"2m": 3e-3},
        "grids": [
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0, 0.2, 0.6, 1.0),
                "seeds": (0, 1, 2),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {
                "size": "2m",
                "bits": 2,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {"size": "2m", "bits": 6, "s_total": (20, 80), "fractions": FRACTIONS},
        ],
    },
    # session 2, call 1: LR sweeps down to 3.75e-4 for 4m/7m and of 12m; 2m seeds, the
    # standard schedule, the cooldown knobs on the GPU and 6 bits; then 4m grids at the swept lr
    "s3": {
        "lr_sweep": {
            "4m": (7.5e-4, 3.75e-4),
            "7m": (7.5e-4, 3.75e-4),
            "12m": (1.5e-3, 7.5e-4, 3.75e-4),
        },
        "lr_sweep_tokens_per_param": 10,
        "lr_prior": {  # session 1's sweep at the same 10 tokens per parameter
            "4m": {1.5e-3: 1.9127, 3e-3: 2.0692, 6e-3: 2.1955},
            "7m": {1.5e-3: 1.4864, 3e-3: 1.5768, 6e-3: 1.6670},
        },
        "lr": {"2m": 3e-3},
        "grids": [
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0, 0.2, 0.6, 1.0),
                "seeds": (0, 1, 2),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {
                "size": "2m",
                "bits": 2,
                "s_total": (80,),
                "fractions": (0.1, 0.2, 0.4, 0.6),
                "schedules": ("standard",),
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.2, 0.6),
                "seeds": (0, 1),
                "overrides": {"qat.cooldown": 0.1},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.2, 0.6),
                "seeds": (0, 1),
                "overrides": {"qat.cooldown": 0.4},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0,),
                "seeds": (0, 1),
                "overrides": {"schedule.cooldown": 0.1},
            },
            {
                "size": "2m",
                "bits": 4,
                "s_total": (80,),
                "fractions": (0.0,),
                "seeds": (0, 1),
                "overrides": {"schedule.cooldown": 0.4},
            },
            {"size": "4m", "bits": 2, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "4m", "bits": 1, "s_total": (80, 320), "fractions": FRACTIONS},
            {"size": "4m", "bits": 4, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "2m", "bits": 6, "s_total": (80,), "fractions": FRACTIONS},
            {"size": "4m", "bits": 2, "s_total": (320,), "fractions": FRACTIONS},
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

SLICES["s7"]["grids"] = SLICES["s5"]["grids"] + SLICES["s6"]["grids"][1:2]
SLICES["s8"]["grids"] = SLICES["s6"]["grids"][::-1] + [
    v2("2m", 4, 80),
    v2("2m", 2, 80),
    v2("2m", 1, 80),
    v2("2m", 2, 320),
    v2("2m", 6, 80),
    v2("2m", 1, 320),
]


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


def slice_units(sl: dict) -> list[dict]:
    """The slice as independent units of work, in priority order: one per LR-sweep point, one
    per grid cell (size, bits, S_total, seed) with its shared FP trunk, or ``split`` units per
    cell for a grid with ``"split": K`` (part 0 trains the trunk and the runs that branch last;
    parts 1.. run the others as soon as the trunk checkpoint they branch from exists: a large
    cell then uses several workers instead of one)."""
    units = [
        {"kind": "lr", "size": size, "lr": lr} for size, lrs in sl["lr_sweep"].items() for lr in lrs
    ]
    for gi, grid in enumerate(sl["grids"]):
        parts = int(grid.get("split", 1))
        units += [
            {"kind": "grid", "grid": gi, "size": grid["size"], "s_total": s, "seed": seed}
            | ({"part": i, "parts": parts} if parts > 1 else {})
            for s in grid.get("s_total", (None,))
            for seed in grid.get("seeds", (0,))
            for i in range(parts)
        ]
    for i, u in enumerate(units):
        u["id"] = i
    return units


@functools.cache
def bench_tokens_per_s(size: str) -> float:
    """Single-process H200 tokens/s of a ladder size (the committed bench results, through
    analyze.bench_speed), used only to plan slices (--estimate, --eff)."""
    from analyze import bench_speed, bench_throughput

    return bench_speed(bench_throughput(), size)


def split_cell(cfgs: list, parts: int) -> tuple[list[list], list[int]]:
    """Assign a cell's runs to ``parts`` workers (list scheduling in tokens): part 0 trains the
    trunk first (busy until its last branch step); a run can start once the trunk has passed its
    branch step; each run, in order of branch step (largest private part first), goes to the
    part where it would end first. Deterministic, so every worker computes the same split.
    Returns (runs per part, the token "time" at which each part ends)."""
    from coqat.train.phases import plan_phases

    tps = cfgs[0].tokens_per_step
    branch = [plan_phases(c).branch_step * tps for c in cfgs]
    trunk_end = max(branch)
    free = [trunk_end] + [0] * (parts - 1)
    share: list[list] = [[] for _ in range(parts)]
    order = sorted(range(len(cfgs)), key=lambda i: (branch[i], -(cfgs[i].tokens - branch[i])))
    for i in order:
        private = cfgs[i].tokens - branch[i]
        end = [max(free[p], branch[i]) + private for p in range(parts)]
        p = min(range(parts), key=lambda q: (end[q], q))
        free[p] = end[p]
        share[p].append(cfgs[i])
    return share, free


def unit_tokens(u: dict, sl: dict, data: str = "/tmp/linux") -> int:
    """Training tokens of one unit (a grid cell counts its shared trunk once; a part of a split
    cell counts the tokens until it ends, waiting for the trunk included)."""
    from coqat.train.phases import plan_phases

    if u["kind"] == "lr":
        return lr_config(u, sl, data).tokens
    cfgs = grid_configs(u, sl, 1e-3, data)
    if u.get("parts", 1) > 1:
        return split_cell(cfgs, u["parts"])[1][u["part"]]
    tps = cfgs[0].tokens_per_step
    branch = [plan_phases(c).branch_step for c in cfgs]
    return max(branch) * tps + sum(c.tokens - b * tps for c, b in zip(cfgs, branch))


def unit_seconds(u: dict, sl: dict, efficiency: float) -> float:
    """One unit's time on one worker at ``efficiency`` x the bench throughput."""
    return unit_tokens(u, sl) / (efficiency * bench_tokens_per_s(u["size"]))


def simulate(sl: dict, efficiency: float, workers: int, budget_s: float) -> dict[int, tuple]:
    """The schedule ``run_units`` would follow at the assumed speed: every worker walks the units
    once, in priority order, and claims each one that is unclaimed, fits in the budget (its
    whole span from now, the test ``run_units`` makes) and (a later part of a split cell) whose
    part 0 is claimed. Returns {unit id: (worker, start, end)};
    a unit missing from it would be skipped. A later part ends no earlier than its part 0 started
    plus its own span (``split_cell``), and no earlier than its start plus the runs it trains."""
    units = slice_units(sl)
    secs = {u["id"]: unit_seconds(u, sl, efficiency) for u in units}
    clock = [0.0] * workers
    pos = [0] * workers
    plan: dict[int, tuple] = {}
    while True:
        live = [w for w in range(workers) if pos[w] < len(units)]
        if not live:
            return plan
        w = min(live, key=lambda v: (clock[v], v))
        u = units[pos[w]]
        pos[w] += 1
        t = clock[w]
        if u["id"] in plan:
            continue
        if t + secs[u["id"]] > budget_s:  # run_units' test: the whole span from now must fit
            continue
        end = t + secs[u["id"]]
        if u.get("part"):
            head = plan.get(u["id"] - u["part"])
            if head is None:
                continue
            own = secs[u["id"]] * _private_share(u, sl)
            end = min(end, max(head[1] + secs[u["id"]], t + own))
        plan[u["id"]] = (w, t, end)
        clock[w] = end


def _private_share(u: dict, sl: dict) -> float:
    """Fraction of a split part's span (``unit_tokens``) that is its own training, not waiting."""
    from coqat.train.phases import plan_phases

    cfgs = grid_configs(u, sl, 1e-3, "/tmp/linux")
    share, free = split_cell(cfgs, u["parts"])
    tps = cfgs[0].tokens_per_step
    own = sum(c.tokens - plan_phases(c).branch_step * tps for c in share[u["part"]])
    return own / max(free[u["part"]], 1)


def estimate(sl: dict, efficiency: float = 0.5, workers: int = 1, budget_s: float = 540) -> None:
    """Print each unit's tokens, its time on one worker at ``efficiency`` x the bench throughput
    (a part of a split cell: until it ends, waiting for the trunk included) and where the
    simulated schedule (``simulate``) puts it, then the slice's worker-seconds over ``workers``,
    the simulated wall time, and the units the budget would leave out."""
    plan = simulate(sl, efficiency, workers, budget_s)
    units = slice_units(sl)
    total = 0.0
    for u in units:
        tok = unit_tokens(u, sl)
        sec = unit_seconds(u, sl, efficiency)
        total += sec
        desc = {k: v for k, v in u.items() if k not in ("id", "kind", "parts")}
        if u["kind"] == "grid":
            desc |= {"bits": sl["grids"][u["grid"]]["bits"]}
        w, t0, t1 = plan.get(u["id"], (None, 0.0, 0.0))
        where = f"worker {w}: {t0:4.0f}-{t1:4.0f} s" if w is not None else "SKIPPED"
        print(
            f"{u['id']:3d} {u['kind']:4s} {json.dumps(desc):70s} {tok / 1e6:8.1f}M {sec:6.0f} s"
            f"  {where}"
        )
    skipped = len(units) - len(plan)
    wall = max((t1 for _, _, t1 in plan.values()), default=0.0)
    print(
        f"total {total:.0f} worker-seconds at {efficiency:g} x bench per worker; simulated wall "
        f"time on {workers} worker(s) {wall:.0f} s of the {budget_s:g} s budget; "
        f"{skipped} unit(s) skipped"
    )


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_lr(size: str, sl: dict, records: list[dict]) -> float | None:
    """Lowest final FP loss of the slice's LR sweep of ``size``, merged with ``lr_prior`` (losses
    of earlier sessions' sweeps at the same tokens per parameter)."""
    losses = {float(k): v for k, v in sl.get("lr_prior", {}).get(size, {}).items()}
    for r in records:
        if r.get("experiment") == "lr_sweep" and r["size"] == size and math.isfinite(r["loss"]):
            losses[float(r["lr"])] = r["loss"]
    return min(losses, key=losses.get) if losses else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--slice", required=True, choices=sorted(SLICES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting runs after this")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="concurrent worker processes on this GPU (units are claimed dynamically)",
    )
    ap.add_argument("--work", default="/tmp/coqat-ref", help="folder for run and trunk folders")
    ap.add_argument("--estimate", action="store_true", help="print the units' cost and exit")
    ap.add_argument(
        "--done",
        nargs="*",
        default=[],
        help="results.jsonl files of earlier calls: their runs are skipped and their "
        "LR-sweep losses count",
    )
    ap.add_argument(
        "--eff",
        type=float,
        default=0.5,
        help="assumed fraction of the single-process bench speed per worker: a unit "
        "or run starts only if it would end within --budget-s at that speed",
    )
    ap.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--t-start", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.estimate:
        return estimate(SLICES[args.slice], args.eff, args.workers, args.budget_s)
    t_start = args.t_start or time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) / args.slice
    (work / "claims").mkdir(parents=True, exist_ok=True)
    if args.workers > 1 and args.worker_index is None:
        import subprocess
        import sys

        env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 8) // args.workers))}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    *sys.argv[1:],
                    "--worker-index",
                    str(i),
                    "--t-start",
                    str(t_start),
                ],
                env=env,
            )
            for i in range(args.workers)
        ]
        codes = [p.wait() for p in procs]
        print(f"slice done in {time.time() - t_start:.0f} s, worker exit codes {codes}", flush=True)
        raise SystemExit(max(codes))
    run_units(args, SLICES[args.slice], out, work, t_start)
    if args.worker_index is None:  # one worker, in this process: the same closing line
        print(f"slice done in {time.time() - t_start:.0f} s, worker exit codes [0]", flush=True)


def run_units(args, sl: dict, out: Path, work: Path, t_start: float) -> None:
    from coqat.config import config_hash

    worker = args.worker_index or 0
    results = out / "results.jsonl"
    prior = [r for path in args.done for r in read_records(Path(path))]
    done_hashes = {r["config_hash"] for r in prior if r.get("status") == "done"}

    def record(kind: str, res: dict, **extra) -> None:
        res = res | {"experiment": kind, "slice": args.slice, "worker": worker}
        res |= {"t_end": time.time() - t_start} | extra
        with open(results, "a") as f:  # one O_APPEND write per line: safe across workers
            f.write(json.dumps(res) + "\n")
        keys = ("experiment", "size", "bits", "lr", "D_total", "f", "loss", "loss_fp", "loss_ptq")
        print(
            json.dumps({"w": worker, "t": round(res["t_end"])} | {k: res.get(k) for k in keys}),
            flush=True,
        )

    def fits(tokens: int, size: str) -> bool:
        """Whether ``tokens`` of ``size`` would end before the budget, at the assumed speed."""
        eta = tokens / (args.eff * bench_tokens_per_s(size))
        return time.time() - t_start + eta <= args.budget_s

    def claim(name: str) -> bool:
        try:
            os.close(os.open(work / "claims" / name, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    units = slice_units(sl)
    fixed_lr = dict(sl.get("lr", {}))
    for u in units:
        if u["kind"] == "lr":
            todo = [c for c in [lr_config(u, sl, args.data)] if config_hash(c) not in done_hashes]
        else:  # the lr is final here unless this slice's own sweep is still running
            lr = fixed_lr.get(u["size"]) or best_lr(u["size"], sl, prior) or BASE["optim"]["lr"]
            todo = [
                c for c in grid_configs(u, sl, lr, args.data) if config_hash(c) not in done_hashes
            ]
        if not todo:
            (work / "claims" / f"done-{u['id']}").touch()
            continue
        if u.get("part"):  # a later part branches from part 0's trunk: only if part 0 runs
            if not (work / "claims" / f"unit-{u['id'] - u['part']}").exists():
                continue
        if not fits(unit_tokens(u, sl, args.data), u["size"]) or not claim(f"unit-{u['id']}"):
            continue
        try:
            if u["kind"] == "lr":
                record("lr_sweep", execute_run(todo[0], work / f"lr-{u['size']}-{u['lr']:g}"))
                continue
            size = u["size"]
            lr = fixed_lr.get(size)
            if lr is None:  # wait for this slice's LR sweep of the size
                mine = [v for v in units if v["kind"] == "lr" and v["size"] == size]
                while time.time() - t_start < args.budget_s and not all(
                    (work / "claims" / f"done-{v['id']}").exists() for v in mine
                ):
                    time.sleep(5)
                lr = best_lr(size, sl, prior + read_records(results)) or BASE["optim"]["lr"]
            cfgs = [
                c for c in grid_configs(u, sl, lr, args.data) if config_hash(c) not in done_hashes
            ]
            run_grid_cell(u, sl, cfgs, work, record, fits, claim, t_start + args.budget_s)
        finally:
            (work / "claims" / f"done-{u['id']}").touch()
    print(f"worker {worker} done at {time.time() - t_start:.0f} s", flush=True)


def execute_run(cfg, run_dir: Path) -> dict:
    from coqat.train.run import execute

    return execute(cfg, run_dir)


def lr_config(u: dict, sl: dict, data: str):
    from coqat.model import param_counts

    size, lr = u["size"], u["lr"]
    n = param_counts(run_config(size, 10**12, data, sl.get("base")).model).total
    tokens = int(sl["lr_sweep_tokens_per_param"] * n)
    return run_config(size, tokens, data, sl.get("base"), **{"optim.lr": lr, "qat.bits": 16})


def grid_configs(u: dict, sl: dict, lr: float, data: str) -> list:
    """The RunConfigs of one grid cell: every (schedule, fraction) at its S_total and seed."""
    from coqat.model import param_counts

    grid = sl["grids"][u["grid"]]
    bits = grid["bits"]
    base = _merge(sl.get("base", {}), grid.get("base", {}))
    cfg0 = run_config(grid["size"], 10**12, data, base)
    nbytes = param_counts(cfg0.model).total * bits / 8
    tps = cfg0.tokens_per_step
    if "tokens" in grid:  # a fixed token budget (the memory-budget check) instead of S_total
        tokens = max(1, round(grid["tokens"] / tps)) * tps
    else:
        tokens = max(1, round(u["s_total"] * nbytes / tps)) * tps
    over = dict(grid.get("overrides", {}))
    return [
        run_config(
            grid["size"],
            tokens,
            data,
            base,
            **(
                {
                    "optim.lr": lr,
                    "qat.bits": bits,
                    "qat.fraction": f,
                    "qat.schedule": sched,
                    "seed": u["seed"],
                }
                | over
            ),
        )
        for sched in grid.get("schedules", ("fused",))
        for f in grid["fractions"]
        if not (sched == "standard" and f in (0.0, 1.0))
    ]


def run_grid_cell(
    u: dict, sl: dict, cfgs: list, work: Path, record, fits, claim, deadline: float
) -> None:
    """Train the cell's FP trunk (once per trunk key, under a lock) and branch every run; for a
    part of a split cell (``split_cell``), part 0 trains the trunk and runs its share, the other
    parts wait for the trunk checkpoints of their runs (written atomically by part 0)."""
    from coqat.sweep.keys import trunk_key
    from coqat.train.phases import plan_phases
    from coqat.train.run import execute, train_trunk

    if not cfgs:
        return
    grid = sl["grids"][u["grid"]]
    size, bits, s_total, seed = grid["size"], grid["bits"], u["s_total"], u["seed"]
    over = dict(grid.get("overrides", {}))
    base = _merge(sl.get("base", {}), grid.get("base", {}))
    tps = cfgs[0].tokens_per_step
    branch = sorted({plan_phases(c).branch_step for c in cfgs} - {0})
    key = trunk_key(cfgs[0])
    trunk_dir = work / f"trunk-{key}"
    mine = split_cell(cfgs, u["parts"])[0][u["part"]] if u.get("parts", 1) > 1 else cfgs
    t0 = time.time()
    if u.get("part", 0) == 0:
        while not claim(f"trunk-{key}.lock"):  # one trunk key is trained by one worker at a time
            time.sleep(2)
        try:
            ckpts = train_trunk(cfgs[0], trunk_dir, branch)
        finally:
            (work / "claims" / f"trunk-{key}.lock").unlink()
    else:  # train_trunk's file names; a checkpoint exists only once complete (write-then-rename)
        ckpts = {b: trunk_dir / f"step_{b:08d}.pt" for b in branch}
    trunk_s = time.time() - t0
    part0_done = work / "claims" / f"done-{u['id'] - u.get('part', 0)}"
    for c in sorted(mine, key=lambda c: plan_phases(c).branch_step):
        b = plan_phases(c).branch_step
        # wait for the checkpoint; give up at the deadline or when part 0 ended without it
        while b and not ckpts[b].exists() and time.time() < deadline and not part0_done.exists():
            time.sleep(2)
        if b and not ckpts[b].exists():
            continue
        if not fits(c.tokens - b * tps, size):
            continue
        name = f"{size}-b{bits}-S{s_total}-f{c.qat.fraction:g}-{c.qat.schedule}-s{seed}"
        name += "".join(f"-{k}{v}" for k, v in over.items())
        res = execute(c, work / name, start_from=ckpts.get(b))
        record(
            "grid",
            res,
            s_target=s_total,
            trunk_s=trunk_s,
            trunk=key,
            branch_step=b,
            base=base or None,
            overrides=over or None,
            part=u.get("part"),
        )


if __name__ == "__main__":
    main()
