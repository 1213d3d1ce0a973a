"""One run across processes (``torchrun``): NCCL on CUDA, gloo on CPU; DDP or FSDP2.

Every rank draws the same global batch (a pure function of the seed and the step) and trains on
its contiguous share of the rows, so the update equals the single-process update up to
floating-point summation order, whatever the strategy (``RunConfig.dist``):

* ``ddp``: every rank holds the whole model; gradients are averaged by :func:`average_gradients`,
  a bucketed all-reduce issued asynchronously after the backward pass. Gradients are reduced
  explicitly rather than through torch's DDP wrapper because QAT attaches new parameters
  (quantizer scales) mid-run, and a compiled forward/backward produces every gradient at once at
  its end, so a wrapper's per-bucket overlap with the backward pass has nothing to overlap.
* ``fsdp``: parameters, gradients and optimizer state are sharded (:mod:`coqat.train.fsdp`);
  FSDP reduce-scatters gradients itself, so :func:`average_gradients` leaves them alone.

Evaluation windows are split across ranks and the loss sums all-reduced. Only rank 0 writes files
(sharded checkpoints excepted: every rank writes its shard).
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# bytes of gradients per all-reduce call: large enough to run at NCCL's full bandwidth, small
# enough that the flat copy stays a small fraction of the model (torch DDP's default is 25 MiB)
BUCKET_BYTES = 64 << 20

# 'auto' shards when the training state would take more than this fraction of a GPU's memory
FSDP_MEMORY_FRACTION = 1 / 3
# bytes of training state per parameter: fp32 weight, gradient and two AdamW moments
TRAIN_STATE_BYTES = 16

# device meshes built over the process group (coqat.train.fsdp.device_mesh), released by
# shutdown_distributed
_MESHES: list[weakref.ref] = []


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
        # imported before the group exists: its functions' ``group=`` defaults, evaluated at
        # import (torch.distributed.checkpoint imports it), would hold the group for good
        import torch.distributed.nn  # noqa: F401

        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def track_mesh(mesh: Any) -> Any:
    """Record a device mesh built over the process group, for :func:`shutdown_distributed`."""
    _MESHES.append(weakref.ref(mesh))
    return mesh


def shutdown_distributed() -> None:
    """Leave the process group (if one was joined) and stop its threads before Python exits.

    A gloo group runs worker threads that release finished collectives; releasing one can drop
    the last reference to a tensor, which needs the GIL, and a thread that asks for the GIL
    while the interpreter finalizes is unwound through a C++ destructor: std::terminate,
    SIGABRT ("terminate called without an active exception"). ``destroy_process_group`` only
    unregisters the group; its threads stop when the group object is freed, so every reference
    to it goes first: the registries of the device meshes (torch's DTensor caches keep the
    meshes alive) and FSDP's per-module state, which sits in reference cycles."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    for ref in _MESHES:
        mesh = ref()
        if mesh is not None:
            getattr(mesh, "_pg_registry", {}).clear()
    _MESHES.clear()
    gc.collect()
    dist.destroy_process_group()  # frees the group: its threads are joined here


def resolve_strategy(
    strategy: str, n_params: int, world: int, device_memory: int | None
) -> str:
    """``none`` (one process), ``ddp`` or ``fsdp`` for ``RunConfig.dist.strategy``.

    ``auto``: ``fsdp`` when ``TRAIN_STATE_BYTES x n_params`` exceeds ``FSDP_MEMORY_FRACTION`` of
    ``device_memory`` (one GPU's bytes; None on CPU, where ``auto`` means ``ddp``)."""
    if world <= 1:
        return "none"
    if strategy != "auto":
        return strategy
    if device_memory and TRAIN_STATE_BYTES * n_params > FSDP_MEMORY_FRACTION * device_memory:
        return "fsdp"
    return "ddp"


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


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def buckets(tensors: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` in consecutive groups of at most ``bucket_bytes`` (a tensor larger
    than that is a group of its own), each of one dtype and device."""
    out: list[list[int]] = []
    size, key = 0, None
    for i, t in enumerate(tensors):
        k = (t.dtype, t.device)
        n = t.numel() * t.element_size()
        if out and k == key and size + n <= bucket_bytes:
            out[-1].append(i)
            size += n
        else:
            out.append([i])
            size, key = n, k
    return out


def average_gradients(
    params: list[torch.nn.Parameter], info: DistInfo, bucket_bytes: int = BUCKET_BYTES
) -> None:
    """Average the gradients of ``params`` over ranks: one all-reduce per bucket of
    ``bucket_bytes``, all issued before the first is waited on, so packing one bucket overlaps
    the transfer of the previous. Sharded (FSDP) gradients are already averaged: skipped."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
    if not grads:
        return
    pending = []
    for idx in buckets(grads, bucket_bytes):
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        pending.append((idx, flat, dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)))
    for idx, flat, work in pending:
        work.wait()
        flat /= info.world
        offset = 0
        for i in idx:
            g = grads[i]
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


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_share(
    batches: Iterable[Any] | Sized, info: DistInfo, *, lockstep: bool = False
) -> Iterator[tuple[Any, bool]]:
    """This rank's share of ``batches`` (batch ``i`` goes to rank ``i mod world``) as
    ``(batch, counted)`` pairs. ``lockstep``: every rank yields the same number of batches (a
    sharded model's forward is a collective), ranks with one batch fewer repeat their first with
    ``counted = False``."""
    n = len(batches)  # type: ignore[arg-type]
    first = None
    for i, b in enumerate(batches):  # type: ignore[arg-type]
        if i % info.world == info.rank:
            first = b if first is None else first
            yield b, True
        elif first is None and lockstep:
            first = b
    if lockstep and info.enabled and n % info.world and info.rank >= n % info.world:
        yield first, False
