"""Paired comparisons, run-to-run noise, the learning-rate sweep and the memory-budget check."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from coqat.law.analysis import (
    diff_stats,
    pair_runs,
    pooled_sd,
    repeat_groups,
    spread,
)
from coqat.sweep.experiment.records import fused, is_grid, main_runs


def _cfg_key(r: dict[str, Any], *extra: str) -> tuple:
    return (r["size"], float(r["bits"]), int(r["D_total"]), int(r["seed"]),
            round(float(r["f"]), 2), *(r.get(k) for k in extra))


def _default(r: dict[str, Any]) -> bool:
    return is_grid(r) and fused(r) and r["knob_key"] == "{}"


def _pair_row(p: dict[str, Any], **fields: Any) -> dict[str, Any]:
    r, d = p["run"], p["partner"]
    return {
        "size": r["size"], "bits": float(r["bits"]), "D_total": int(r["D_total"]),
        "S_total": float(r["S_total"]), "steps": int(r["steps"]), "seed": int(r["seed"]),
        "f": float(r["f"]), "basis": r["basis"], "same_call": p["same_call"],
        "call": r["call"], "partner_call": d["call"], **fields,
    }


def schedules(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Standard-schedule runs at the default knobs against the fused run of the same size,
    bits, D, seed, fraction and basis (``diff`` = standard - fused; > 0: fusion helps)."""
    out = []
    for p in pair_runs(
        records,
        treated=lambda r: is_grid(r) and r["schedule"] == "standard" and r["knob_key"] == "{}",
        control=_default,
        match=lambda r: _cfg_key(r, "basis"),
    ):
        r, d = p["run"], p["partner"]
        out.append(_pair_row(
            p, loss_standard=float(r["loss"]), loss_fused=float(d["loss"]),
            diff=float(r["loss"]) - float(d["loss"]), flops_equal=r.get("flops") == d.get("flops"),
        ))
    return out


def knobs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Fused runs with one knob off its default against the default run of the same size,
    bits, D, seed, fraction and basis: per pair ``diff`` (knob - default; f = 0 compares the
    PTQ loss) and ``diff_fp`` (the FP models), and per knob value the mean over all pairs and
    over the same-call (same trunk) pairs."""
    rows = []
    for p in pair_runs(
        records,
        treated=lambda r: is_grid(r) and fused(r) and r["knob_key"] != "{}",
        control=_default,
        match=lambda r: _cfg_key(r, "basis"),
    ):
        r, d = p["run"], p["partner"]
        ((knob, value),) = r["knobs"].items()
        rows.append(_pair_row(
            p, knob=knob, value=value, loss=float(r["loss"]), loss_default=float(d["loss"]),
            diff=float(r["loss"]) - float(d["loss"]),
            diff_fp=float(r["loss_fp"]) - float(d["loss_fp"]),
        ))
    summary = []
    for knob, value in sorted({(x["knob"], str(x["value"])) for x in rows}):
        sel = [x for x in rows if (x["knob"], str(x["value"])) == (knob, value)]
        same = [x for x in sel if x["same_call"]]
        summary.append({
            "knob": knob, "value": sel[0]["value"],
            "all": diff_stats(x["diff"] for x in sel) | {
                "mean_diff_fp": float(np.mean([x["diff_fp"] for x in sel]))},
            "same_call": diff_stats(x["diff"] for x in same),
        })
    return {"rows": rows, "summary": summary}


def bases(records: list[dict[str, Any]], treated: Any, control: Any) -> dict[str, Any]:
    """Runs on basis ``treated`` at 0 < f < 1 against the run on basis ``control`` with the same
    size, bits, D, seed and fraction (``diff`` = treated - control), every record counted
    (repeats too); stats over the same-call pairs, the other-call pairs, and the other-call
    pairs of >= 1,000 steps at f <= 0.2 and at f >= 0.6."""
    rows = []
    for p in pair_runs(
        records,
        treated=lambda r: _default(r) and r["basis"] == treated and 0 < float(r["f"]) < 1,
        control=lambda r: _default(r) and r["basis"] == control,
        match=_cfg_key,
    ):
        r, q = p["run"], p["partner"]
        rows.append(_pair_row(p, loss=float(r["loss"]), loss_control=float(q["loss"]),
                              diff=float(r["loss"]) - float(q["loss"])))
    other = [x for x in rows if not x["same_call"]]
    long = [x for x in other if x["steps"] >= 1000]
    return {
        "treated": treated, "control": control, "rows": rows,
        "same_call": diff_stats(x["diff"] for x in rows if x["same_call"]),
        "other_call": diff_stats(x["diff"] for x in other),
        "other_call_long_small_f": diff_stats(x["diff"] for x in long if x["f"] <= 0.25),
        "other_call_long_large_f": diff_stats(x["diff"] for x in long if x["f"] >= 0.55),
    }


def _label(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("size", "bits", "D_total", "steps", "seed", "basis")}


def noise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-to-run spreads.

    * ``seeds``: one configuration at several seeds in one call (each cell: the losses and their
      sd), with the pooled sd;
    * ``repeats``: one configuration and seed run in several calls (the losses per call in time
      order; ``diff`` = last - first);
    * ``fp_models``: the FP model of f = 0 runs and FP-only runs of one (size, D, seed, lr) at the
      default FP schedule, over calls and bit widths (trunks shared within a call; the largest
      spread within one call is ``within_call_range``)."""
    grid = [r for r in records if is_grid(r)]
    seeds = []
    for g in repeat_groups(grid, lambda r: (_cfg_key(r, "schedule", "knob_key", "basis")[:3]
                                            + _cfg_key(r, "schedule", "knob_key", "basis")[4:]
                                            + (r["call"],))):
        by_seed = {int(x["seed"]): float(x["loss"]) for x in g["records"]}
        if len(by_seed) < 2:
            continue
        r0 = g["records"][0]
        seeds.append({**_label(r0), "f": float(r0["f"]), "schedule": r0["schedule"],
                      "knobs": r0["knobs"], "call": r0["call"], "seeds": sorted(by_seed),
                      "loss": [by_seed[s] for s in sorted(by_seed)],
                      **spread(by_seed.values())})
    repeats = []
    for g in repeat_groups(grid, lambda r: _cfg_key(r, "schedule", "knob_key", "basis")):
        calls = [x["call"] for x in g["records"]]
        if len(set(calls)) < 2:
            continue
        r0 = g["records"][0]
        repeats.append({**_label(r0), "f": float(r0["f"]), "schedule": r0["schedule"],
                        "knobs": r0["knobs"], "calls": calls, "loss": g["values"],
                        "diff": g["values"][-1] - g["values"][0], **spread(g["values"])})
    fp = []

    def fp_key(r: dict[str, Any]) -> tuple | None:
        if r.get("knobs", {}).get("schedule.cooldown") is not None:
            return None
        if is_grid(r) and float(r["D_qat"]) == 0:
            return (r["size"], int(r["D_total"]), int(r["seed"]), float(r["lr"]))
        if float(r["bits"]) >= 16:
            return (r["size"], int(r["D_total"]), int(r["seed"]), float(r["lr"]))
        return None

    fp_recs = []
    for r in records:
        k = fp_key(r)
        if k is not None:
            v = r["loss_fp"] if float(r["bits"]) < 16 else r["loss"]
            fp_recs.append({**r, "_k": k, "_fp": float(v)})
    for g in repeat_groups(fp_recs, lambda r: r["_k"], value="_fp"):
        r0 = g["records"][0]
        per_call: dict[str, list[float]] = defaultdict(list)
        for x in g["records"]:
            per_call[x["call"]].append(x["_fp"])
        within = [max(v) - min(v) for v in per_call.values() if len(v) > 1]
        fp.append({"size": r0["size"], "D_total": int(r0["D_total"]), "steps": int(r0["steps"]),
                   "seed": int(r0["seed"]), "lr": float(r0["lr"]),
                   "calls": sorted({x["call"] for x in g["records"]}),
                   "loss_fp": g["values"], **spread(g["values"]),
                   "within_call_range": max(within) if within else None})
    return {
        "seeds": seeds,
        "pooled_sd_seeds": pooled_sd(x["sd"] for x in seeds),
        "repeats": repeats,
        "fp_models": fp,
    }


def lr_sweep(records: list[dict[str, Any]]) -> dict[str, Any]:
    """FP-only runs by size: loss per peak learning rate, the best rate and whether it lies at
    an end of the rates tried."""
    out: dict[str, Any] = {}
    for r in records:
        if float(r["bits"]) < 16:
            continue
        d = out.setdefault(r["size"], {"N": int(r["N"]), "D_total": int(r["D_total"]),
                                       "steps": int(r["steps"]), "loss": {}})
        d["loss"][f"{float(r['lr']):g}"] = float(r["loss"])
    for d in out.values():
        lrs = sorted(map(float, d["loss"]))
        d["best_lr"] = float(min(d["loss"], key=d["loss"].get))
        d["best_at_edge"] = d["best_lr"] in (lrs[0], lrs[-1])
    return dict(sorted(out.items(), key=lambda kv: kv[1]["N"]))


def memory_check(records: list[dict[str, Any]], path: Path, basis: Any) -> dict[str, Any]:
    """A memory-budget prediction (JSON recorded before its runs: candidates with the law's
    predicted optimum) against the best measured loss of each candidate at that D (the main
    runs of ``basis``)."""
    if not path.is_file():
        return {}
    pred = json.loads(path.read_text())
    rows = []
    runs = main_runs(records, basis)
    for c in pred["candidates"]:
        rs = [r for r in runs if r["size"] == c["size"] and float(r["bits"]) == float(c["bits"])
              and int(r["D_total"]) == int(pred["D_total"])]
        best = min(rs, key=lambda r: float(r["loss"])) if rs else None
        rows.append({**c,
                     "measured_best_loss": float(best["loss"]) if best else None,
                     "measured_best_f": float(best["f"]) if best else None,
                     "measured": {f"{float(r['f']):.2f}": float(r["loss"]) for r in rs},
                     "model_bytes": float(rs[0]["model_bytes"]) if rs else None,
                     "error": float(best["loss"]) - c["loss_opt"] if best else None})
    done = [r for r in rows if r["measured_best_loss"] is not None]
    by_loss = sorted(done, key=lambda r: r["measured_best_loss"])
    return {
        "date_predicted": pred["date"], "D_total": pred["D_total"], "law": pred.get("law"),
        "predicted_best": pred["predicted_best"],
        "measured_best": by_loss[0]["size"] if len(done) == len(rows) else None,
        "margin": by_loss[1]["measured_best_loss"] - by_loss[0]["measured_best_loss"]
        if len(by_loss) > 1 else None,
        "rows": rows,
    }


def setup(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The training setup the runs share (from their configs): sequence length, batch, tokens
    per step, warmup, cooldowns, vocabulary; per size its parameters, shape and the peak
    learning rates of its grid runs."""
    from coqat.sweep.experiment.records import setting

    grid = [r for r in records if is_grid(r)]
    cfg = grid[0]["cfg"]
    sizes: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: int(r["N"])):
        d = sizes.setdefault(r["size"], {
            "size": r["size"], "N": int(r["N"]), "N_embed": int(r["N_embed"]),
            "d_model": int(r["d_model"]), "n_layers": int(r["n_layers"]), "lr_grid": set()})
        if is_grid(r):
            d["lr_grid"].add(float(r["lr"]))
    for d in sizes.values():
        d["lr_grid"] = sorted(d["lr_grid"])
        d["embed_share"] = d["N_embed"] / d["N"]
    return {
        "seq_len": setting(cfg, "model.seq_len"), "vocab_size": setting(cfg, "model.vocab_size"),
        "batch_size": setting(cfg, "optim.batch_size"),
        "tokens_per_step": int(grid[0]["tokens_per_step"]),
        "warmup": setting(cfg, "schedule.warmup"), "cooldown": setting(cfg, "schedule.cooldown"),
        "qat_cooldown": setting(cfg, "qat.cooldown"),
        "sizes": list(sizes.values()),
        "devices": sorted({str(r.get("device")) for r in records}),
        "dates": sorted({str(r.get("time"))[:10] for r in records}),
    }


def group_counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many records, configurations and repeats; sizes and their N."""
    keys = defaultdict(list)
    for r in records:
        keys[(r["size"], float(r["bits"]), int(r["D_total"]), r["schedule"], int(r["seed"]),
              r["knob_key"], r["basis"], round(float(r["f"]), 4), float(r["lr"] or 0),
              r.get("variant") or "")].append(r)
    sizes = sorted({(int(r["N"]), r["size"]) for r in records})
    return {
        "n_records": len(records),
        "n_configurations": len(keys),
        "n_repeats": len(records) - len(keys),
        "n_calls": len({r["call"] for r in records}),
        "sizes": [{"size": s, "N": n} for n, s in sizes],
    }
