"""``report_experiment``: an experiment folder's summary, figures and README from its store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from coqat.sweep.experiment import compare, laws, optima, throughput
from coqat.sweep.experiment.records import load_records
from coqat.sweep.experiment.spec import load_experiment


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, str):  # numpy scalars
        return _jsonable(o.item())
    if isinstance(o, float):
        return None if not math.isfinite(o) else round(o, 12)
    return o


def analyze(
    folder: str | Path, with_laws: bool = True, **overrides: Any
) -> tuple[dict[str, Any], dict[Path, str]]:
    """Every number of the experiment's README, from ``folder``'s analysis.yaml (fields
    replaced by ``overrides``) and store (the law fits, the planner questions and the fitted
    fraction law only ``with_laws``), and the files the spec names for them (the law runs CSVs,
    the fraction law JSON) as {path: text}."""
    from dataclasses import replace

    folder, spec = load_experiment(folder)
    spec = replace(spec, **overrides)
    files: dict[Path, str] = {}
    every = load_records(folder / spec.store, spec)
    # the designed grids have their own section (design_section); the rest analyses the others
    design_calls = set(spec.design.calls)
    records = [r for r in every if r["call"] not in design_calls]
    s: dict[str, Any] = {
        "spec": {"min_steps": spec.min_steps, "min_fractions": spec.min_fractions,
                 "baseline": spec.baseline, "basis": spec.basis, "bases": list(spec.bases),
                 "knobs": spec.knobs, "large_N": spec.large_N},
        "counts": compare.group_counts(every),
        "setup": compare.setup(every),
        "lr_sweep": compare.lr_sweep(records),
        "basis": {},
    }
    if spec.manifest and (folder / spec.manifest).is_file():
        s["data"] = json.loads((folder / spec.manifest).read_text())
    for b in spec.bases:
        sec = optima.optima_section(records, spec, b)
        if sec["fstar"]:
            s["basis"][b] = sec
    if len(spec.bases) >= 2:
        s["bases_compared"] = compare.bases(records, spec.bases[0], spec.bases[1])
    s["schedules"] = compare.schedules(records)
    s["knobs"] = compare.knobs(records)
    s["noise"] = compare.noise(records)
    if spec.predictions:
        s["memory_check"] = compare.memory_check(
            records, folder / spec.predictions, spec.predictions_basis)
    if spec.calls and (folder / spec.calls).is_file():
        calls = json.loads((folder / spec.calls).read_text())
        bench = throughput.bench_rows([folder / p for p in spec.bench])
        s["throughput"] = throughput.per_call(every, calls, bench)
        s["bench"] = bench
    csv_rows = {}
    for b, name in spec.law_runs.items():
        csv_rows[b], files[folder / name] = laws.law_runs_csv(records, b, spec.min_steps)
    s["law_runs_csv"] = csv_rows
    if not with_laws:
        return _jsonable(s), files
    if spec.laws:
        for b, sec in s["basis"].items():
            sec["qat_law"] = laws.qat_law_fits(records, sec["fstar"], spec, b)
            sec["law_comparison"] = laws.comparison(records, spec, b)
            sec["large_sizes"] = laws.large_sizes(records, spec, b)
    first = spec.fraction_law_basis or (spec.bases[0] if spec.bases else "")
    if first in s["basis"]:
        sec = s["basis"][first]
        trained = [r for r in sec["fstar"] if not r["step_starved"]]
        if spec.huber_deltas and spec.laws:
            sec["huber"] = laws.huber(records, trained, spec, first)
        if spec.shipped_law:
            sec["shipped_law"] = laws.shipped_intervals(
                trained, spec, folder, csv_rows.get(first, -1), sec["few_fractions"])
            s["queries"] = laws.queries(spec, folder)
        if spec.fraction_law:
            s["fraction_law"], files[folder / spec.fraction_law] = laws.fraction_law(sec, spec)
            s["fraction_law"]["path"] = spec.fraction_law
        if spec.fraction_rules:
            s["fraction_rules"] = {}
            for form, path in spec.fraction_rules.items():
                info, files[folder / path] = laws.fraction_rule(sec, spec, form)
                s["fraction_rules"][form] = info | {"path": path}
    if spec.design.calls:
        from coqat.sweep.experiment.design import design_section

        s["design"], more = design_section(every, spec, folder)
        files.update(more)
    return _jsonable(s), files


def report_experiment(folder: str | Path, with_laws: bool = True) -> dict[str, Path]:
    """Analyse ``folder`` (:func:`analyze`), write its summary JSON, figures and README (from its
    template), all named in its analysis.yaml; returns the paths written."""
    from coqat.config import atomic_write_text
    from coqat.sweep.experiment.figures import make_figures
    from coqat.sweep.experiment.render import render_readme

    folder, spec = load_experiment(folder)
    s, files = analyze(folder, with_laws=with_laws)
    for p, text in files.items():
        atomic_write_text(p, text)
    figs = make_figures(s, folder / spec.figures, design_figure=spec.design.figure)
    s["figures"] = [p.name for p in figs]
    out = {"summary": folder / spec.summary, **{p.name: p for p in files}}
    atomic_write_text(out["summary"], json.dumps(s, indent=1, sort_keys=False) + "\n")
    if (folder / spec.template).is_file():
        out["readme"] = folder / spec.readme
        atomic_write_text(out["readme"], render_readme(folder / spec.template, s, str(folder)))
    return out
