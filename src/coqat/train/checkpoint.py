"""Checkpoints: model, optimizer, step, phase, RNG states and partial results, written atomically.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder, flushed
and fsync'ed, then renamed over the target, so a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file.

A sharded (FSDP) run writes its model and optimizer with ``torch.distributed.checkpoint`` (DCP):
every rank writes its shards into a folder beside the checkpoint file
(``checkpoint.pt.<step>.dcp/``), then rank 0 writes the checkpoint file itself, holding the rest
of the state and the folder's name (``"sharded"``), the same atomic way, and deletes older
folders. The file still marks the checkpoint complete. DCP reshards on load, so such a checkpoint
resumes on any number of processes, a single CPU process included
(:func:`load_sharded_state`).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state; for a sharded one, its folder's full path under ``"sharded"``
    (the model and optimizer then load with :func:`load_sharded_state`)."""
    path = Path(path)
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if sd.get("sharded"):
        sd["sharded"] = str(path.parent / sd["sharded"])
    return sd


def _shard_dirs(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.*.dcp"))


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint ``path`` and its shard folders, if any."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for d in _shard_dirs(path):
        shutil.rmtree(d, ignore_errors=True)


def save_sharded_checkpoint(
    path: Path, payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    info: Any,
) -> None:  # fmt: skip
    """Write a sharded checkpoint (see module doc). A collective: every rank calls it with the
    same ``payload`` (the state besides model and optimizer)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from coqat.train.distributed import barrier, broadcast_object

    path = Path(path)
    name = None
    if info.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        current = _current_shards(path)
        name = f"{path.name}.{int(payload['step']):08d}.dcp"
        if name == current:  # never overwrite the folder the checkpoint points at
            name = f"{path.name}.{int(payload['step']):08d}-{os.getpid()}.dcp"
        shutil.rmtree(path.parent / name, ignore_errors=True)  # a leftover of a killed save
    name = broadcast_object(name, info)
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(path.parent / name))
    if info.main:
        save_checkpoint(path, {**payload, "format": 2, "sharded": name})
        for d in _shard_dirs(path):
            if d.name != name:
                shutil.rmtree(d, ignore_errors=True)
    barrier(info)


def _current_shards(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False).get("sharded")
    except Exception:  # noqa: BLE001 - an unreadable old file: nothing to protect
        return None


def load_sharded_state(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load a sharded checkpoint's model and optimizer into ``model``/``optimizer``, sharded
    or not, on any number of processes (DCP reshards); the model must already carry the
    checkpoint's quantizers."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
