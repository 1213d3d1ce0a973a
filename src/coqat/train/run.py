"""Train one run: the FP phase, the switch to QAT, the QAT phase, evaluation and the result record.

``execute`` is the whole run; ``train_trunk`` trains the stable-learning-rate FP trunk that runs of
a sweep share, saving a checkpoint at each branch point. Both drive the same :class:`Trainer`, so a
run branched from a trunk checkpoint follows exactly the arithmetic of the same run trained alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import coqat
from coqat.config import atomic_write_text, config_hash, flatten, to_dict
from coqat.errors import ConfigError, CoqatError
from coqat.model.config import param_counts
from coqat.model.llama import Llama
from coqat.provenance import git_commit
from coqat.train.checkpoint import (
    load_checkpoint,
    load_sharded_state,
    remove_checkpoint,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from coqat.train.config import FP_BITS, QATConfig, RunConfig
from coqat.train.distributed import (
    all_reduce_sum,
    average_gradients,
    barrier,
    init_distributed,
    rank_share,
    resolve_strategy,
    rows_for_rank,
)
from coqat.train.metrics import MetricsLog
from coqat.train.phases import (
    PhasePlan,
    lr_multiplier,
    plan_phases,
    run_accounting,
)
from coqat.train.progress import RunProgress
from coqat.train.step import StepRunner
from coqat.train.threads import configure_cpu_threads
from coqat.train.timing import Clock

CHECKPOINT = "checkpoint.pt"


def trunk_config(cfg: RunConfig) -> RunConfig:
    """The FP trunk of ``cfg``: same model, data, optimizer, warmup, tokens and seed; no
    cooldown, no QAT."""
    return replace(
        cfg,
        qat=QATConfig(bits=FP_BITS, fraction=0.0),
        schedule=replace(cfg.schedule, cooldown=0.0, kind="wsd"),
    )


def resolve_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CoqatError("device: 'cuda' requested but torch.cuda.is_available() is False")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, y)


def _eager_forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``model(x, y)`` with any compiled submodule (a sharded model's blocks) run eagerly."""
    with torch.compiler.set_stance("force_eager"):
        return model(x, y)


_COMPILED: dict[str, Any] = {}


def compile_options(mode: str = "default") -> dict[str, Any]:
    """Inductor options for ``mode`` (and dynamo's recompile limits raised to 64)."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    import torch._inductor.config as inductor_config
    from torch._inductor import list_mode_options

    # the mode's own inductor options, without the generated code's per-call size/stride
    # asserts (dynamo's guards already check the inputs): less host time per step, which a
    # small model's short GPU step cannot hide; assertions only, so no numbers change
    options = dict(list_mode_options(mode))
    if hasattr(inductor_config, "size_asserts"):
        options["size_asserts"] = False
    return options


def compiled_forward_loss(mode: str = "default"):
    """One compiled function per compile mode, shared by every model and run of this process:
    models are passed as arguments, so a new run of an already-seen shape reuses the graph."""
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_forward_loss, options=compile_options(mode))
    return _COMPILED[mode]


def _device_memory(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


class Diverged(Exception):
    pass


class NullLog:
    """The metrics log of ranks other than 0: writes nothing."""

    def write(self, **rec: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """Holds the model, optimizer and data of one run and advances them step by step."""

    def __init__(self, cfg: RunConfig, *, progress: bool = False):
        from coqat.data import BatchSampler, TokenDataset

        self.cfg = cfg
        self.plan: PhasePlan = plan_phases(cfg)
        self.device = resolve_device(cfg)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.cuda = self.device.type == "cuda"
        if not self.cuda:
            configure_cpu_threads()
        self.use_compile = cfg.compile == "on" or (cfg.compile == "auto" and self.cuda)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.cuda)
        self.progress = progress
        if not cfg.data.path:
            raise CoqatError("data.path: no prepared data folder given (see `coqat data prepare`)")
        self.train_ds = TokenDataset(cfg.data.path, "train", verify=cfg.data.verify)
        if cfg.data.train_tokens:
            self.train_ds = self.train_ds.head(cfg.data.train_tokens)
        self.val_ds = TokenDataset(cfg.data.path, "val", verify=cfg.data.verify)
        if self.train_ds.vocab_size > cfg.model.vocab_size:
            raise CoqatError(
                f"model.vocab_size: {cfg.model.vocab_size} is smaller than the data's vocabulary "
                f"({self.train_ds.vocab_size}, {cfg.data.path})"
            )
        self.sampler = BatchSampler(
            self.train_ds, cfg.optim.batch_size, cfg.model.seq_len, seed=cfg.seed
        )
        torch.manual_seed(cfg.seed)
        self.model = Llama(cfg.model, kernels=cfg.perf.kernels).to(self.device)
        # 'none' (one process), 'ddp' or 'fsdp' (coqat.train.distributed, coqat.train.fsdp)
        self.strategy = resolve_strategy(
            cfg.dist.strategy, param_counts(cfg.model).total, self.dist.world,
            _device_memory(self.device),
        )  # fmt: skip
        self.sharded = self.strategy == "fsdp"
        if self.sharded:
            from coqat.train.fsdp import device_mesh, shard_model

            mesh = device_mesh(self.dist, self.device)
            self.model = shard_model(
                self.model, mesh, cfg.dist.param_dtype, self._block_compile_options()
            )
        self.clock = Clock(lambda: self.info.setdefault("timing", {}),
                           torch.cuda.synchronize if self.cuda else None)
        self._params: list[torch.nn.Parameter] | None = None
        self.quantized = False
        self.step = 0
        self.optimizer = self._make_optimizer()
        self.info: dict[str, Any] = {}  # partial results carried in checkpoints
        self.wall = {"fp": 0.0, "qat": 0.0, "eval": 0.0}
        self.last_eval_tokens = 0
        if cfg.device != "cpu" and self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.runner = StepRunner(self, rows_for_rank(cfg.optim.batch_size, self.dist))

    # ----------------------------------------------------------------------------- pieces
    @property
    def quant_config(self):
        from coqat.quant.config import QuantConfig

        q = self.cfg.qat
        return QuantConfig(
            bits=q.bits, granularity=q.granularity, group_size=q.group_size, embed_bits=q.embed_bits
        )

    def _param_groups(self) -> list[dict[str, Any]]:
        decay, no_decay, scales = [], [], []
        for name, p in self.model.named_parameters():
            if "weight_quantizer" in name:
                scales.append(p)
            elif p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        # quantizer scales share the no-decay group (same settings; one group less per step)
        return [
            {"params": decay, "weight_decay": self.cfg.optim.weight_decay, "name": "decay"},
            {"params": no_decay + scales, "weight_decay": 0.0, "name": "no_decay"},
        ]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return torch.optim.AdamW(
            self._param_groups(),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            fused=self.cuda,
        )

    def _block_compile_options(self) -> dict[str, Any] | None:
        """Sharded models compile block by block (coqat.train.fsdp); CUDA graphs do not mix
        with FSDP's collectives between blocks, so reduce-overhead compiles as default."""
        if not self.use_compile:
            return None
        mode = self.cfg.compile_mode
        return compile_options("default" if mode == "reduce-overhead" else mode)

    def _quantize_sharded(self, carry: bool) -> None:
        """FSDP: rebuild the sharded model with quantizers (``coqat.train.fsdp``), moving the
        weights' AdamW moments over when ``carry``."""
        from coqat.train.fsdp import move_optimizer_state, with_quantizers

        old_model, old_opt = self.model, self.optimizer
        self.model = with_quantizers(
            old_model, self.quant_config, self.cfg.dist.param_dtype, self._block_compile_options()
        )
        self.quantized = True
        self._params = None
        self.runner.reset()
        self.optimizer = self._make_optimizer()
        if carry:
            move_optimizer_state(old_model, old_opt, self.model, self.optimizer)

    def enter_qat(self) -> None:
        """Attach fake quantizers (alpha initialised from the current weights)."""
        from coqat.quant import prepare

        if self.sharded:
            return self._quantize_sharded(self.cfg.qat.carry_optimizer and self.step > 0)
        prepare(self.model, self.quant_config)
        self.quantized = True
        self._params = None
        self.runner.reset()
        if self.cfg.qat.carry_optimizer and self.step > 0:
            scales = [p for n, p in self.model.named_parameters() if "weight_quantizer" in n]
            group = next(g for g in self.optimizer.param_groups if g["name"] == "no_decay")
            group["params"].extend(scales)  # new parameters: their AdamW moments start empty
        else:
            self.optimizer = self._make_optimizer()

    def loss_fn(self):
        if self.use_compile and not self.sharded:  # sharded: blocks compiled one by one
            return compiled_forward_loss(self.cfg.compile_mode)
        return _forward_loss

    def _to_device(self, arr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(arr)
        if self.cuda:
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------- steps
    def _trainable(self) -> list[torch.nn.Parameter]:
        """The model's parameters as a list, cached: walking the module tree every step costs
        host time that a small model's GPU step cannot hide. ``_params = None`` wherever
        quantizers are attached (the only change to the tree during a run)."""
        if self._params is None:
            self._params = list(self.model.parameters())
        return self._params

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step on batch ``self.step``: (loss, gradient norm, learning rate); the
        first two are device tensors (reading them waits for the GPU). ``coqat.train.step``
        says how the step runs."""
        lr = self.cfg.optim.lr * lr_multiplier(self.cfg, self.plan, self.step)
        total, gnorm = self.runner.step(self, self.step, lr)
        self.step += 1
        return total, gnorm, lr

    def _update(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, clipping and AdamW on this process's rows ``xy`` (int64
        ``[rows, seq_len + 1]`` on the device) at the optimizer's current learning rate."""
        cfg = self.cfg
        micro = min(cfg.optim.micro, len(xy))
        n_micro = len(xy) // micro
        fn = self.loss_fn()
        total = torch.zeros((), device=self.device)
        for i in range(n_micro):
            t = xy[i * micro : (i + 1) * micro]
            x, y = t[:, :-1], t[:, 1:]
            with self._autocast():
                loss = fn(self.model, x, y)
            (loss / n_micro).backward()
            total += loss.detach() / n_micro
        params = self._trainable()
        if self.dist.enabled:
            average_gradients(params, self.dist)
            total = all_reduce_sum(total, self.dist) / self.dist.world
        if cfg.optim.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            gnorm = torch.zeros((), device=self.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, gnorm

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> float:
        """Mean validation loss over the fixed validation windows (``cfg.val_tokens``); the
        number of target tokens it read is left in ``last_eval_tokens``."""
        from coqat.data import validation_windows

        t0 = self.clock.begin()
        model = model if model is not None else self.model
        fn = _eager_forward_loss  # evaluation is cheap, a compile per phase is not
        total, count = 0.0, 0
        windows = validation_windows(
            self.val_ds, self.cfg.model.seq_len, self.cfg.val_tokens, self.cfg.optim.micro
        )
        # a sharded model's forward is a collective: every rank runs as many batches
        for arr, counted in rank_share(windows, self.dist, lockstep=model is self.model and
                                       self.sharded):
            x, y = self._to_device(arr)
            with self._autocast():
                loss = fn(model, x, y)
            if not counted:
                continue
            n = y.numel()
            total += float(loss) * n
            count += n
        if self.dist.enabled:
            t = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            total, count = all_reduce_sum(t, self.dist).tolist()
        self.clock.end("eval", t0)
        self.last_eval_tokens = int(count)
        return total / count

    def evaluate_ptq(self) -> float:
        """Loss of the current (FP) model after round-to-nearest post-training quantization."""
        import copy

        from coqat.quant import ptq

        if self.sharded:
            from coqat.train.fsdp import plain_copy

            clone = plain_copy(self.model)  # every rank gets the whole model
        else:
            clone = copy.deepcopy(self.model)
        ptq(clone, self.quant_config)
        loss = self.evaluate(clone)
        del clone
        return loss

    # ----------------------------------------------------------------------------- state
    def _progress_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the model and the optimizer."""
        return {
            "format": 1,
            "config_hash": config_hash(self.cfg),
            "step": self.step,
            "quantized": self.quantized,
            "sampler": self.sampler.state_dict() | {"position": self.step},
            "rng": rng_state(),
            "info": dict(self.info),
            "wall": dict(self.wall),
        }

    def state_dict(self) -> dict[str, Any]:
        """A one-file checkpoint (one process, DDP); sharded runs save with :meth:`save`."""
        return self._progress_state() | {
            "model": self.model.state_dict(),
            "optimizer": self.runner.optimizer_state(self.optimizer),
        }

    def load_state_dict(self, sd: dict[str, Any], *, as_branch: bool = False) -> None:
        from coqat.quant import load_state_dict_checked

        if sd.get("quantized") and not self.quantized and self.sharded:
            self._quantize_sharded(carry=False)
        elif sd.get("quantized") and not self.quantized:
            from coqat.quant import prepare

            prepare(self.model, self.quant_config)
            self.quantized = True
            self._params = None
            self.optimizer = self._make_optimizer()
        if sd.get("sharded"):  # written by a sharded run: DCP reshards to this run's layout
            load_sharded_state(sd["sharded"], self.model, self.optimizer)
        elif self.sharded:  # a one-file checkpoint into a sharded model
            from coqat.train.fsdp import load_full_state, optimizer_state_by_name

            name = {id(p): n for n, p in self.model.named_parameters()}
            order = [name[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
            osd = optimizer_state_by_name(sd["optimizer"], order)
            load_full_state(self.model, self.optimizer, sd["model"], osd)
        else:
            load_state_dict_checked(self.model, sd["model"])
            self.optimizer.load_state_dict(sd["optimizer"])
        self.runner.reset()
        self.step = int(sd["step"])
        set_rng_state(sd["rng"])
        if not as_branch:
            self.info = dict(sd.get("info", {}))
            self.wall = dict(sd.get("wall", self.wall))

    def save(self, path: Path) -> None:
        t0 = self.clock.begin()
        if self.sharded:  # every rank writes its shards (coqat.train.checkpoint)
            save_sharded_checkpoint(
                path, self._progress_state(), self.model, self.optimizer, self.dist
            )
        elif self.dist.main:
            save_checkpoint(path, self.state_dict())
        barrier(self.dist)
        self.clock.end("checkpoint", t0)

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The unsharded weights on rank 0 (None on other ranks); a collective when sharded."""
        if self.sharded:
            from coqat.train.fsdp import full_state_dict

            sd = full_state_dict(self.model, cpu=True)
            return sd if self.dist.main else None
        return self.model.state_dict() if self.dist.main else None

    def run_info(self) -> dict[str, Any]:
        """How the run was spread and where its time went (coqat.train.timing)."""
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
        return {
            "world_size": self.dist.world,
            "dist_strategy": self.strategy,
            **self.clock.summary(self.plan.tokens_per_step),
            "peak_memory_gib": peak,
        }


logger = logging.getLogger(__name__)


def _log_every(plan: PhasePlan) -> int:
    return max(1, min(10, plan.steps // 50 or 1))


def _timed_eval(tr: Trainer, progress: RunProgress | None, ptq: bool = False) -> float:
    """``tr.evaluate()`` (``ptq``: of the model's PTQ copy), its time kept in
    ``tr.wall['eval']``, not in the phase's."""
    if progress is not None:
        progress.eval_begin()
    t = time.perf_counter()
    loss = tr.evaluate_ptq() if ptq else tr.evaluate()
    tr.wall["eval"] = tr.wall.get("eval", 0.0) + time.perf_counter() - t
    if progress is not None:
        progress.eval_end(None if ptq else loss)
    return loss


def _run_steps(
    tr: Trainer,
    until: int,
    *,
    log: MetricsLog | None,
    phase: str,
    eval_steps: set[int],
    ckpt_steps: set[int],
    ckpt_path: Path | None,
    progress: RunProgress | None = None,
) -> None:
    """Advance ``tr`` to step ``until``, logging, evaluating and checkpointing on the way.
    ``tr.wall[phase]`` and the logged tokens/s count training time only."""
    cfg = tr.cfg
    every = _log_every(tr.plan)
    limit = cfg.divergence_factor * math.log(cfg.model.vocab_size)
    if progress is not None:
        progress.set_phase(phase)
    t0 = time.perf_counter()
    last_t, last_step = t0, tr.step
    tr.clock.start(tr.step)
    while tr.step < until:
        loss, gnorm, lr = tr.train_step()
        s = tr.step
        if s % every == 0 or s == until:
            lv = float(loss)
            tr.clock.lap(s)
            now = time.perf_counter()
            tps = (s - last_step) * tr.plan.tokens_per_step / max(now - last_t, 1e-9)
            last_t, last_step = now, s
            if not math.isfinite(lv) or lv > limit:
                tr.info["diverged_at"] = s
                tr.info["diverged_loss"] = lv
                raise Diverged(f"loss {lv} at step {s}")
            tr.info["last_train_loss"] = lv
            if log is not None:
                log.write(
                    step=s,
                    tokens=s * tr.plan.tokens_per_step,
                    phase=phase,
                    loss=lv,
                    lr=lr,
                    grad_norm=float(gnorm),
                    tokens_per_s=tps,
                )
            if progress is not None:
                progress.update(s, loss=lv)
        if s in eval_steps:
            tr.wall[phase] += time.perf_counter() - t0
            vl = _timed_eval(tr, progress)
            t0 = last_t = time.perf_counter()
            last_step = s
            if log is not None:
                log.write(step=s, tokens=s * tr.plan.tokens_per_step, phase=phase, val_loss=vl)
        if ckpt_path is not None and s in ckpt_steps and s < tr.plan.steps:
            tr.wall[phase] += time.perf_counter() - t0
            tr.save(ckpt_path)
            t0 = last_t = time.perf_counter()
            last_step = s
    tr.wall[phase] = tr.wall.get(phase, 0.0) + time.perf_counter() - t0


def _schedule_points(
    cfg: RunConfig, plan: PhasePlan, every_tokens: int, default_n: int
) -> set[int]:
    if every_tokens:
        k = max(1, every_tokens // plan.tokens_per_step)
    else:
        k = max(1, plan.steps // default_n)
    return set(range(k, plan.steps + 1, k))


# settings a resumed run may change: where the data lives, how it runs, how often it reports
RESUME_FREE = ("data.path", "data.verify", "device", "compile", "compile_mode", "eval_every",
               "checkpoint_every", "dist.strategy", "dist.param_dtype", "perf.kernels",
               "perf.batches", "perf.cuda_graph")


def _changed_fields(run_dir: Path, cfg: RunConfig) -> list[str] | None:
    """Settings of ``cfg`` (outside RESUME_FREE) that differ from ``run_dir/config.json``, as
    ``key: saved -> now``; None when the folder has no config.json."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        saved = flatten(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CoqatError(f"{path}: unreadable ({e}); train in a new folder") from None
    now = flatten(to_dict(cfg))
    missing = "(not set)"
    return [
        f"{k}: {saved.get(k, missing)!r} -> {now.get(k, missing)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in RESUME_FREE and saved.get(k, missing) != now.get(k, missing)
    ]


def _check_resume_config(run_dir: Path, cfg: RunConfig, what: str = "a checkpoint") -> None:
    """Refuse to resume ``run_dir``'s checkpoint (or return its finished result) under a
    configuration that trains differently from the one saved beside it (another fraction, a
    changed default, ...): the result would belong to neither. Settings in RESUME_FREE may
    differ."""
    changed = _changed_fields(run_dir, cfg)
    if changed:
        raise ConfigError(
            "resume",
            f"{run_dir} holds {what} of another configuration ({'; '.join(changed)}); "
            "resume with the saved settings (its config.json), train in a new folder or pass "
            "--no-resume to start over",
        )


def _finished_result(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """The saved result of the finished run in ``run_dir``, after checking that it is a run of
    ``cfg`` (config.json, else the result's config hash) on ``cfg``'s data (manifest hash)."""
    path = run_dir / "result.json"
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CoqatError(f"{path}: unreadable ({e}); delete it or pass --no-resume") from None
    what = "a finished run"
    if _changed_fields(run_dir, cfg) is None and result.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            "resume",
            f"{run_dir} holds {what} of another configuration (config hash "
            f"{result.get('config_hash')} -> {config_hash(cfg)}; its config.json is missing); "
            "train in a new folder or pass --no-resume to start over",
        )
    _check_resume_config(run_dir, cfg, what)
    prepared = cfg.data.path and (Path(cfg.data.path) / "manifest.json").exists()
    if prepared and result.get("data_hash"):
        from coqat.data import load_manifest

        now = load_manifest(cfg.data.path).data_hash
        if now != result["data_hash"]:
            raise ConfigError(
                "data.path",
                f"{run_dir} holds {what} trained on other data (data hash "
                f"{result['data_hash']}, {cfg.data.path} has {now}); train in a new folder or "
                "pass --no-resume to start over",
            )
    return result


def execute(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
    start_from: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` and return its result record (also saved as result.json).

    ``resume``: continue from ``run_dir/checkpoint.pt`` when present. ``start_from``: a trunk
    checkpoint at ``plan_phases(cfg).branch_step`` to branch from. Divergence (NaN/Inf or a loss
    above ``divergence_factor x ln(vocab)``) ends the run with status 'diverged'.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    if resume and result_path.exists():
        return _finished_result(run_dir, cfg)
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.exists():
        _check_resume_config(run_dir, cfg)
    tr = Trainer(cfg, progress=progress)
    main = tr.dist.main
    if main:
        atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    plan = tr.plan
    resumed = resume and ckpt.exists()
    if resumed:
        tr.load_state_dict(load_checkpoint(ckpt))
    elif start_from is not None:
        sd = load_checkpoint(Path(start_from), hint="delete it to have its trunk trained again")
        if int(sd["step"]) != plan.branch_step:
            raise CoqatError(
                f"start_from: checkpoint is at step {sd['step']}, the run branches at step "
                f"{plan.branch_step}"
            )
        tr.load_state_dict(sd, as_branch=True)
        tr.info["branched_from"] = str(start_from)
        tr.info["branch_step"] = plan.branch_step
    barrier(tr.dist)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=tr.step) if main else NullLog()
    evals = _eval_points(cfg, plan)
    ckpts = _schedule_points(cfg, plan, cfg.checkpoint_every, 1) if cfg.checkpoint_every else set()
    ckpts |= {plan.fp_steps}
    prog = None
    if progress and main:
        how = "resuming" if resumed else f"branching from {start_from}"
        prog = _run_progress(cfg, plan, tr.step, evals, run_dir, how)
    status = "done"
    try:
        if tr.step < plan.fp_steps:
            _run_steps(
                tr,
                plan.fp_steps,
                log=log,
                phase="fp",
                eval_steps=evals,
                ckpt_steps=ckpts,
                ckpt_path=ckpt,
                progress=prog,
            )
        if not plan.fp_only and not tr.quantized:
            if plan.fp_steps > 0 and "loss_fp" not in tr.info:
                tr.info["loss_fp"] = _timed_eval(tr, prog)
                tr.info["loss_ptq"] = _timed_eval(tr, prog, ptq=True)
                log.write(
                    step=tr.step,
                    tokens=plan.d_fp,
                    phase="fp",
                    val_loss=tr.info["loss_fp"],
                    val_loss_ptq=tr.info["loss_ptq"],
                )
            if plan.fp_steps > 0 and prog is not None:
                prog.message(
                    "FP phase done at step %d (%s tokens): val loss %.4f, after PTQ to %g bits "
                    "%.4f%s",
                    plan.fp_steps,
                    f"{plan.d_fp:,}",
                    tr.info["loss_fp"],
                    cfg.qat.bits,
                    tr.info["loss_ptq"],
                    f"; QAT for {plan.qat_steps} steps" if plan.qat_steps else "",
                )
            if plan.qat_steps > 0:
                tr.enter_qat()
        if tr.step < plan.steps:
            _run_steps(
                tr,
                plan.steps,
                log=log,
                phase="qat",
                eval_steps=evals,
                ckpt_steps=ckpts,
                ckpt_path=ckpt,
                progress=prog,
            )
        if plan.qat_steps == 0 and not plan.fp_only:
            final = tr.info["loss_fp"]  # f = 0: the FP model was evaluated before PTQ
        else:
            final = _timed_eval(tr, prog)
            log.write(
                step=tr.step,
                tokens=tr.step * plan.tokens_per_step,
                phase="qat" if tr.quantized else "fp",
                val_loss=final,
                final=True,
            )
    except Diverged:
        status = "diverged"
        final = float("nan")
    finally:
        if prog is not None:
            prog.close()
    result = _result_record(tr, status, final)
    weights = tr.final_weights() if status == "done" else None  # a collective when sharded
    if prog is not None:
        _log_result(result, run_dir)
    if not main:
        log.close()
        barrier(tr.dist)
        return result
    if status == "done":
        # keep the final weights for export; the optimizer state is no longer needed
        save_checkpoint(
            run_dir / "model.pt",
            {"model": weights, "quantized": tr.quantized, "config": to_dict(cfg)},
        )
    # result.json marks the run complete: written after the weights, before the checkpoint goes
    atomic_write_text(result_path, json.dumps(result, indent=2) + "\n")
    remove_checkpoint(ckpt)
    log.close()
    barrier(tr.dist)
    return result


def _eval_points(cfg: RunConfig, plan: PhasePlan) -> set[int]:
    """Steps of the intermediate evaluations: every ``eval_every`` tokens (10 a run by
    default), less the steps where the run evaluates anyway (the FP->QAT switch, the end)."""
    pts = _schedule_points(cfg, plan, cfg.eval_every, 10) - {plan.steps}
    return pts if plan.fp_only else pts - {plan.fp_steps}


def _run_progress(
    cfg: RunConfig, plan: PhasePlan, step: int, evals: set[int], run_dir: Path, how: str
) -> RunProgress:
    switch = 2 if not plan.fp_only and 0 < plan.fp_steps and step <= plan.fp_steps else 0
    final = 0 if plan.qat_steps == 0 and not plan.fp_only else 1
    n_evals = len([s for s in evals if s > step]) + switch + final
    logger.info(
        "training %s: %s tokens in %d steps (FP %d, QAT %d at %g bits), %s val tokens per "
        "evaluation%s",
        run_dir,
        f"{plan.tokens:,}",
        plan.steps,
        plan.fp_steps,
        plan.qat_steps,
        cfg.qat.bits,
        f"{cfg.val_tokens:,}",
        f"; {how} at step {step}" if step else "",
    )
    return RunProgress(plan.steps, plan.tokens_per_step, step, label="train", evals=n_evals)


def _log_result(result: dict[str, Any], run_dir: Path) -> None:
    logger.info(
        "%s %s: val loss %.4f; train %.1f s (%s tok/s), eval %.1f s",
        run_dir,
        result["status"],
        result["loss"],
        result["wall_fp"] + result["wall_qat"],
        f"{result['tokens_per_s']:,.0f}",
        result["wall_eval"],
    )


def _result_record(tr: Trainer, status: str, final: float) -> dict[str, Any]:
    cfg, plan = tr.cfg, tr.plan
    if plan.fp_only:
        loss, loss_fp, loss_ptq = final, final, float("nan")
    else:
        loss_fp = tr.info.get("loss_fp", float("nan"))
        loss_ptq = tr.info.get("loss_ptq", float("nan"))
        if plan.qat_steps == 0:  # f = 0: FP then PTQ
            loss = loss_ptq if status == "done" else float("nan")
        else:
            loss = final
    wall_total = tr.wall.get("fp", 0.0) + tr.wall.get("qat", 0.0)
    trained_tokens = (tr.step - tr.info.get("branch_step", 0)) * plan.tokens_per_step
    return {
        "status": status,
        "loss": loss,
        "loss_fp": loss_fp,
        "loss_ptq": loss_ptq,
        **run_accounting(cfg),
        "wall_fp": tr.wall.get("fp", 0.0),
        "wall_qat": tr.wall.get("qat", 0.0),
        "tokens_per_s": trained_tokens / wall_total if wall_total > 0 else float("nan"),
        **tr.run_info(),
        "device": torch.cuda.get_device_name() if tr.cuda else "cpu",
        "host": socket.gethostname(),
        "commit": git_commit(),
        "version": coqat.__version__,
        "config_hash": config_hash(cfg),
        "data_hash": tr.train_ds.data_hash,
        "train_tokens": len(tr.train_ds),
        "epochs": plan.tokens / len(tr.train_ds),
        "branched_from": tr.info.get("branched_from", ""),
        "diverged_at": tr.info.get("diverged_at"),
        "last_train_loss": tr.info.get("last_train_loss"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pid": os.getpid(),
    }


def train_trunk(
    cfg: RunConfig,
    trunk_dir: str | Path,
    branch_steps: list[int],
    *,
    progress: bool = False,
) -> dict[int, Path]:
    """Train the stable-LR FP trunk of ``cfg`` and save a checkpoint at every branch step.

    Idempotent: existing checkpoints are kept, and training resumes from the latest checkpoint
    in ``trunk_dir`` before the first missing step (also one saved for another run's branches).
    With ``checkpoint_every`` set, the trunk also saves ``trunk_dir/checkpoint.pt`` every that
    many tokens, as runs do, so a trunk killed before a branch step resumes from there.
    """
    trunk_dir = Path(trunk_dir)
    trunk_dir.mkdir(parents=True, exist_ok=True)
    tcfg = trunk_config(cfg)
    steps = sorted({int(s) for s in branch_steps if s > 0})
    paths = {s: trunk_dir / f"step_{s:08d}.pt" for s in steps}
    todo = [s for s in steps if not paths[s].exists()]
    if not todo:
        return paths
    tr = Trainer(tcfg, progress=progress)
    if tr.dist.main:
        atomic_write_text(trunk_dir / "config.json", json.dumps(to_dict(tcfg), indent=2) + "\n")
    saved = {int(p.stem.split("_")[1]): p for p in trunk_dir.glob("step_*.pt")}
    done = sorted(s for s in saved if s < todo[0])
    periodic = trunk_dir / CHECKPOINT
    sd = load_checkpoint(periodic) if periodic.exists() else None
    if sd is not None and (done and int(sd["step"]) <= done[-1] or int(sd["step"]) > todo[0]):
        sd = None  # a branch checkpoint is as far, or it is past the step needed first
    if sd is None and done:
        sd = load_checkpoint(
            saved[done[-1]], hint="delete it to train the trunk from the one before"
        )
    if sd is not None:
        tr.load_state_dict(sd)
    barrier(tr.dist)
    ckpts = (
        _schedule_points(tcfg, tr.plan, cfg.checkpoint_every, 1) if cfg.checkpoint_every else set()
    )
    log = (
        MetricsLog(trunk_dir / "metrics.jsonl", resume_step=tr.step) if tr.dist.main else NullLog()
    )
    prog = None
    if progress and tr.dist.main:
        logger.info("training the FP trunk %s to step %d (%s)", trunk_dir, todo[-1],
                    ", ".join(map(str, todo)))  # fmt: skip
        prog = RunProgress(todo[-1], tr.plan.tokens_per_step, tr.step, label="trunk")
    try:
        for s in todo:
            _run_steps(
                tr,
                s,
                log=log,
                phase="fp",
                eval_steps=set(),
                ckpt_steps=ckpts,
                ckpt_path=periodic,
                progress=prog,
            )
            tr.save(paths[s])
    finally:
        if prog is not None:
            prog.close()
        log.close()
    return paths
