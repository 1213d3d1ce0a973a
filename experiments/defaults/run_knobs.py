"""Measure the defaults of the two-phase FP->QAT run at small scale on CPU.

    python experiments/defaults/run_knobs.py            # everything (~15 min on 2 CPU cores)
    python experiments/defaults/run_knobs.py --table    # only rebuild the table from results

Trains a 0.3M-parameter model (d_model 64, 2 layers, vocab 2048) for 400 steps of 1,024 tokens on
the embedded Linux C sample with the real trainer (``coqat.train.run.execute``), varying one knob at
a time around the defaults. Every finished run is appended to ``results.jsonl`` next to this file
(runs already there are skipped, so an interrupted study resumes); ``results.md`` holds the table.
Runs are spread over ``--jobs`` worker processes with one torch thread each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
TABLE = HERE / "results.md"

STEPS = 400
BASE = {
    "model": {"vocab_size": 2048, "seq_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 2},
    "data": {"val_tokens": 32768},
    "optim": {"lr": 3e-3, "batch_size": 16},
    "tokens": STEPS * 16 * 64,  # 409,600 tokens = 400 steps
    "device": "cpu",
    "compile": "off",
    # the study ran when qat.cooldown defaulted to 0.2 (now 0.4): pinned so that it reproduces
    "qat": {"bits": 4, "fraction": 0.3, "cooldown": 0.2},
}

# (group, label, overrides, seeds). Overrides are ``a.b=value`` strings on top of BASE.
FUSED = ["qat.schedule=fused"]
STD = ["qat.schedule=standard"]
S2 = (0, 1)
S1 = (0,)
STUDY: list[tuple[str, str, list[str], tuple[int, ...]]] = [
    # learning-rate sanity check: FP only
    ("lr (FP only)", "lr=1.5e-3", ["qat.bits=16", "optim.lr=1.5e-3"], S1),
    ("lr (FP only)", "lr=3e-3", ["qat.bits=16"], S1),
    ("lr (FP only)", "lr=6e-3", ["qat.bits=16", "optim.lr=6e-3"], S1),
    # cooldown & QAT fusion at equal total tokens
    ("schedule (4b)", "fused", FUSED, S2),
    ("schedule (4b)", "standard", STD, S2),
    # QAT cooldown fraction (fused)
    ("qat.cooldown (4b, fused)", "0.1", [*FUSED, "qat.cooldown=0.1"], S2),
    ("qat.cooldown (4b, fused)", "0.2", FUSED, S2),
    ("qat.cooldown (4b, fused)", "0.4", [*FUSED, "qat.cooldown=0.4"], S2),
    ("qat.cooldown (4b, fused)", "1.0", [*FUSED, "qat.cooldown=1.0"], S2),
    # the same at a small QAT fraction, where a QAT-phase cooldown is a short decay (session 2)
    ("qat.cooldown (4b, fused, f=0.1)", "0.2", [*FUSED, "qat.fraction=0.1"], S2),
    (
        "qat.cooldown (4b, fused, f=0.1)",
        "0.4",
        [*FUSED, "qat.fraction=0.1", "qat.cooldown=0.4"],
        S2,
    ),
    (
        "qat.cooldown (4b, fused, f=0.1)",
        "1.0",
        [*FUSED, "qat.fraction=0.1", "qat.cooldown=1.0"],
        S2,
    ),
    # QAT peak lr relative to the FP peak (fused)
    ("qat.lr_ratio (4b, fused)", "0.3", [*FUSED, "qat.lr_ratio=0.3"], S2),
    ("qat.lr_ratio (4b, fused)", "1.0", FUSED, S2),
    # AdamW moments across the switch (fused)
    ("qat.carry_optimizer (4b, fused)", "True", FUSED, S2),
    ("qat.carry_optimizer (4b, fused)", "False", [*FUSED, "qat.carry_optimizer=false"], S2),
    # QAT re-warmup (standard)
    ("qat.rewarmup (4b, standard)", "0.0", [*STD, "qat.rewarmup=0.0"], S2),
    ("qat.rewarmup (4b, standard)", "0.05", STD, S2),
    ("qat.rewarmup (4b, standard)", "0.2", [*STD, "qat.rewarmup=0.2"], S2),
    # cooldown shape (standard: FP and QAT cooldowns)
    ("schedule.cooldown_shape (4b, standard)", "linear", STD, S2),
    (
        "schedule.cooldown_shape (4b, standard)",
        "1-sqrt",
        [*STD, "schedule.cooldown_shape=1-sqrt"],
        S2,
    ),
    # FP cooldown fraction (standard)
    ("schedule.cooldown (4b, standard)", "0.1", [*STD, "schedule.cooldown=0.1"], S2),
    ("schedule.cooldown (4b, standard)", "0.2", STD, S2),
    ("schedule.cooldown (4b, standard)", "0.4", [*STD, "schedule.cooldown=0.4"], S2),
    # the most important knobs again at 2 bits
    ("schedule (2b)", "fused", [*FUSED, "qat.bits=2"], S2),
    ("schedule (2b)", "standard", [*STD, "qat.bits=2"], S2),
    ("qat.lr_ratio (2b, fused)", "0.3", [*FUSED, "qat.bits=2", "qat.lr_ratio=0.3"], S2),
    ("qat.lr_ratio (2b, fused)", "1.0", [*FUSED, "qat.bits=2"], S2),
    ("qat.carry_optimizer (2b, fused)", "True", [*FUSED, "qat.bits=2"], S2),
    (
        "qat.carry_optimizer (2b, fused)",
        "False",
        [*FUSED, "qat.bits=2", "qat.carry_optimizer=false"],
        S2,
    ),
]


def run_key(overrides: list[str], seed: int) -> str:
    return "|".join(sorted(overrides)) + f"|seed={seed}"


def make_config(data: str, overrides: list[str], seed: int):
    from coqat.config import apply_overrides, from_dict
    from coqat.train.config import RunConfig

    base = json.loads(json.dumps(BASE))
    base["data"]["path"] = data
    return from_dict(RunConfig, apply_overrides(base, [*overrides, f"seed={seed}"]))


def train_one(data: str, work: str, overrides: list[str], seed: int) -> dict:
    """One run in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from coqat.train.run import execute

    key = run_key(overrides, seed)
    cfg = make_config(data, overrides, seed)
    run_dir = Path(work) / "runs" / hashlib.sha1(key.encode()).hexdigest()[:12]
    t0 = time.perf_counter()
    res = execute(cfg, run_dir, resume=False)
    return {
        "key": key,
        "overrides": sorted(overrides),
        "seed": seed,
        "status": res["status"],
        "loss": res["loss"],
        "loss_fp": res.get("loss_fp"),
        "loss_ptq": res.get("loss_ptq"),
        "f": res.get("f"),
        "N": res.get("N"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def load_results() -> dict[str, dict]:
    if not RESULTS.exists():
        return {}
    out = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["key"]] = r
    return out


def prepare_data(data: Path) -> None:
    from coqat.data import prepare, sample_path

    if not (data / "manifest.json").exists():
        prepare([sample_path()], data, vocab_size=2048, val_fraction=0.05)


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _groups() -> dict[str, list]:
    groups: dict[str, list] = {}
    for group, label, ov, seeds in STUDY:
        groups.setdefault(group, []).append((label, ov, seeds))
    return groups


def _default(rows: list) -> tuple:
    """The default row of a group: the one with the fewest overrides (the first on a tie)."""
    return min(rows, key=lambda r: len(r[1]))


def _losses(results: dict[str, dict], ov: list[str], seeds) -> dict[int, float]:
    return {s: results[k]["loss"] for s in seeds if (k := run_key(ov, s)) in results}


def noise(results: dict[str, dict]) -> tuple[float, float]:
    """(sigma_run, sigma_pair): the seed-to-seed std of one run's loss, and the std of a same-seed
    difference between two settings around its mean, each pooled over the study. The seed moves
    every setting's loss together (init and data order), so paired differences are far less
    noisy than single runs; sigma_pair is the noise that a knob's effect is judged against."""
    run_num = run_den = pair_num = pair_den = 0.0
    seen: set[str] = set()
    for rows in _groups().values():
        _dl, dov, dseeds = _default(rows)
        ref = _losses(results, dov, dseeds)
        for _label, ov, seeds in rows:
            got = _losses(results, ov, seeds)
            if len(got) > 1 and run_key(ov, -1) not in seen:
                seen.add(run_key(ov, -1))
                run_num += statistics.variance(got.values()) * (len(got) - 1)
                run_den += len(got) - 1
            if ov is dov:
                continue
            diffs = [got[s] - ref[s] for s in got if s in ref]
            if len(diffs) > 1:
                pair_num += statistics.variance(diffs) * (len(diffs) - 1)
                pair_den += len(diffs) - 1
    nan = float("nan")
    return (
        math.sqrt(run_num / run_den) if run_den else nan,
        math.sqrt(pair_num / pair_den) if pair_den else nan,
    )


def write_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per setting with the loss per seed, the mean, the seed std and the
    same-seed (paired) difference to the group's default, also in units of its standard error
    from the pooled paired noise."""
    sigma_run, sigma_pair = noise(results)
    lines = [
        "| knob | setting | loss per seed | mean | seed std | Δ per seed | mean Δ | Δ / SE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, rows in _groups().items():
        dlabel, dov, dseeds = _default(rows)
        ref = _losses(results, dov, dseeds)
        for label, ov, seeds in rows:
            got = _losses(results, ov, seeds)
            vals = list(got.values())
            mean = statistics.fmean(vals) if vals else float("nan")
            std = statistics.stdev(vals) if len(vals) > 1 else None
            per = ", ".join(f"{x:.4f}" for x in vals) or "—"
            diffs = [got[s] - ref[s] for s in got if s in ref]
            if ov is dov or not diffs:
                dper, dmean, z = "—", "—", "—"
            else:
                d = statistics.fmean(diffs)
                se = sigma_pair / math.sqrt(len(diffs))
                dper = ", ".join(f"{x:+.4f}" for x in diffs)
                dmean = f"{d:+.4f}"
                z = f"{d / se:+.1f}" if se > 0 else "—"
            name = f"**{label}**" if label == dlabel and len(rows) > 1 else label
            cells = [group, name, per, _fmt(mean), _fmt(std), dper, dmean, z]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Bold = the default of its group. Δ = loss − default's loss at the same seed (negative ="
        f" better than the default). Seed-to-seed std of one run's loss (pooled): "
        f"{sigma_run:.4f}; std of a same-seed difference (pooled): σ_pair = {sigma_pair:.4f};"
        f" SE of a mean Δ over n seeds = σ_pair/√n.",
    ]
    text = "\n".join(lines) + "\n"
    TABLE.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/coqat-defaults", help="data and run folders")
    ap.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    ap.add_argument("--only", default="", help="run only groups containing this string")
    ap.add_argument("--table", action="store_true", help="only rebuild the table")
    args = ap.parse_args()

    if not args.table:
        work = Path(args.work)
        data = work / "data"
        prepare_data(data)
        done = load_results()
        todo = []
        for group, _label, ov, seeds in STUDY:
            if args.only and args.only not in group:
                continue
            for s in seeds:
                k = run_key(ov, s)
                if k not in done and k not in {run_key(o, x) for o, x in todo}:
                    todo.append((ov, s))
        print(f"{len(todo)} runs to do ({len(done)} already in {RESULTS.name})", flush=True)
        with ProcessPoolExecutor(args.jobs) as pool:
            futs = [pool.submit(train_one, str(data), str(work), ov, s) for ov, s in todo]
            for fut in as_completed(futs):
                r = fut.result()
                with RESULTS.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"{r['key']}: loss {r['loss']:.4f} ({r['status']}, {r['wall_s']}s)", flush=True
                )
    print(write_table(load_results()))


if __name__ == "__main__":
    main()
