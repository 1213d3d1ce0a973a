"""Paired comparisons: runs that differ in one setting, matched on the others.

The fused vs standard schedule, a knob against its default, one decay basis against another:
each treated run is paired with a control run of equal ``match`` key. Runs of one call share
their FP trunk checkpoint, so a pair from one call is clean (its difference is the setting's
effect and nearly no noise); a partner from another call carries that call's trunk-to-trunk
shift. The partner is therefore taken from the same call where one exists, else the run of
another call nearest in time (ties: the later one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from coqat.law.analysis.grids import call_of


def _t(r: dict[str, Any]) -> float:
    s = str(r.get("time") or "")
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def pair_runs(
    records: Iterable[dict[str, Any]],
    *,
    treated: Callable[[dict[str, Any]], bool],
    control: Callable[[dict[str, Any]], bool],
    match: Callable[[dict[str, Any]], Any],
) -> list[dict[str, Any]]:
    """``{"run", "partner", "same_call"}`` for every record ``treated`` accepts that has a
    partner among the records ``control`` accepts with an equal ``match`` key (see the module
    doc for which partner). Records are taken as they come: repeats of a configuration in
    several calls each get their own pair."""
    records = list(records)
    idx: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for c in records:
        if control(c):
            idx[match(c)].append(c)
    out = []
    for r in records:
        if not treated(r):
            continue
        cands = [c for c in idx.get(match(r), []) if c is not r]
        if not cands:
            continue
        same = [c for c in cands if call_of(c) == call_of(r)]
        if same:
            partner = max(same, key=_t)
        else:
            partner = min(cands, key=lambda c: (abs(_t(c) - _t(r)), -_t(c)))
        out.append({"run": r, "partner": partner, "same_call": bool(same)})
    return out


def fusion_pairs(
    records: Iterable[dict[str, Any]], by: tuple[str, ...] = ("size", "D_total", "bits", "seed")
) -> list[dict[str, Any]]:
    """Standard-schedule runs at 0 < f < 1 paired with the fused run of equal ``by`` fields,
    requested fraction and ``variant``: ``delta`` = loss(standard) - loss(fused) (> 0: fusion
    helps), with both losses, ``f`` and ``same_call``."""

    def key(r: dict[str, Any]) -> tuple:
        fr = r.get("f_requested", r["f"])
        return (*(r.get(k) for k in by), round(float(fr), 6), r.get("variant", ""))

    def inner(r: dict[str, Any]) -> bool:
        return float(r["bits"]) < 16 and 0.0 < float(r["f"]) < 1.0

    out = []
    for p in pair_runs(
        records,
        treated=lambda r: inner(r) and r.get("schedule") == "standard",
        control=lambda r: inner(r) and r.get("schedule") == "fused",
        match=key,
    ):
        s, fu = p["run"], p["partner"]
        out.append(
            {
                **{k: s.get(k) for k in by},
                "f": float(s.get("f_requested", s["f"])),
                "variant": s.get("variant", ""),
                "loss_standard": float(s["loss"]),
                "loss_fused": float(fu["loss"]),
                "delta": float(s["loss"]) - float(fu["loss"]),
                "same_call": p["same_call"],
                "call": call_of(s),
                "fused_call": call_of(fu),
            }
        )
    return out
