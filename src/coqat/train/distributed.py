"""Data parallelism for one run across processes (``torchrun``), NCCL on CUDA and gloo on CPU.

Every rank draws the same global batch (a pure function of the seed and the step) and trains on
its contiguous share of the rows; gradients are averaged with one coalesced all-reduce per step,
so the update equals the single-process update up to floating-point summation order. Evaluation
windows are split across ranks and the loss sums all-reduced. Only rank 0 writes files.

Gradients are reduced explicitly rather than through a DDP wrapper because QAT attaches new
parameters (quantizer scales) mid-run; an explicit reduction needs no re-wrapping and composes
with ``torch.compile``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def rows_for_rank(n_rows: int, info: DistInfo) -> slice:
    """This rank's contiguous share of a global batch of ``n_rows`` sequences."""
    if n_rows % info.world:
        from coqat.errors import ConfigError

        raise ConfigError(
            "optim.batch_size",
            f"{n_rows} sequences do not split evenly over {info.world} processes",
        )
    per = n_rows // info.world
    return slice(info.rank * per, (info.rank + 1) * per)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over ranks with one flat all-reduce."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
