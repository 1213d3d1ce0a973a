"""An experiment's runs from its store, annotated for selection.

Each record (``Store.to_records``) gains ``cfg`` (its config as a dict), ``call`` (the call that
trained it), ``basis`` (the value of the spec's basis setting in its config), ``knobs`` (its
settings among the spec's knobs that differ from their defaults), ``knob_key`` (the same as
sorted JSON, '{}' at the defaults) and ``lr`` (the peak learning rate).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from coqat.law.analysis import call_of
from coqat.sweep.experiment.spec import ExperimentSpec


def setting(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """A dotted setting (``qat.cooldown_of``) of a config dict; ``default`` where it is absent."""
    v: Any = config
    for part in dotted.split("."):
        if not isinstance(v, dict) or part not in v:
            return default
        v = v[part]
    return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def annotate(records: list[dict[str, Any]], spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Records (a store's ``to_records``, a CSV export, raw JSONL with ``config``) annotated
    as the module doc says, in the order of their ``time``."""
    out = []
    for r in records:
        r = dict(r)
        cfg = r.get("config") or {}
        if isinstance(cfg, str):
            cfg = json.loads(cfg)
        knobs = {}
        for k, default in spec.knobs.items():
            v = setting(cfg, k, default)
            if not _same(v, default):
                knobs[k] = v
        r["cfg"] = cfg
        r["call"] = call_of(r)
        r["basis"] = setting(cfg, spec.basis) if spec.basis else ""
        r["knobs"] = knobs
        r["knob_key"] = json.dumps(knobs, sort_keys=True)
        if r.get("lr") is None:
            r["lr"] = setting(cfg, "optim.lr")
        if not r.get("experiment"):
            r["experiment"] = "lr_sweep" if float(r["bits"]) >= 16 else "grid"
        out.append(r)
    return sorted(out, key=lambda r: str(r.get("time") or ""))


def load_records(store: str | Path, spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Every finished run of ``store``, annotated (:func:`annotate`)."""
    from coqat.sweep.store import Store

    with Store(store, create=False) as st:
        return annotate(st.to_records(("done",)), spec)


def is_grid(r: dict[str, Any]) -> bool:
    """A quantized run of a fraction grid (not an FP learning-rate sweep point)."""
    return r.get("experiment") != "lr_sweep" and float(r["bits"]) < 16


def fused(r: dict[str, Any]) -> bool:
    """A fused-schedule run, or one at f = 0 or 1 (the same training for every schedule; the
    sweep engine records those as ``standard``)."""
    return r["schedule"] == "fused" or not 0.0 < float(r["f"]) < 1.0


def main_runs(records: list[dict[str, Any]], basis: Any) -> list[dict[str, Any]]:
    """The fused runs at the default knobs on one basis: what the f* tables and the laws use."""
    return [
        r
        for r in records
        if is_grid(r) and fused(r) and r["knob_key"] == "{}" and r["basis"] == basis
    ]
