"""Pre-registered predictions: the optimal QAT fraction of every grid of a sweep, under several
fraction rules, written down (with the commit) before the sweep runs.

A *grid* is the set of runs of a sweep that differ only in their QAT fraction (and the schedule
that f = 0 / f = 1 collapse to): same size, bits, token budget, seed and training settings. Its
measured optimum f* is later read off the loss-vs-f curve (``coqat.law.analysis``); this module
says what each rule expected. Seeds share a prediction (the rules do not see seeds).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def grid_key(cfg: Any) -> tuple:
    """What the runs of one grid share: size, N, bits, tokens, tokens per step, the data subset
    and every non-axis setting (``coqat.sweep.keys.variant_of``)."""
    from coqat.config import to_dict
    from coqat.model.config import param_counts
    from coqat.sweep.keys import variant_of
    from coqat.train.phases import plan_phases

    plan = plan_phases(cfg)
    return (
        cfg.size or f"d{cfg.model.d_model}L{cfg.model.n_layers}",
        param_counts(cfg.model).total,
        float(cfg.qat.bits),
        plan.tokens,
        variant_of(to_dict(cfg)),
    )


def _train_split_tokens(path: str) -> int | None:
    p = Path(path) / "manifest.json" if path else None
    if p is None or not p.is_file():
        return None
    try:
        return int(json.loads(p.read_text("utf-8"))["splits"]["train"]["tokens"])
    except (KeyError, ValueError, TypeError):
        return None


def sweep_grids(runs: list, train_split_tokens: int | None = None) -> list[dict[str, Any]]:
    """The grids of ``runs`` (quantized runs only), in first-seen order, with the quantities
    the candidate rules read: N, D, bits, S_total = D / (N B/8), D/B, steps, tokens per step,
    epochs (when the train split's size is known), the fractions and seeds."""
    from coqat.train.phases import plan_phases

    out: dict[tuple, dict[str, Any]] = {}
    for cfg in runs:
        if cfg.qat.is_fp:
            continue
        key = grid_key(cfg)
        size, N, bits, D, variant = key
        plan = plan_phases(cfg)
        g = out.get(key)
        if g is None:
            avail = cfg.data.train_tokens or train_split_tokens or _train_split_tokens(
                cfg.data.path
            )
            g = out[key] = {
                "size": size,
                "N": N,
                "bits": bits,
                "D": D,
                "S_total": D / (N * bits / 8.0),
                "D_per_bit": D / bits,
                "steps": plan.steps,
                "tokens_per_step": plan.tokens_per_step,
                "train_tokens": avail,
                "epochs": D / avail if avail else None,
                "variant": variant,
                "fractions": [],
                "seeds": [],
            }
        if plan.fraction not in g["fractions"]:
            g["fractions"].append(plan.fraction)
        if cfg.seed not in g["seeds"]:
            g["seeds"].append(cfg.seed)
    for g in out.values():
        g["fractions"].sort()
        g["seeds"].sort()
    return list(out.values())


def rule_prediction(law: Any, N: float, D: float, bits: float, level: float = 0.9) -> dict:
    """f* under ``law`` (a fraction rule or a loss law) with its interval when the law carries
    bootstrap samples."""
    from coqat.plan.planner import optimal_fraction

    p = optimal_fraction(law, N, D, bits, level=level)
    return {"f": p["f_opt"], "f_ci": p.get("f_opt_ci"), "warnings": p.get("warnings", [])}


def predict(
    sweep_file: str | Path,
    laws: dict[str, Any],
    *,
    level: float = 0.9,
    train_split_tokens: int | None = None,
) -> dict[str, Any]:
    """Predictions of every grid of ``sweep_file`` under each law of ``laws`` ({label: law})."""
    from coqat.provenance import git_commit
    from coqat.sweep.spec import expand, load_spec

    spec = load_spec(sweep_file)
    grids = sweep_grids(expand(spec), train_split_tokens)
    for g in grids:
        g["predictions"] = {
            label: rule_prediction(law, g["N"], g["D"], g["bits"], level)
            for label, law in laws.items()
        }
    return {
        "sweep": spec.name,
        "file": str(sweep_file),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": level,
        "rules": {
            label: {
                "law": law.name,
                "description": law.describe(),
                "params": dict(getattr(law, "params_", {}) or {}),
                "source": (getattr(law, "provenance", {}) or {}).get("source"),
                # the whole law as it stood (coqat.law.load_law reads it back), so the
                # predictions can be recomputed from this file alone after the shipped law moved
                "record": law.to_json() if hasattr(law, "to_json") else None,
            }
            for label, law in laws.items()
        },
        "grids": grids,
    }


def format_predictions(pred: dict[str, Any]) -> str:
    labels = list(pred["rules"])
    head = f"{'size':>5} {'bits':>4} {'D':>11} {'S':>7} {'D/B':>9} {'steps':>6} {'ep':>5} "
    head += " ".join(f"{lb[:14]:>14}" for lb in labels)
    lines = [f"sweep {pred['sweep']} (commit {pred['commit'] or '?'}, {pred['date']})", head]
    for g in pred["grids"]:
        ep = f"{g['epochs']:.2f}" if g["epochs"] else "-"
        cells = []
        for lb in labels:
            p = g["predictions"][lb]
            f = "-" if p["f"] is None else f"{p['f']:.3f}"
            if p["f_ci"]:
                f += f" [{p['f_ci'][0]:.2f},{p['f_ci'][1]:.2f}]"
            cells.append(f"{f:>14}")
        lines.append(
            f"{g['size']:>5} {g['bits']:>4g} {g['D']:>11,} {g['S_total']:>7.1f} "
            f"{g['D_per_bit']:>9.3g} {g['steps']:>6} {ep:>5} " + " ".join(cells)
            + (f"  [{g['variant']}]" if g["variant"] else "")
        )
    return "\n".join(lines)


def main_predict(args: Any) -> int:
    """``coqat sweep predict FILE --law LABEL=LAW ... [--out F]``."""
    from coqat.config import atomic_write_text
    from coqat.errors import ConfigError
    from coqat.plan import load_law

    laws: dict[str, Any] = {}
    for item in args.law or ["paper=default"]:
        label, _, ref = item.partition("=")
        if not ref:
            label, ref = Path(item).stem, item
        if label in laws:
            raise ConfigError("--law", f"label {label!r} given twice")
        laws[label] = load_law(ref)
    pred = predict(args.file, laws, level=args.ci, train_split_tokens=args.train_split_tokens)
    pred["command"] = "coqat sweep predict " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else ""
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(pred, indent=2, default=float) + "\n")
    print(format_predictions(pred))
    return 0
