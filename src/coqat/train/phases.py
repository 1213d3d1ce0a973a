"""The two-phase plan of a run: exact token counts, branch points and the learning-rate schedule.

Pure Python (no torch): the sweep planner uses it to count FLOPs and share FP trunks.

Token accounting is in whole optimizer steps (``batch_size x seq_len`` tokens): D_total is
rounded down to whole steps, D_fp = round((1 - f) x steps) steps, D_qat = the rest. The exact
counts are recorded with every run, so f_actual = D_qat / D_total is what the law is fitted on.

The learning-rate multiplier is a function of the step alone, so it composes across phases and
is the same whether a run is trained alone or branched from a shared trunk:

* FP trunk: linear warmup over ``schedule.warmup x D_total`` then the peak, forever.
* standard: the FP phase cools down over its last ``schedule.cooldown`` fraction; QAT rewarms
  over ``qat.rewarmup`` of its phase to ``qat.lr_ratio`` x peak, stays, then cools down over its
  last ``qat.cooldown`` fraction (of the QAT phase, or with ``qat.cooldown_of = total`` of
  the whole run, capped at the QAT phase).
* fused: the FP phase is the trunk itself (no cooldown); QAT continues at ``qat.lr_ratio`` x peak
  and cools down over its last ``qat.cooldown`` fraction (same basis as above). With
  ``qat.cooldown_of = fixed`` the decay is ``qat.cooldown x D_total`` long for every f: when
  the QAT phase is shorter, the decay starts in the FP phase (the branch point moves there) and
  continues through QAT, so small fractions are not given a shorter decay.
* f = 0: FP with the standard cooldown at the end, then PTQ. f = 1: QAT from scratch with the
  FP warmup and the QAT cooldown.
* schedule.kind = cosine: every decay is a cosine over its whole phase instead (no stable part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coqat.config import to_dict
from coqat.model.config import flops_per_token, param_counts
from coqat.train.config import RunConfig


@dataclass(frozen=True)
class PhasePlan:
    steps: int  # total optimizer steps
    fp_steps: int
    qat_steps: int
    tokens_per_step: int
    warmup_steps: int
    fp_cooldown_start: int  # step where the FP phase's private part begins (branch point)
    qat_start: int  # == fp_steps
    qat_cooldown_start: int  # < qat_start when the decay began in FP (cooldown_of = fixed)
    schedule: str
    kind: str
    fp_only: bool

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def d_fp(self) -> int:
        return self.fp_steps * self.tokens_per_step

    @property
    def d_qat(self) -> int:
        return self.qat_steps * self.tokens_per_step

    @property
    def fraction(self) -> float:
        return self.qat_steps / self.steps

    @property
    def branch_step(self) -> int:
        """Last step shared with the stable-LR FP trunk (0 when nothing is shared)."""
        return self.fp_cooldown_start


def plan_phases(cfg: RunConfig) -> PhasePlan:
    tps = cfg.tokens_per_step
    steps = cfg.tokens // tps
    q = cfg.qat
    if q.is_fp:
        fp_steps = steps
    else:
        fp_steps = int(math.floor((1.0 - q.fraction) * steps + 0.5))
        fp_steps = min(max(fp_steps, 0), steps)
    qat_steps = steps - fp_steps
    warmup = int(round(cfg.schedule.warmup * steps))
    kind = cfg.schedule.kind
    fused = q.schedule == "fused" and 0 < fp_steps < steps
    if fused:
        fp_cd = fp_steps
    elif kind == "cosine":
        fp_cd = warmup if fp_steps > 0 else 0
    else:
        fp_cd = fp_steps - int(round(cfg.schedule.cooldown * fp_steps))
    fp_cd = max(min(fp_cd, fp_steps), min(warmup, fp_steps))
    basis = qat_steps if q.cooldown_of == "qat" else steps
    qat_cd = steps - min(qat_steps, int(round(q.cooldown * basis)))
    if q.schedule == "standard" and 0 < fp_steps < steps:  # the decay follows the re-warmup
        qat_cd = max(qat_cd, fp_steps + int(round(q.rewarmup * qat_steps)))
    if kind == "cosine":
        qat_cd = fp_steps
    qat_cd = max(qat_cd, fp_steps)
    if fused and kind != "cosine" and q.cooldown_of == "fixed":
        # the decay keeps its length; a QAT phase shorter than it starts the decay in FP
        qat_cd = max(steps - int(round(q.cooldown * steps)), min(warmup, fp_steps))
        fp_cd = min(fp_cd, qat_cd)
    return PhasePlan(
        steps=steps,
        fp_steps=fp_steps,
        qat_steps=qat_steps,
        tokens_per_step=tps,
        warmup_steps=warmup,
        fp_cooldown_start=fp_cd,
        qat_start=fp_steps,
        qat_cooldown_start=qat_cd,
        schedule="fp" if q.is_fp else q.schedule,
        kind=kind,
        fp_only=q.is_fp,
    )


def _decay(progress: float, shape: str, floor: float) -> float:
    """Multiplier going from 1 at progress 0 to ``floor`` at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        m = 1.0 - p
    elif shape == "cosine":
        m = 0.5 * (1.0 + math.cos(math.pi * p))
    elif shape == "1-sqrt":
        m = 1.0 - math.sqrt(p)
    else:
        raise ValueError(f"schedule.cooldown_shape: unknown {shape!r}")
    return floor + (1.0 - floor) * m


def lr_multiplier(cfg: RunConfig, plan: PhasePlan, step: int) -> float:
    """Learning-rate multiplier (of ``optim.lr``) for optimizer step ``step`` (0-based)."""
    s = cfg.schedule
    q = cfg.qat
    shape = "cosine" if s.kind == "cosine" else s.cooldown_shape
    floor = s.min_lr_ratio
    # position measured at the middle of nothing: step k uses the lr of "k steps done"
    if step < plan.fp_steps or plan.fp_only:
        if plan.warmup_steps and step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        if step < plan.fp_cooldown_start or plan.fp_cooldown_start >= plan.fp_steps:
            return 1.0
        if plan.qat_cooldown_start < plan.fp_steps:  # one decay through FP and QAT
            n = plan.steps - plan.qat_cooldown_start
            return _decay((step - plan.qat_cooldown_start) / n, shape, floor)
        n = plan.fp_steps - plan.fp_cooldown_start
        return _decay((step - plan.fp_cooldown_start) / n, shape, floor)
    # QAT phase
    peak = q.lr_ratio
    k = step - plan.qat_start
    if plan.fp_steps == 0:  # QAT from scratch: FP warmup, then QAT cooldown
        if plan.warmup_steps and step < plan.warmup_steps:
            return peak * (step + 1) / plan.warmup_steps
    elif q.schedule == "standard":
        rw = int(round(q.rewarmup * plan.qat_steps))
        if rw and k < rw:
            return peak * (k + 1) / rw
    if step < plan.qat_cooldown_start:
        return peak
    n = plan.steps - plan.qat_cooldown_start
    return peak * _decay((step - plan.qat_cooldown_start) / n, shape, floor)


def phase_flops(cfg: RunConfig, plan: PhasePlan) -> dict[str, float]:
    """Training FLOPs per phase (model FLOPs per token x tokens; 6N + attention)."""
    fpt = flops_per_token(cfg.model)
    return {"fp": fpt * plan.d_fp, "qat": fpt * plan.d_qat, "total": fpt * plan.tokens}


def run_accounting(cfg: RunConfig) -> dict:
    """What a run is, in the numbers the law and the reports use (no training needed): parameter
    counts, bits, model bytes, exact tokens per phase, f, S = D / (N x B/8) per phase, FLOPs."""
    plan = plan_phases(cfg)
    pc = param_counts(cfg.model)
    bits = cfg.qat.bits
    if plan.fp_only:
        embed_bits, model_bytes = None, pc.total * 2.0
    else:
        from coqat.quant.config import QuantConfig

        embed_bits = QuantConfig(bits=bits, embed_bits=cfg.qat.embed_bits).resolved_embed_bits
        model_bytes = pc.model_bytes(bits, embed_bits if embed_bits is not None else 16.0)
    nb = pc.total * bits / 8
    flops = phase_flops(cfg, plan)
    return {
        "size": cfg.size,
        "d_model": cfg.model.d_model,
        "n_layers": cfg.model.n_layers,
        "N": pc.total,
        "N_nonemb": pc.non_embedding,
        "N_embed": pc.embedding,
        "N_linear": pc.linear,
        "bits": bits,
        "embed_bits": embed_bits,
        "model_bytes": model_bytes,
        "D_total": plan.tokens,
        "D_fp": plan.d_fp,
        "D_qat": plan.d_qat,
        "f": plan.fraction,
        "f_requested": cfg.qat.fraction,
        "S_total": plan.tokens / nb,
        "S_fp": plan.d_fp / nb,
        "S_qat": plan.d_qat / nb,
        "schedule": plan.schedule,
        "lr": cfg.optim.lr,
        "seed": cfg.seed,
        "steps": plan.steps,
        "tokens_per_step": plan.tokens_per_step,
        "flops_fp": flops["fp"],
        "flops_qat": flops["qat"],
        "flops": flops["total"],
    }


def trunk_identity(cfg: RunConfig) -> dict:
    """What a run's stable-LR FP trunk depends on: runs equal here share their trunk up to their
    branch steps. Hashed (with the code version and the data hash) into trunk keys."""
    return {
        "model": to_dict(cfg.model),
        "data": to_dict(cfg.data),
        "optim": to_dict(cfg.optim),
        "warmup": cfg.schedule.warmup,
        "tokens": cfg.tokens,
        "seed": cfg.seed,
        "numerics": [cfg.device, cfg.compile, cfg.precision, cfg.perf.kernels],
    }
