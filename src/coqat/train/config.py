"""Run configuration: typed, frozen, validated dataclasses (torch-free).

A run trains ``tokens`` tokens in two phases: full precision (FP) for D_fp tokens, then
quantization-aware training (QAT) for D_qat tokens, with f = D_qat / D_total = ``qat.fraction``.
``qat.fraction = 0`` is FP training followed by post-training quantization (PTQ);
``qat.fraction = 1`` is QAT from scratch. ``qat.bits = 16`` trains in full precision only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from coqat.bits import ALLOWED_BITS as ALLOWED_BITS  # re-exported: the one definition
from coqat.bits import FP_BITS, allowed_str, is_allowed
from coqat.config import apply_overrides, check, from_dict, load_file, to_dict
from coqat.model.config import LADDER, ModelConfig, ladder

# data.val_tokens = 0 (auto): every evaluation reads D_total / AUTO_VAL_DIVISOR validation tokens,
# at least AUTO_VAL_MIN_WINDOWS windows and at most AUTO_VAL_CAP tokens: about 7% of the
# training compute for the default 10 evaluations plus the phase switch and the end (a forward
# pass costs a third of a training step per token), and a fixed 262,144 from 17M tokens up
AUTO_VAL_DIVISOR = 64
AUTO_VAL_MIN_WINDOWS = 8
AUTO_VAL_CAP = 262_144


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared token data lives (a folder written by ``coqat data prepare``)."""

    path: str = ""
    # validation tokens of every evaluation; 0 = proportional to the run (RunConfig.val_tokens)
    val_tokens: int = 0
    # checks of the token files against the manifest: "hash" = sha256, once per version of each
    # file (cached); "full" = sha256 every time; "size" = the size only
    verify: Literal["hash", "full", "size"] = "hash"
    # train on the first ``train_tokens`` tokens of the train split only (0 = all of it): the
    # same token budget then repeats the data more often (epochs = D_total / train_tokens)
    train_tokens: int = 0

    def __post_init__(self) -> None:
        check(
            self.val_tokens >= 0,
            "data.val_tokens",
            f"must be >= 0 (0 = proportional to the run), got {self.val_tokens}",
        )
        check(
            self.train_tokens >= 0,
            "data.train_tokens",
            f"must be >= 0 (0 = the whole train split), got {self.train_tokens}",
        )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with weight decay on matrices only, and gradient clipping."""

    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    batch_size: int = 32  # sequences per optimizer step
    micro_batch_size: int = 0  # sequences per forward/backward; 0 = batch_size

    def __post_init__(self) -> None:
        check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        check(0 <= self.beta1 < 1, "optim.beta1", "must be in [0, 1)")
        check(0 <= self.beta2 < 1, "optim.beta2", "must be in [0, 1)")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables)")
        check(self.batch_size > 0, "optim.batch_size", f"must be > 0, got {self.batch_size}")
        mb = self.micro_batch_size or self.batch_size
        check(
            mb > 0 and self.batch_size % mb == 0,
            "optim.micro_batch_size",
            f"must divide batch_size={self.batch_size}, got {self.micro_batch_size}",
        )

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule of the FP phase (and the shape of every cooldown).

    ``wsd``: linear warmup over ``warmup`` x D_total tokens, constant, then a cooldown over the
    last ``cooldown`` fraction of the phase down to ``min_lr_ratio`` x lr with ``cooldown_shape``.
    ``cosine``: warmup then cosine decay over the whole phase. Warmup is a fraction of D_total
    (not of the phase) so that every run of a sweep with the same D_total shares one FP trunk.
    """

    kind: Literal["wsd", "cosine"] = "wsd"
    warmup: float = 0.02
    cooldown: float = 0.2
    cooldown_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check(0 <= self.warmup < 1, "schedule.warmup", f"must be in [0, 1), got {self.warmup}")
        check(0 <= self.cooldown <= 1, "schedule.cooldown", "must be in [0, 1]")
        check(0 <= self.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must be in [0, 1]")


@dataclass(frozen=True)
class QATConfig:
    """The QAT phase and how it joins the FP phase.

    ``schedule``: ``standard`` = FP warmup-stable-cooldown, then QAT with its own (re)warmup,
    stable and cooldown; ``fused`` (cooldown & QAT fusion) = the FP phase stays at the peak
    learning rate and QAT starts there; the cooldown happens at the end of QAT.
    """

    bits: float = 4.0
    fraction: float = 0.1
    schedule: Literal["fused", "standard"] = "fused"
    lr_ratio: float = 1.0  # QAT peak lr relative to the FP peak lr
    rewarmup: float = 0.05  # standard: warmup fraction of the QAT phase
    cooldown: float = 0.2  # QAT cooldown length, as a fraction of ``cooldown_of``
    # what qat.cooldown is a fraction of: ``total`` = the whole run, capped at the QAT phase
    # (the FP cooldown's length, moved into QAT: the fused decay does not shrink with f until
    # f < cooldown); ``fixed`` = the whole run for every f: when the QAT phase is shorter than
    # the decay, the decay starts in FP and continues through QAT (every fraction gets the
    # same decay); ``qat`` = the QAT phase (docs/train.md: the H200 measurement behind the
    # default)
    cooldown_of: Literal["qat", "total", "fixed"] = "total"
    carry_optimizer: bool = True  # keep AdamW moments of the weights across the phase switch
    granularity: Literal["row", "group"] = "row"
    group_size: int = 128
    embed_bits: str = "auto"  # "auto" = max(bits, 4), "fp", or a bit width

    def __post_init__(self) -> None:
        b = self.bits
        ok = isinstance(b, int | float) and is_allowed(b, fp=True)
        check(ok, "qat.bits", f"{b!r} is not supported; allowed: {allowed_str(fp=True)}")
        check(
            0.0 <= self.fraction <= 1.0,
            "qat.fraction",
            f"must be in [0, 1] (0 = FP then PTQ, 1 = QAT from scratch), got {self.fraction}",
        )
        check(self.lr_ratio > 0, "qat.lr_ratio", f"must be > 0, got {self.lr_ratio}")
        check(0 <= self.rewarmup < 1, "qat.rewarmup", "must be in [0, 1)")
        check(0 <= self.cooldown <= 1, "qat.cooldown", "must be in [0, 1]")
        check(self.group_size > 0, "qat.group_size", "must be > 0")
        if self.embed_bits not in ("auto", "fp"):
            try:
                eb = float(self.embed_bits)
            except ValueError:
                eb = float("nan")
            check(
                is_allowed(eb, fp=True),
                "qat.embed_bits",
                f"{self.embed_bits!r} is not allowed; use 'auto', 'fp' or one of "
                f"{allowed_str()}",
            )

    @property
    def is_fp(self) -> bool:
        return self.bits == FP_BITS


@dataclass(frozen=True)
class DistConfig:
    """How a run spreads over the processes of a ``torchrun`` launch (ignored in one process).

    ``strategy``: ``ddp`` replicates the model and averages gradients; ``fsdp`` shards
    parameters, gradients and optimizer state (FSDP2, ``torch.distributed.fsdp.fully_shard``);
    ``auto`` picks ``fsdp`` when the training state (weights, gradients and AdamW moments:
    16 bytes per parameter) would take more than a third of one GPU's memory, else ``ddp``.
    ``param_dtype`` (FSDP): the dtype weights are all-gathered and computed in. ``fp32`` keeps the
    numerics of a single-process or DDP run (bf16 autocast does the matmuls); ``bf16`` halves the
    all-gather traffic and the unsharded weights' memory (gradients are reduced in fp32 either
    way; the fake quantizers then see bf16 copies of the fp32 master weights).
    """

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    param_dtype: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class PerfConfig:
    """How the training step runs on the device (docs/train.md, "The training step"). None of
    these settings changes what is trained beyond floating-point rounding.

    ``kernels``: ``plain`` = one matmul per weight and the loss from full fp32 logits; ``fused``
    = the output projection and the cross-entropy in chunks of tokens without keeping the logits,
    q/k/v and gate/up as one matmul each (same mathematics, less memory for the logits). The
    default is ``plain``: on the H200 the fused path took more GPU time per step at every size
    measured (bench/README.md: 12.72 vs 12.50 ms at 2m, 349 vs 322 ms at 150m, the backward of
    the q/k/v split costing a strided copy per layer).
    ``batches``: ``device`` = the train split copied to the accelerator once and every batch
    gathered there (the same windows as on the host: batch k depends only on the seed and k);
    ``host`` = gathered from the memory-mapped file and copied each step; ``auto`` = device on
    CUDA when the split takes at most a quarter of the free device memory, else host.
    ``cuda_graph``: capture the whole step (forward, backward, clipping, AdamW) in one CUDA graph
    after a few eager steps and replay it (no per-step host work beyond the batch's window starts
    and the learning rate); ``auto`` = on for a single-process CUDA run of a model below 60M
    parameters with ``compile_mode = default`` (above that the GPU hides the host anyway).
    """

    kernels: Literal["fused", "plain"] = "plain"
    batches: Literal["auto", "device", "host"] = "auto"
    cuda_graph: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run. Its hash (with code and data versions) keys the run."""

    size: str = ""  # a ladder name; when set it defines the model's shape
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    tokens: int = 1_000_000  # D_total
    seed: int = 0
    eval_every: int = 0  # tokens between validations; 0 = 10 evaluations per run
    checkpoint_every: int = 0  # tokens between checkpoints; 0 = phase ends only
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA, off for CPU
    # torch.compile mode; "reduce-overhead" adds CUDA graphs (for small, launch-bound models)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    divergence_factor: float = 1.5  # diverged if loss > factor * ln(vocab) or NaN/Inf
    perf: PerfConfig = field(default_factory=PerfConfig)

    def __post_init__(self) -> None:
        check(self.tokens > 0, "tokens", f"must be > 0, got {self.tokens}")
        check(
            not self.size or self.size in LADDER,
            "size",
            f"unknown size {self.size!r}; choose one of {list(LADDER)}",
        )
        check(
            not (self.perf.cuda_graph == "on" and self.compile_mode == "reduce-overhead"),
            "perf.cuda_graph",
            "'on' captures the whole step itself; with compile_mode 'reduce-overhead' "
            "torch.compile captures forward and backward: choose one (perf.cuda_graph=off or "
            "compile_mode=default)",
        )
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        if self.size:
            sized = ladder(
                self.size,
                vocab_size=self.model.vocab_size,
                seq_len=self.model.seq_len,
            )
            if (sized.d_model, sized.n_layers, sized.n_heads) != (
                self.model.d_model,
                self.model.n_layers,
                self.model.n_heads,
            ):
                object.__setattr__(self, "model", replace(self.model, **_shape(sized)))
        step = self.optim.batch_size * self.model.seq_len
        check(
            self.tokens >= step,
            "tokens",
            f"{self.tokens} is less than one step ({step} tokens = batch_size x seq_len)",
        )

    @property
    def tokens_per_step(self) -> int:
        return self.optim.batch_size * self.model.seq_len

    @property
    def val_tokens(self) -> int:
        """Validation tokens of every evaluation: ``data.val_tokens``, or when 0, D_total / 64
        between 8 windows and 262,144 tokens (AUTO_VAL_*)."""
        if self.data.val_tokens:
            return self.data.val_tokens
        floor = AUTO_VAL_MIN_WINDOWS * self.model.seq_len
        return min(AUTO_VAL_CAP, max(self.tokens // AUTO_VAL_DIVISOR, floor))


def _shape(cfg: ModelConfig) -> dict[str, int]:
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}


def load_run_config(path: str | None = None, overrides: tuple[str, ...] = ()) -> RunConfig:
    """RunConfig from an optional YAML/TOML file plus ``a.b=value`` overrides. Unless the file or
    an override sets ``model.vocab_size``, it is the prepared data's vocabulary (when
    ``data.path`` holds a manifest)."""
    data: dict[str, Any] = load_file(path) if path else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(RunConfig, with_data_vocab(data))


def with_data_vocab(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``model.vocab_size`` set from the manifest of ``data.path`` when it is not
    set and the folder is prepared."""
    model = data.get("model")
    if isinstance(model, dict) and "vocab_size" in model:
        return data
    d = data.get("data")
    path = d.get("path") if isinstance(d, dict) else None
    if not path:
        return data
    from pathlib import Path

    from coqat.data.manifest import MANIFEST, load_manifest

    if not (Path(str(path)) / MANIFEST).is_file():
        return data
    vocab = load_manifest(str(path)).vocab_size
    model = dict(model) if isinstance(model, dict) else {}
    return {**data, "model": {**model, "vocab_size": vocab}}


def run_config_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)
