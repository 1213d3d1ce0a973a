"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for one run.

The model is sharded block by block (``fully_shard`` on every transformer block, then on the root
for the embedding and the final norm): each rank holds a dim-0 shard of every parameter, of its
gradient and of its AdamW moments, and all-gathers a block's weights just before using them.
With ``torch.compile`` each block is compiled on its own (as torchtitan and torchtune do), so
FSDP's all-gather and reduce-scatter hooks run between compiled regions; the embedding, the
output projection and the loss run eagerly.

The QAT switch attaches quantizer scales: new parameters that an existing FSDP group cannot take
in. :func:`with_quantizers` therefore rebuilds the model: a copy with quantizers attached is made
on the meta device, sharded like the original and filled from it -- weights shard by shard, each
scale initialised from its full weight exactly as ``coqat.quant.prepare`` does -- and
:func:`move_optimizer_state` hands the weights' AdamW moments over by parameter name. Sharding and
the optimizer then see the scales as ordinary sharded parameters (with empty moments, as in the
single-process switch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coqat.train.distributed import DistInfo, track_mesh

PARAM_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def device_mesh(info: DistInfo, device: torch.device):
    """The one-dimensional mesh of all ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    return track_mesh(init_device_mesh(device.type, (info.world,)))


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(
    model: nn.Module, mesh, param_dtype: str = "fp32", compile_options: dict | None = None
) -> nn.Module:
    """Shard ``model`` (a ``coqat.model.llama.Llama``) in place over ``mesh``; compile each block
    first when ``compile_options`` is given. Gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[param_dtype], reduce_dtype=torch.float32)
    for block in model.layers:
        if compile_options is not None:
            block.compile(options=compile_options)
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@torch.no_grad()
def with_quantizers(
    model: nn.Module, qcfg, param_dtype: str = "fp32", compile_options: dict | None = None
) -> nn.Module:
    """A sharded copy of the sharded ``model`` with fake quantizers attached (see module doc).
    Weights and buffers are copied; every scale is initialised from its full weight."""
    from torch.distributed.tensor import distribute_tensor

    from coqat.model.llama import Llama, weight_modules
    from coqat.quant import prepare
    from coqat.quant.qat import attached_quantizers
    from coqat.quant.quantizers import make_quantizer

    mesh = next(model.parameters()).device_mesh
    device = next(model.parameters()).to_local().device
    with torch.device("meta"):
        new = Llama(model.cfg)
    prepare(new, qcfg)
    shard_model(new, mesh, param_dtype, compile_options)
    new.to_empty(device=device)
    old_params = dict(model.named_parameters())
    for name, p in new.named_parameters():
        if name in old_params:
            p.copy_(old_params[name])
    old_buffers = dict(model.named_buffers())
    for name, b in new.named_buffers():
        b.copy_(old_buffers[name])
    modules = weight_modules(new)
    for name, q in attached_quantizers(new).items():
        w = modules[name].weight.full_tensor()
        init = make_quantizer(
            q.bits, w.shape, q.granularity, q.group_size, name=name, device=w.device,
            dtype=w.dtype,
        )  # fmt: skip
        init.initialize(w)  # the scale prepare() would give this weight
        a = q.alpha
        a.copy_(distribute_tensor(init.alpha.detach(), a.device_mesh, a.placements))
    return new


def move_optimizer_state(
    old_model: nn.Module, old_opt: torch.optim.Optimizer,
    new_model: nn.Module, new_opt: torch.optim.Optimizer,
) -> None:  # fmt: skip
    """Give ``new_opt`` the per-parameter state (AdamW moments, step) that ``old_opt`` holds for
    the parameters of the same name; new parameters start empty."""
    old = dict(old_model.named_parameters())
    for name, p in new_model.named_parameters():
        q = old.get(name)
        if q is not None and q in old_opt.state:
            new_opt.state[p] = old_opt.state[q]


def full_state_dict(model: nn.Module, *, cpu: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded weights (a collective: every rank must call it). ``cpu``: gathered to rank
    0's host memory only (other ranks get an empty dict), else on every rank's device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=cpu)
    return get_model_state_dict(model, options=opts)


def plain_copy(model: nn.Module) -> nn.Module:
    """An unsharded copy of a sharded ``model`` on every rank's device (a collective)."""
    from coqat.model.llama import Llama
    from coqat.quant import load_state_dict_checked

    sd = full_state_dict(model)
    with torch.device("meta"):  # no initialisation: draws no random numbers
        clone = Llama(model.cfg)
    clone.to_empty(device=next(iter(sd.values())).device)
    load_state_dict_checked(clone, sd)
    with torch.no_grad():
        buffers = dict(model.named_buffers())
        for name, b in clone.named_buffers():
            b.copy_(buffers[name])
    return clone


def optimizer_state_by_name(
    osd: dict[str, Any], names: list[str]
) -> dict[str, Any]:
    """A single-process optimizer state dict (parameters numbered in group order) keyed by
    parameter name instead, ``names`` listing the parameters in that order."""
    ids = [i for g in osd["param_groups"] for i in g["params"]]
    if len(ids) != len(names):
        from coqat.errors import ConfigError

        raise ConfigError(
            "checkpoint",
            f"the optimizer state holds {len(ids)} parameters, the model {len(names)}",
        )
    fqn = dict(zip(ids, names, strict=True))
    groups = [dict(g, params=[fqn[i] for i in g["params"]]) for g in osd["param_groups"]]
    return {"state": {fqn[i]: v for i, v in osd["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd_by_name: dict
) -> None:
    """Load unsharded (single-process) model and optimizer state into the sharded ``model``:
    every rank holds the full state and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from coqat.quant.qat import _strip_compile_prefix

    set_state_dict(
        model, optimizer, model_state_dict=_strip_compile_prefix(model_sd),
        optim_state_dict=optim_sd_by_name, options=StateDictOptions(full_state_dict=True),
    )  # fmt: skip
