"""Attach / bake / count fake quantizers on a ``coqat.model.llama.Llama`` (torchao-style flow).

``prepare(model, qcfg)`` puts a quantizer in every ``weight_quantizer`` slot (block ``Linear`` at
``qcfg.bits``, the tied ``Embedding`` at ``qcfg.resolved_embed_bits`` unless "fp") and
initialises the scales from the current weights; ``convert(model)`` writes the fake-quantized
weights into ``.weight`` and removes the quantizers; ``ptq(model, qcfg)`` = prepare + convert
(RTN with min-max scales, no training).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from coqat.errors import ConfigError
from coqat.model.llama import Embedding, Linear, weight_modules
from coqat.quant.config import QuantConfig
from coqat.quant.quantizers import WeightQuantizer, _groups, make_quantizer


def _plan(model: nn.Module, qcfg: QuantConfig) -> list[tuple[str, nn.Module, float]]:
    """(name, module, bits) of every slot to quantize; validates group sizes first."""
    plan = []
    for name, m in weight_modules(model).items():
        if isinstance(m, Embedding):
            bits = qcfg.resolved_embed_bits
        elif isinstance(m, Linear):
            bits = qcfg.bits if qcfg.quantize_blocks else None
        else:  # pragma: no cover - weight_modules only lists the two
            continue
        if bits is None:
            continue
        _groups(m.weight.shape[1], qcfg.granularity, qcfg.group_size, name)
        plan.append((name, m, bits))
    return plan


def attached_quantizers(model: nn.Module) -> dict[str, WeightQuantizer]:
    """Attached quantizers by module name."""
    out = {}
    for name, m in weight_modules(model).items():
        q = getattr(m, "weight_quantizer", None)
        if isinstance(q, WeightQuantizer):
            out[name] = q
    return out


def is_prepared(model: nn.Module) -> bool:
    return bool(attached_quantizers(model))


def prepare(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """Attach and initialise fake quantizers in place; returns ``model``.

    Scales live on the weight's device with the weight's dtype (keep float32 master weights).
    Raises ConfigError for a group size that does not divide a layer's in_features (before
    touching anything) or if the model is already prepared.
    """
    if is_prepared(model):
        raise ConfigError("quant", "model is already prepared; convert() it or start from FP")
    for name, m, bits in _plan(model, qcfg):
        w = m.weight
        q = make_quantizer(
            bits, w.shape, qcfg.granularity, qcfg.group_size, name=name,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        q.initialize(w)
        m.weight_quantizer = q
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Bake fake-quantized weights into ``.weight`` and drop the quantizers (in place).

    Uses the quantizer's own forward, so the converted model's logits equal the prepared
    model's exactly.
    """
    for name, q in attached_quantizers(model).items():
        m = weight_modules(model)[name]
        m.weight.copy_(q(m.weight))
        m.weight_quantizer = None
    return model


def ptq(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """Post-training RTN: min-max scales (= QAT init), weights replaced, no quantizers left."""
    return convert(prepare(model, qcfg))


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scales (for the optimizer's no-weight-decay group, as in ParetoQ)."""
    return [q.alpha for q in attached_quantizers(model).values()]


def quantized_param_count(model: nn.Module) -> int:
    """Number of weight elements that pass through a quantizer."""
    return sum(q.weight_shape[0] * q.weight_shape[1] for q in attached_quantizers(model).values())


def model_bytes(model: nn.Module, qcfg: QuantConfig, *, packed: bool = False) -> float:
    """Weight bytes under ``qcfg``: codes at B bits + one 16-bit scale per row/group for every
    quantized matrix; all other parameters at 16 bits. The tied embedding counts once.

    ``packed=True`` counts the on-disk code width instead (ternary stored in 2 bits).
    Computed from ``qcfg`` and shapes, so it works on prepared and unprepared models.
    """
    from coqat.quant.config import storage_bits

    quantized: dict[int, float] = {}
    for _name, m, bits in _plan(model, qcfg):
        out_f, in_f = m.weight.shape
        g = _groups(in_f, qcfg.granularity, qcfg.group_size)
        b = storage_bits(bits) if packed else bits
        quantized[id(m.weight)] = out_f * in_f * b / 8 + out_f * g * 2
    total = 0.0
    for p in _model_params(model):
        total += quantized.get(id(p), p.numel() * 2.0)
    return total


def _model_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters except the quantizer scales (counted with their matrices)."""
    skip = {id(p) for p in quantizer_parameters(model)}
    return [p for p in model.parameters() if id(p) not in skip]


def _strip_compile_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pre = "_orig_mod."
    return {(k[len(pre) :] if k.startswith(pre) else k): v for k, v in sd.items()}


def load_state_dict_checked(
    model: nn.Module, sd: Mapping[str, torch.Tensor], *, strict: bool = True
) -> None:
    """``model.load_state_dict(sd)`` with errors that name the tensor and both shapes.

    Accepts state dicts saved from a ``torch.compile``-d model (``_orig_mod.`` prefix).
    Missing or unexpected keys (e.g. quantizer scales loaded into an FP model) and shape
    mismatches raise ConfigError("checkpoint", ...).
    """
    sd = _strip_compile_prefix(sd)
    own = _strip_compile_prefix(model.state_dict())
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise ConfigError(
                "checkpoint",
                f"tensor {k!r} has shape {tuple(v.shape)} in the checkpoint but "
                f"{tuple(own[k].shape)} in the model (different model size or quant config?)",
            )
    if strict:
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            hint = ""
            if any(".weight_quantizer." in k for k in missing + unexpected):
                hint = (
                    "; quantizer scales differ: prepare() the model with the checkpoint's "
                    "quant config before loading (or load FP weights before prepare())"
                )
            raise ConfigError(
                "checkpoint",
                f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}{hint}",
            )
    target = model._orig_mod if hasattr(model, "_orig_mod") else model
    target.load_state_dict(sd, strict=strict)
