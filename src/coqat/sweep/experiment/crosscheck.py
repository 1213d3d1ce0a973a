"""The same pre-registered rules scored in another experiment: its numbers beside this one's.

A check on other data (another corpus, other sizes) asks how the rules that were written down
before its runs did there *and* how they did where they came from. ``design.compare_with`` names
the other experiment folders; from each, this reads its analysis.yaml, its summary (written by
``coqat report --experiment`` there, never recomputed here) and its prediction files, and keeps
the per-rule scores of its pre-registered predictions, the grids they were scored on, the
held-out evidence of the default rule it chose, its run-to-run noise model (and whether this
experiment borrows it), and, per rule label of this experiment, whether the other experiment's
prediction files used the same rule (law and parameters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coqat.sweep.experiment.spec import ExperimentSpec, load_experiment


def rules_of(folder: Path, prediction_files: tuple[str, ...] | list[str]) -> dict[str, list]:
    """Rule label -> the (law, params) it had in each of the prediction files (``coqat sweep
    predict`` output) under ``folder``."""
    out: dict[str, list] = {}
    for name in prediction_files:
        for label, r in json.loads((folder / name).read_text())["rules"].items():
            out.setdefault(label, []).append({"law": r["law"], "params": r["params"]})
    return out


def _span(values: list[Any]) -> list[Any]:
    return [min(values), max(values)] if values else []


def _noise(spec: ExperimentSpec) -> tuple:
    return tuple(tuple(float(v) for v in x) for x in spec.noise.steps_sd), spec.noise.sd_f1


def crosscheck(spec: ExperimentSpec, folder: Path) -> dict[str, dict[str, Any]]:
    """Label -> the other experiment's pre-registered scores (module doc), for each entry of
    ``spec.design.compare_with``."""
    from coqat.errors import ConfigError

    mine = rules_of(folder, spec.design.predictions)
    out = {}
    for label, path in spec.design.compare_with.items():
        key = f"design.compare_with.{label}"
        other_folder, other = load_experiment(folder / path)
        p = other_folder / other.summary
        if not p.is_file():
            raise ConfigError(key, f"{p} does not exist: run coqat report --experiment "
                                   f"{other_folder} first")
        design = json.loads(p.read_text()).get("design") or {}
        pre = design.get("preregistered")
        if not pre or not pre.get("grids"):
            raise ConfigError(key, f"{p} holds no scored pre-registered predictions "
                                   "(design.predictions in its analysis.yaml)")
        theirs = rules_of(other_folder, other.design.predictions)
        grids = pre["grids"]
        chosen = design.get("default_rule") or {}
        out[label] = {
            "folder": path,
            "n_grids": len(grids),
            "sizes": sorted({g["size"] for g in grids}, key=lambda s: (len(s), s)),
            "bits": sorted({g["bits"] for g in grids}),
            "D_range": _span([g["D"] for g in grids]),
            "steps_range": _span([g["steps"] for g in grids]),
            "commits": sorted({g["commit"] for g in grids}),
            "hit_within": pre["hit_within"],
            "rules": pre["rules"],
            "same_rule": {
                rule: rule in theirs and all(x == v[0] for x in v + theirs[rule])
                for rule, v in mine.items()
            },
            "default_rule": chosen.get("evidence"),
            "default_rule_params": chosen.get("params"),
            # the other experiment's run-to-run noise model, and whether this one uses it
            "noise": {"steps_sd": [list(x) for x in other.noise.steps_sd],
                      "sd_f1": other.noise.sd_f1},
            "same_noise": _noise(spec) == _noise(other),
        }
    return out
