"""Sweep files: a grid of runs over sizes x tokens x bits x fractions x schedules x seeds.

A sweep file (YAML or TOML) holds::

    name: tiny                      # required; names the sweep in the store
    base: {...}                     # a RunConfig dict applied to every run
    sizes: [tiny, 2m]               # ladder names (default: base.size)
    tokens: [2.0e5, 4.0e5]          # D_total values, OR
    s_total: [50, 100]              # tokens per parameter byte S = D / (N * B / 8), per size/bits
    bits: [2, 4]                    # default: base.qat.bits
    fractions: [0, 0.25, 1]         # QAT fraction f (default: base.qat.fraction)
    schedules: [fused, standard]    # default: base.qat.schedule
    seeds: [0]                      # default: base.seed
    overrides: {2m: {optim: {lr: 2e-3}}}   # per-size RunConfig dicts
    exclude: [{bits: 2, fraction: 1}]      # drop grid points matching every given axis
    include: [{size: 7m, bits: 4, fraction: [0.1, 0.5], override: {optim: {lr: 1e-3}}}]

``include`` entries add runs after ``exclude`` was applied: each axis named in the entry takes the
entry's value(s), every other axis ranges over the sweep's values; ``override`` is a RunConfig dict
merged last. Axis names in include/exclude are singular: size, tokens, s_total, bits, fraction,
schedule, seed.

:func:`expand` turns a spec into deduplicated RunConfigs. Runs that train identically are
collapsed (see :func:`canonical`): with f = 0 or f = 1 (after rounding to whole steps) the fused
and standard schedules are the same run (recorded as ``standard``); with bits = 16 (FP only) the
fraction and schedule do not matter (recorded as fraction 0, ``standard``); two fractions that
round to the same number of QAT steps are the same run (the first one listed is kept).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from coqat.config import check, from_dict, load_file
from coqat.errors import ConfigError

AXES = ("size", "tokens", "s_total", "bits", "fraction", "schedule", "seed")
SCHEDULES = ("fused", "standard")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. Axis tuples left empty take their value from ``base``."""

    name: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    sizes: tuple[str, ...] = ()
    tokens: tuple[int, ...] = ()
    s_total: tuple[float, ...] = ()
    bits: tuple[float, ...] = ()
    fractions: tuple[float, ...] = ()
    schedules: tuple[Literal["fused", "standard"], ...] = ()
    seeds: tuple[int, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    include: tuple[dict, ...] = ()
    exclude: tuple[dict, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        from coqat.model.config import LADDER

        check(bool(self.name), "name", "a sweep needs a name (it labels its runs in the store)")
        check(
            not (self.tokens and self.s_total),
            "tokens",
            "give either tokens (D_total values) or s_total (tokens per parameter byte), not both",
        )
        _run_config(self.base, "base")  # validates base
        for s in self.sizes:
            check(s in LADDER, "sizes", f"unknown size {s!r}; choose one of {list(LADDER)}")
        for t in self.tokens:
            check(t > 0, "tokens", f"must be > 0, got {t}")
        for s in self.s_total:
            check(s > 0 and math.isfinite(s), "s_total", f"must be a number > 0, got {s}")
        for b in self.bits:
            _check_bits(b, "bits")
        for f in self.fractions:
            check(0.0 <= f <= 1.0, "fractions", f"must be in [0, 1], got {f}")
        for s in self.seeds:
            check(s >= 0, "seeds", f"must be >= 0, got {s}")
        for size, ov in self.overrides.items():
            check(
                size in LADDER,
                f"overrides.{size}",
                f"unknown size; the keys of overrides are ladder sizes {list(LADDER)}",
            )
            check(isinstance(ov, dict), f"overrides.{size}", "must be a RunConfig table")
            _run_config(_merge(self.base, ov), f"overrides.{size}")
        for kind in ("include", "exclude"):
            for i, entry in enumerate(getattr(self, kind)):
                _check_entry(entry, f"{kind}[{i}]", allow_override=kind == "include")

    # ----------------------------------------------------------------- axis values
    def axis(self, name: str) -> tuple:
        """Values of one axis, falling back to the base config's value."""
        base = _run_config(self.base, "base")
        if name == "size":
            return self.sizes or (base.size,)
        if name == "tokens":
            return () if self.s_total else (self.tokens or (base.tokens,))
        if name == "s_total":
            return self.s_total
        if name == "bits":
            return self.bits or (base.qat.bits,)
        if name == "fraction":
            return self.fractions or (base.qat.fraction,)
        if name == "schedule":
            return self.schedules or (base.qat.schedule,)
        if name == "seed":
            return self.seeds or (base.seed,)
        raise KeyError(name)


def _run_config(d: dict[str, Any], where: str):
    """RunConfig from a dict; errors name the key as ``where.<field>``."""
    from coqat.train.config import RunConfig

    try:
        return from_dict(RunConfig, d)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e.field}", str(e).split(": ", 1)[1]) from None


def _check_bits(b: Any, field: str) -> None:
    from coqat.bits import allowed_str, is_allowed

    ok = isinstance(b, int | float) and is_allowed(b, fp=True)
    check(ok, field, f"{b!r} is not supported; allowed: {allowed_str(fp=True)}")


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def _check_entry(entry: Any, where: str, allow_override: bool) -> None:

    check(isinstance(entry, dict), where, "must be a table of axis values")
    allowed = AXES + (("override",) if allow_override else ())
    for k, v in entry.items():
        check(k in allowed, f"{where}.{k}", f"unknown key; allowed keys are {list(allowed)}")
        if k == "override":
            check(isinstance(v, dict), f"{where}.override", "must be a RunConfig table")
            continue
        for x in _as_list(v):
            _check_value(k, x, f"{where}.{k}")
    if "tokens" in entry and "s_total" in entry:
        raise ConfigError(where, "give either tokens or s_total, not both")


def _check_value(k: str, x: Any, field: str) -> None:
    from coqat.model.config import LADDER

    if k == "size":
        check(x in LADDER, field, f"unknown size {x!r}; choose one of {list(LADDER)}")
    elif k == "schedule":
        check(x in SCHEDULES, field, f"{x!r} is not allowed; choose one of {list(SCHEDULES)}")
    elif k == "bits":
        _check_bits(x, field)
    elif k == "fraction":
        ok = isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1
        check(ok, field, f"must be in [0, 1], got {x!r}")
    else:
        ok = isinstance(x, int | float) and not isinstance(x, bool) and x >= 0
        check(ok, field, f"must be a number >= 0, got {x!r}")


def _merge(a: dict, b: dict) -> dict:
    """Deep merge of RunConfig dicts (b wins)."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def spec_from_dict(data: dict[str, Any]) -> SweepSpec:
    """SweepSpec from a parsed sweep file (unknown keys and bad values raise ConfigError)."""
    data = dict(data or {})
    # accept a scalar for any list axis (e.g. ``bits: 4``)
    for k in ("sizes", "tokens", "s_total", "bits", "fractions", "schedules", "seeds"):
        if k in data and not isinstance(data[k], list | tuple):
            data[k] = [data[k]]
    for k in ("include", "exclude"):
        if k in data and isinstance(data[k], dict):
            data[k] = [data[k]]
    return from_dict(SweepSpec, data)


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML/TOML sweep file."""
    data = load_file(path)
    if "name" not in data:
        data["name"] = Path(path).stem
    return spec_from_dict(data)


# ------------------------------------------------------------------------------- expansion
def tokens_for_s(cfg_dict: dict[str, Any], s_total: float) -> int:
    """D_total for a target S = D / (N * B / 8) with the config's model and bits, rounded to the
    nearest whole optimizer step (at least one step). N is the total parameter count."""
    from coqat.model.config import param_counts
    from coqat.train.config import RunConfig

    d = _merge(cfg_dict, {})
    probe = from_dict(RunConfig, d | {"tokens": 10**15})
    n = param_counts(probe.model).total
    bits = probe.qat.bits
    tps = probe.tokens_per_step
    target = s_total * n * bits / 8.0
    steps = max(1, int(math.floor(target / tps + 0.5)))
    return steps * tps


def canonical(cfg):
    """The representative of the runs that train identically to ``cfg`` (see module doc)."""
    from coqat.train.phases import plan_phases

    q = cfg.qat
    if q.is_fp:
        if q.fraction != 0.0 or q.schedule != "standard":
            cfg = replace(cfg, qat=replace(q, fraction=0.0, schedule="standard"))
        return cfg
    plan = plan_phases(cfg)
    if (plan.qat_steps == 0 or plan.fp_steps == 0) and q.schedule != "standard":
        cfg = replace(cfg, qat=replace(q, schedule="standard"))
    return cfg


def _identity(cfg) -> str:
    """Hash of what training depends on: the canonical config with the fraction replaced by the
    number of QAT steps."""
    from coqat.config import config_hash
    from coqat.train.phases import plan_phases

    plan = plan_phases(cfg)
    probe = replace(cfg, qat=replace(cfg.qat, fraction=0.0))
    return config_hash(probe, f"qat_steps={plan.qat_steps}")


def _match(point: dict[str, Any], entry: dict[str, Any]) -> bool:
    for k, v in entry.items():
        if k == "override":
            continue
        pv = point.get(k)
        if pv is None:
            return False
        vals = _as_list(v)
        if isinstance(pv, str):
            if pv not in vals:
                return False
        elif not any(abs(float(pv) - float(x)) <= 1e-9 * max(1.0, abs(float(x))) for x in vals):
            return False
    return True


def _points(spec: SweepSpec, fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    fixed = fixed or {}
    use_s = "s_total" in fixed or (spec.s_total and "tokens" not in fixed)
    budget = "s_total" if use_s else "tokens"
    names = ["size", budget, "bits", "fraction", "schedule", "seed"]
    values = []
    for n in names:
        if n in fixed:
            values.append(_as_list(fixed[n]))
        else:
            values.append(list(spec.axis(n)))
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _config(spec: SweepSpec, point: dict[str, Any], override: dict | None = None):
    from coqat.train.config import RunConfig

    d = copy.deepcopy(spec.base)
    size = point["size"]
    if size:
        d["size"] = size
        d = _merge(d, spec.overrides.get(size, {}))
    d = _merge(
        d,
        {
            "qat": {
                "bits": point["bits"],
                "fraction": point["fraction"],
                "schedule": point["schedule"],
            },
            "seed": point["seed"],
        },
    )
    if override:
        d = _merge(d, override)
    if "s_total" in point:
        d["tokens"] = tokens_for_s(d, point["s_total"])
    else:
        d["tokens"] = point["tokens"]
    return from_dict(RunConfig, d)


def expand(spec: SweepSpec) -> list:
    """All runs of the sweep as RunConfigs: grid minus ``exclude`` plus ``include``, collapsed
    to canonical configs and deduplicated (first occurrence wins, order preserved)."""
    out, seen = [], set()

    def add(cfg) -> None:
        cfg = canonical(cfg)
        ident = _identity(cfg)
        if ident not in seen:
            seen.add(ident)
            out.append(cfg)

    for point in _points(spec):
        if any(_match(point, e) for e in spec.exclude):
            continue
        add(_config(spec, point))
    for entry in spec.include:
        fixed = {k: v for k, v in entry.items() if k != "override"}
        for point in _points(spec, fixed):
            add(_config(spec, point, entry.get("override")))
    return out


def load_runs(path_or_spec: Any) -> tuple[str, list]:
    """(sweep name, runs) from a sweep file path, a SweepSpec, or a list of RunConfigs."""
    if isinstance(path_or_spec, SweepSpec):
        return path_or_spec.name, expand(path_or_spec)
    if isinstance(path_or_spec, str | Path):
        spec = load_spec(path_or_spec)
        return spec.name, expand(spec)
    runs = list(path_or_spec)
    return "adhoc", [canonical(r) for r in runs]
