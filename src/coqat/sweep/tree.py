"""The sweep as a forest: runs grouped by FP trunk, exact FLOPs with and without sharing.

Every run trains the stable-LR FP trunk up to its ``branch_step``
(:attr:`coqat.train.phases.PhasePlan.branch_step`) and its own part after it. Runs with the same
trunk key (:func:`coqat.sweep.keys.trunk_key`) train the trunk once, to the largest branch step
of the group, and branch from checkpoints at each branch step. A group of one run, and runs with
``branch_step == 0`` (QAT from scratch, f = 1), have no trunk: they train alone.

FLOPs are integers: ``steps x tokens_per_step x flops_per_token`` (``flops_per_token`` is an
integer, see :func:`coqat.model.config.flops_per_token`), so the FLOPs saved by sharing are exact:
``sum over trunks of (sum of branch steps of its runs - max branch step) x tokens_per_step x
flops_per_token``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

# Training throughput (tokens/s) of coqat's trainer on one H200 (bf16, torch.compile), from
# bench/results/throughput-h200-2026-11-29.json (seq_len 512, batch 256). Other sizes are
# interpolated at the achieved FLOP/s of the nearest measured size.
DEFAULT_TOKENS_PER_S: dict[str, float] = {
    "2m": 9.4e6,
    "7m": 5.26e6,
    "17m": 2.65e6,
    "30m": 1.84e6,
}


# Model FLOP/s of a small CPU run, evaluations and start-up included: the tiny example sweep
# (8.15e11 FLOPs with sharing) ran in 39 s on a 2-core machine at load average ~6 with one
# torch thread (2026-11-30, `coqat sweep run examples/sweeps/tiny.yaml`): 2.1e10.
CPU_FLOPS = 2.0e10


def _on_cpu(device: str) -> bool:
    """Whether a run with this ``device`` setting trains on the CPU here ('auto' without CUDA)."""
    if device != "auto":
        return device == "cpu"
    return not _cuda_available()


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class PlannedRun:
    cfg: Any
    trunk: str | None  # trunk key, None: trains alone
    branch_step: int  # 0 when trained alone
    steps: int
    tokens_per_step: int
    flops_per_token: int
    tokens_per_s: float

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_independent(self) -> int:
        return self.steps * self.tokens_per_step * self.flops_per_token

    @property
    def own_steps(self) -> int:
        """Steps this run trains itself (after its branch point when it has a trunk)."""
        return self.steps - (self.branch_step if self.trunk else 0)

    @property
    def flops_own(self) -> int:
        return self.own_steps * self.tokens_per_step * self.flops_per_token

    @property
    def seconds_independent(self) -> float:
        return self.tokens / self.tokens_per_s

    @property
    def seconds_own(self) -> float:
        return self.own_steps * self.tokens_per_step / self.tokens_per_s


@dataclass(frozen=True)
class TrunkPlan:
    key: str
    cfg: Any  # a representative run config
    branch_steps: tuple[int, ...]  # sorted, distinct, > 0
    n_runs: int
    tokens_per_step: int
    flops_per_token: int
    tokens_per_s: float

    @property
    def steps(self) -> int:
        return self.branch_steps[-1]

    @property
    def flops(self) -> int:
        return self.steps * self.tokens_per_step * self.flops_per_token

    @property
    def seconds(self) -> float:
        return self.steps * self.tokens_per_step / self.tokens_per_s


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    trunks: dict[str, TrunkPlan] = field(default_factory=dict)

    @property
    def flops_independent(self) -> int:
        return sum(r.flops_independent for r in self.runs)

    @property
    def flops_shared(self) -> int:
        return sum(r.flops_own for r in self.runs) + sum(t.flops for t in self.trunks.values())

    @property
    def flops_saved(self) -> int:
        return self.flops_independent - self.flops_shared

    @property
    def seconds_independent(self) -> float:
        return sum(r.seconds_independent for r in self.runs)

    @property
    def seconds_shared(self) -> float:
        return sum(r.seconds_own for r in self.runs) + sum(t.seconds for t in self.trunks.values())

    def summary(self) -> dict[str, Any]:
        return {
            "runs": len(self.runs),
            "trunks": len(self.trunks),
            "runs_on_trunks": sum(1 for r in self.runs if r.trunk),
            "flops_independent": self.flops_independent,
            "flops_shared": self.flops_shared,
            "flops_saved": self.flops_saved,
            "saved_fraction": self.flops_saved / self.flops_independent if self.runs else 0.0,
            "seconds_independent": self.seconds_independent,
            "seconds_shared": self.seconds_shared,
        }


def tokens_per_s_for(
    cfg, table: dict[str, float] | None = None, default: float | None = None
) -> float:
    """Throughput estimate for a run: ``default`` if given, else the table (defaults above,
    updated by ``table``) by size, else interpolated at constant FLOP/s from the nearest size."""
    from coqat.model.config import flops_per_token, ladder

    if default:
        return float(default)
    if _on_cpu(cfg.device) and not (table and cfg.size in table):
        return CPU_FLOPS / flops_per_token(cfg.model)
    t = dict(DEFAULT_TOKENS_PER_S)
    t.update(table or {})
    if cfg.size and cfg.size in t:
        return float(t[cfg.size])
    fpt = flops_per_token(cfg.model)
    best, best_d = None, None
    for name, tps in t.items():
        try:
            ref = flops_per_token(ladder(name, seq_len=cfg.model.seq_len))
        except Exception:  # noqa: BLE001 - an unknown name in a user table
            continue
        d = abs(ref - fpt)
        if best_d is None or d < best_d:
            best, best_d = tps * ref, d
    return float(best / fpt) if best else 1e6


def plan_sweep(
    runs: list,
    *,
    share: bool = True,
    tokens_per_s: dict[str, float] | float | None = None,
    version: str = "",
    dhash: str | None = None,
) -> SweepPlan:
    """Group ``runs`` (RunConfigs) by FP trunk and count FLOPs exactly (see module doc).

    ``tokens_per_s``: one number for every run, or {size: tokens/s} updating the default table.
    ``version``/``dhash`` go into the trunk keys (the store passes the real ones).
    """
    from coqat.model.config import flops_per_token
    from coqat.sweep.keys import trunk_key
    from coqat.train.phases import plan_phases

    table = tokens_per_s if isinstance(tokens_per_s, dict) else None
    default = tokens_per_s if isinstance(tokens_per_s, int | float) else None
    rows = []
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(runs):
        plan = plan_phases(cfg)
        fpt = flops_per_token(cfg.model)
        assert float(fpt).is_integer()
        tk = trunk_key(cfg, version, dhash) if share and plan.branch_step > 0 else None
        rows.append((cfg, plan, int(fpt), tk))
        if tk:
            groups.setdefault(tk, []).append(i)
    shared = {k for k, idx in groups.items() if len(idx) >= 2}
    out_runs, trunks = [], {}
    for cfg, plan, fpt, tk in rows:
        tk = tk if tk in shared else None
        out_runs.append(
            PlannedRun(
                cfg=cfg,
                trunk=tk,
                branch_step=plan.branch_step if tk else 0,
                steps=plan.steps,
                tokens_per_step=plan.tokens_per_step,
                flops_per_token=fpt,
                tokens_per_s=tokens_per_s_for(cfg, table, default),
            )
        )
    for k in shared:
        members = [r for r in out_runs if r.trunk == k]
        first = members[0]
        trunks[k] = TrunkPlan(
            key=k,
            cfg=first.cfg,
            branch_steps=tuple(sorted({r.branch_step for r in members})),
            n_runs=len(members),
            tokens_per_step=first.tokens_per_step,
            flops_per_token=first.flops_per_token,
            tokens_per_s=first.tokens_per_s,
        )
    return SweepPlan(runs=out_runs, trunks=trunks)


def format_plan(plan: SweepPlan, name: str = "") -> str:
    """A human-readable plan: runs per trunk, FLOPs and time estimates."""
    s = plan.summary()
    lines = [
        f"sweep {name}: {s['runs']} runs, {s['trunks']} shared FP trunks "
        f"({s['runs_on_trunks']} runs branch from a trunk)",
        f"  FLOPs independent : {s['flops_independent']:,} ({s['flops_independent']:.3e})",
        f"  FLOPs with sharing: {s['flops_shared']:,} ({s['flops_shared']:.3e})",
        f"  FLOPs saved       : {s['flops_saved']:,} ({100 * s['saved_fraction']:.1f}%)",
        f"  est. time (1 device): {_hms(s['seconds_shared'])} with sharing, "
        f"{_hms(s['seconds_independent'])} independent",
    ]
    for t in sorted(plan.trunks.values(), key=lambda t: t.key):
        c = t.cfg
        lines.append(
            f"  trunk {t.key}: size={c.size or c.model.d_model} D={c.tokens:,} seed={c.seed} "
            f"{t.n_runs} runs, branch steps {list(t.branch_steps)}"
        )
    return "\n".join(lines)


def _hms(sec: float) -> str:
    if sec < 60:
        return f"{sec:.1f}s"
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
