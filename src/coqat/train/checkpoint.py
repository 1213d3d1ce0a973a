"""Checkpoints: model, optimizer, step, phase, RNG states and partial results, written atomically.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder, flushed
and fsync'ed, then renamed over the target, so a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file. It holds tensors, numbers, strings and containers
only, and is loaded with ``weights_only=True`` (no arbitrary objects unpickled); an unreadable
file raises :class:`~coqat.errors.CoqatError` naming it.

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
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        keys = n["keys"].numpy().astype(np.uint32)
        n = (n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)  # a tuple with an ndarray in checkpoints of older versions
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


# what checkpoints written before the RNG state was stored as tensors need besides weights
_NUMPY_GLOBALS = [
    (getattr(np, "_core", None) or np.core).multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: the MT19937 key array's dtype
]


def load_checkpoint(path: Path, hint: str = "delete it, or pass --no-resume to start over") -> dict:
    """Load a checkpoint (``weights_only=True``); CoqatError naming the file, with ``hint``, when
    it is missing, truncated or not a checkpoint."""
    from coqat.errors import CoqatError

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CoqatError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError...
        raise CoqatError(f"{path}: not a readable checkpoint ({_why(e)}); {hint}") from None
    if not isinstance(sd, dict):
        raise CoqatError(f"{path}: not a coqat checkpoint (a {type(sd).__name__}); {hint}")
    if sd.get("sharded"):  # a sharded checkpoint: its folder's full path (load_sharded_state)
        sd["sharded"] = str(path.parent / sd["sharded"])
    return sd


def _why(e: Exception) -> str:
    """torch's load error in a few words."""
    text = str(e)
    if "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data: not a coqat checkpoint"
    if "central directory" in text or isinstance(e, EOFError):
        return "truncated"
    first = text.split(". ")[0].splitlines()[0] if text else type(e).__name__
    return f"corrupt or truncated: {first[:120]}"


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
        return load_checkpoint(path).get("sharded")
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
