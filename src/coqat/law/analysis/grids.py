"""Measured loss-vs-fraction curves ("grids") from run records, and their optima.

A record is a dict of one finished run with at least ``N``, ``bits``, ``D_total``, ``f`` (the
trained QAT fraction) and ``loss``; ``call`` (the call or job that trained it), ``trunk`` (its
FP trunk), ``time``, ``steps``, ``S_total`` and the grouping fields are used where present.

Which runs make a grid: the quantized runs that agree on the grouping fields (``by``). Where a
configuration ran more than once (in several calls), every record is kept, labelled by its call
and trunk, but a grid uses the runs of **one call**: each call trains its own FP trunk, and a
trunk shifts a whole curve (at the reference experiment's shortest runs by up to 0.02 nats), so a
fraction borrowed from another call would compare two trunks' levels. The call is the one that
ran the most distinct fractions of the group; ties go to the call whose last run finished later.
With ``seed`` left out of ``by``, each seed's runs come from its own such call and the curve is
the mean over seeds at every fraction.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coqat.law.analysis.regret import regret_detail
from coqat.law.optimum import measured_loss_at, measured_optimum

#: fewer optimizer steps than this: a "step-starved" run. The reference experiment measured why
#: (experiments/reference/README.md, noise): below ~600 steps repeats of one configuration
#: differ by 0.02-0.46 nats, from ~660 steps on by <= 0.02. Step-starved grids are reported and
#: flagged, and left out of fits.
MIN_STEPS = 600
GRID_AXES = ("size", "bits", "D_total", "schedule", "seed", "variant")
F_DECIMALS = 4  # fractions equal to this many decimals are one point of a curve


def step_starved(steps: Any, min_steps: int = MIN_STEPS) -> bool:
    """True for runs of fewer than ``min_steps`` optimizer steps (see MIN_STEPS)."""
    return steps is not None and math.isfinite(float(steps)) and float(steps) < min_steps


def call_of(r: dict[str, Any]) -> str:
    """The call (job) that trained a record: ``call``, else ``slice``, else '' (one store)."""
    return str(r.get("call") or r.get("slice") or "")


def _order(r: dict[str, Any]) -> Any:
    return str(r.get("time") or "")


def _norm(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int | float | np.number):
        v = float(v)
        return int(v) if v.is_integer() else round(v, 9)
    return v


def representative_call(runs: list[dict[str, Any]]) -> str:
    """The call holding the most distinct fractions of ``runs``; ties: the call whose last run
    finished later (``time``), then the larger call id."""
    fr: dict[str, set] = defaultdict(set)
    last: dict[str, Any] = {}
    for r in runs:
        c = call_of(r)
        fr[c].add(round(float(r["f"]), F_DECIMALS))
        last[c] = max(last.get(c, ""), _order(r))
    return max(fr, key=lambda c: (len(fr[c]), last[c], c))


def seed_means(f: Any, loss: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, mean loss) with repeated fractions (equal to F_DECIMALS) averaged, sorted."""
    acc: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for x, y in zip(np.asarray(f, float), np.asarray(loss, float)):
        acc[round(float(x), F_DECIMALS)].append((float(x), float(y)))
    keys = sorted(acc)
    return (
        np.array([np.mean([p[0] for p in acc[k]]) for k in keys]),
        np.array([np.mean([p[1] for p in acc[k]]) for k in keys]),
    )


def seed_spread(f: Any, loss: Any) -> dict[str, np.ndarray]:
    """Per distinct fraction (equal to F_DECIMALS, sorted): ``f``, ``mean`` (as
    :func:`seed_means`), ``sd`` (sample sd, ddof 1, over the repeats; NaN for one) and ``n``."""
    acc: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for x, y in zip(np.asarray(f, float), np.asarray(loss, float)):
        acc[round(float(x), F_DECIMALS)].append((float(x), float(y)))
    keys = sorted(acc)
    ys = [np.array([p[1] for p in acc[k]]) for k in keys]
    return {
        "f": np.array([np.mean([p[0] for p in acc[k]]) for k in keys]),
        "mean": np.array([y.mean() for y in ys]),
        "sd": np.array([y.std(ddof=1) if y.size > 1 else np.nan for y in ys]),
        "n": np.array([y.size for y in ys]),
    }


@dataclass(eq=False)
class Grid:
    """One measured curve: ``labels`` (the grouping fields' values), ``call`` (the call its runs
    came from; '' when seeds of several calls are averaged), ``f``/``loss`` (sorted; seed means)
    and ``runs`` (the records used)."""

    labels: dict[str, Any]
    call: str
    f: np.ndarray
    loss: np.ndarray
    runs: list[dict[str, Any]] = field(default_factory=list)

    def _first(self, k: str, default: Any = None) -> Any:
        return self.labels.get(k, self.runs[0].get(k, default) if self.runs else default)

    @property
    def N(self) -> float:
        return float(self._first("N"))

    @property
    def D(self) -> float:
        return float(self._first("D_total"))

    @property
    def bits(self) -> float:
        return float(self._first("bits"))

    @property
    def S_total(self) -> float:
        s = self._first("S_total")
        return float(s) if s is not None else self.D / (self.N * self.bits / 8)

    @property
    def steps(self) -> int | None:
        s = self._first("steps")
        return int(s) if s is not None and math.isfinite(float(s)) else None

    @property
    def trunks(self) -> list[str]:
        return sorted({str(r.get("trunk") or "") for r in self.runs} - {""})

    def step_starved(self, min_steps: int = MIN_STEPS) -> bool:
        return step_starved(self.steps, min_steps)

    def spread(self) -> dict[str, np.ndarray]:
        """:func:`seed_spread` of the grid's runs: the mean, sd and count at every fraction."""
        return seed_spread([r["f"] for r in self.runs], [r["loss"] for r in self.runs])

    def optimum(self) -> dict[str, Any]:
        """:func:`coqat.law.optimum.measured_optimum` of the curve."""
        return measured_optimum(self.f, self.loss)

    def loss_at(self, x: Any, outside: str = "clip") -> Any:
        """The curve at fraction(s) x (:func:`coqat.law.optimum.measured_loss_at`)."""
        return measured_loss_at(self.f, self.loss, x, outside=outside)

    def regret(self, rule: Any, outside: str = "clip") -> dict[str, Any]:
        """:func:`coqat.law.analysis.regret_detail` of ``rule`` at this grid's N, D, bits."""
        return regret_detail(
            rule, self.f, self.loss, N=self.N, D=self.D, bits=self.bits, outside=outside
        )


def _share_endpoints(groups: dict[tuple, list], i: int) -> dict[tuple, list]:
    """Runs at f = 0 or f = 1 join every group that differs from theirs only in the schedule
    (field ``i``) and has runs at 0 < f < 1; a group of endpoints only is dropped when such a
    group exists."""

    def rest(k: tuple) -> tuple:
        return k[:i] + k[i + 1 :]

    def inner(r: dict[str, Any]) -> bool:
        return 0.0 < float(r["f"]) < 1.0

    curves = {k for k, rs in groups.items() if any(inner(r) for r in rs)}
    ends = {k: [r for r in rs if not inner(r)] for k, rs in groups.items()}
    out = {}
    for k, rs in groups.items():
        if k in curves:
            shared = [r for kk, e in ends.items() if kk != k and rest(kk) == rest(k) for r in e]
            out[k] = rs + shared
        elif not any(rest(kk) == rest(k) for kk in curves):
            out[k] = rs
    return out


def grids(
    records: Iterable[dict[str, Any]],
    *,
    by: tuple[str, ...] = GRID_AXES,
    min_fractions: int = 3,
    one_call: bool = True,
    shared_endpoints: bool = False,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> list[Grid]:
    """The measured curves of ``records`` (quantized runs with a finite loss that ``where``
    accepts), one per distinct value of the ``by`` fields, with at least ``min_fractions``
    distinct fractions, ordered by N, bits (descending), D and the other fields.

    ``one_call``: use the runs of one call per grid (see the module doc). ``shared_endpoints``:
    runs at f = 0 or f = 1 (the same training for every schedule) join the grids of every
    schedule that has runs at 0 < f < 1 with otherwise equal fields.
    """
    runs = [
        r
        for r in records
        if float(r["bits"]) < 16
        and math.isfinite(float(r["loss"]))
        and (where is None or where(r))
    ]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[tuple(_norm(r.get(k)) for k in by)].append(r)
    if shared_endpoints and "schedule" in by:
        groups = _share_endpoints(groups, by.index("schedule"))
    out = []
    for k, rs in groups.items():
        labels = dict(zip(by, k))
        if one_call:
            if "seed" in by:
                c = representative_call(rs)
                rs = [r for r in rs if call_of(r) == c]
                call = c
            else:
                by_seed: dict[Any, list] = defaultdict(list)
                for r in rs:
                    by_seed[_norm(r.get("seed"))].append(r)
                chosen = {s: representative_call(v) for s, v in by_seed.items()}
                rs = [r for s, v in by_seed.items() for r in v if call_of(r) == chosen[s]]
                calls = set(chosen.values())
                call = calls.pop() if len(calls) == 1 else ""
        else:
            calls = {call_of(r) for r in rs}
            call = calls.pop() if len(calls) == 1 else ""
        f, L = seed_means([r["f"] for r in rs], [r["loss"] for r in rs])
        if len(f) < max(1, min_fractions):
            continue
        rs = sorted(rs, key=lambda r: (float(r["f"]), _order(r)))
        labels.setdefault("N", rs[0].get("N"))
        out.append(Grid(labels=labels, call=call, f=f, loss=L, runs=rs))
    out.sort(key=lambda g: (g.N, -g.bits, g.D, tuple(str(g.labels.get(k)) for k in by)))
    return out


def fstar_row(
    g: Grid,
    rules: dict[str, Any] | None = None,
    min_steps: int = MIN_STEPS,
    outside: str = "clip",
) -> dict[str, Any]:
    """One grid's measured optimum (``measured_optimum``'s fields), its labels, N, D, bits,
    S_total, steps, ``step_starved``, the curve, and for every rule ``f_<name>``,
    ``loss_<name>`` and ``regret_<name>`` (nats; ``outside_<name>`` when its fraction lies
    outside the measured ones)."""
    row = dict(g.labels)
    row.update(
        call=g.call,
        trunks=g.trunks,
        N=g.N,
        D_total=g.D,
        bits=g.bits,
        S_total=g.S_total,
        steps=g.steps,
        step_starved=g.step_starved(min_steps),
        f=g.f.tolist(),
        loss=g.loss.tolist(),
        **g.optimum(),
    )
    for name, rule in (rules or {}).items():
        d = g.regret(rule, outside=outside)
        row[f"f_{name}"] = d["f_rule"]
        row[f"loss_{name}"] = d["loss_rule"]
        row[f"regret_{name}"] = d["regret"]
        row[f"outside_{name}"] = d["outside"]
    return row


def fstar_table(
    gs: list[Grid],
    rules: dict[str, Any] | None = None,
    min_steps: int = MIN_STEPS,
    outside: str = "clip",
) -> list[dict[str, Any]]:
    """:func:`fstar_row` of every grid: the table of measured optima, with each rule's fraction
    and regret beside them."""
    return [fstar_row(g, rules, min_steps, outside) for g in gs]


def rule_summary(
    rows: list[dict[str, Any]], rules: Iterable[str], include_starved: bool = False
) -> dict[str, dict[str, Any]]:
    """Per rule over the rows of :func:`fstar_table` (step-starved rows left out unless
    ``include_starved``): ``n``, ``mae`` (|f_rule - f*|, f* refined), ``mean_regret``,
    ``max_regret`` and ``n_outside``."""
    use = [r for r in rows if include_starved or not r["step_starved"]]
    out = {}
    for name in rules:
        fr = np.array([r[f"f_{name}"] for r in use], float)
        fs = np.array([r["f_refined"] for r in use], float)
        rg = np.array([r[f"regret_{name}"] for r in use], float)
        out[name] = {
            "n": len(use),
            "mae": float(np.mean(np.abs(fr - fs))) if use else float("nan"),
            "mean_regret": float(np.nanmean(rg)) if use else float("nan"),
            "max_regret": float(np.nanmax(rg)) if use else float("nan"),
            "n_outside": int(sum(r[f"outside_{name}"] for r in use)),
        }
    return out


def representatives(
    records: Iterable[dict[str, Any]], by: tuple[str, ...] = GRID_AXES
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """One record per configuration (the ``by`` fields and the fraction) and the repeats.

    Which record represents a configuration that ran in several calls: the one of its grid's
    representative call (:func:`representative_call` over the runs with equal ``by`` fields);
    for a fraction that call did not run, the earliest record (``time``). Returns
    (representatives in ``time`` order, repeats as (representative, other) pairs)."""
    records = sorted(records, key=_order)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(_norm(r.get(k)) for k in by)].append(r)
    kept: list[dict[str, Any]] = []
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for rs in groups.values():
        main = representative_call(rs)
        ordered = [r for r in rs if call_of(r) == main] + [r for r in rs if call_of(r) != main]
        chosen: dict[float, dict[str, Any]] = {}
        for r in ordered:
            k = round(float(r["f"]), F_DECIMALS)
            if k in chosen:
                pairs.append((chosen[k], r))
            else:
                chosen[k] = r
        kept.extend(chosen.values())
    return sorted(kept, key=_order), pairs
