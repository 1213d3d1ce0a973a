"""Export a prepared (fake-quantized) model as a Hugging Face-style folder with packed codes.

Folder layout::

    config.json        model config (HF names + ``coqat_model_config``) and
                       ``quantization_config`` (format "pack-quantized", per-layer grid/bits/...)
    model.safetensors  <module>.weight_packed (int32), <module>.weight_scale ([out, G], the exact
                       clamped scale the forward used, in the scale's dtype),
                       <module>.weight_shape (int64 [out, in]); unquantized tensors (norms, an FP
                       embedding) as they are
    tokenizer.json     copied when given

``load_export`` rebuilds the model and dequantizes the codes with the same expression as the
quantizer's forward, so its logits equal the prepared model's bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coqat.config import atomic_write_text, from_dict, to_dict
from coqat.errors import ConfigError
from coqat.model.config import ModelConfig
from coqat.model.llama import Llama, weight_modules
from coqat.quant.config import QuantConfig, format_bits
from coqat.quant.pack import pack_int32, unpack_int32
from coqat.quant.qat import _plan, attached_quantizers, load_state_dict_checked
from coqat.quant.quantizers import make_quantizer

FORMAT = "pack-quantized"
FORMAT_VERSION = 1
PACKING = {
    "dtype": "int32",
    "packed_dim": 1,
    "layout": "dense little-endian bitstream per row: code j at stream bits [j*b, (j+1)*b), "
    "word i = stream bits [32i, 32i+32), ceil(in*b/32) words per row (compressed-tensors "
    "pack_to_int32)",
    "offset": "unsigned = code + 2**(storage_bits-1)",
    "dequantize": "w = weight_scale[:, g] * (code + d) / k for input columns of group g",
}


def _check_consistent(model: nn.Module, qcfg: QuantConfig) -> None:
    qs = attached_quantizers(model)
    planned = {name: bits for name, _m, bits in _plan(model, qcfg)}
    if set(planned) != set(qs):
        raise ConfigError(
            "export",
            f"quantized layers {sorted(qs)} do not match the quant config's {sorted(planned)}",
        )
    for name, q in qs.items():
        same_gran = q.granularity == qcfg.granularity and (
            q.granularity == "row" or q.group_size == qcfg.group_size
        )
        if q.bits != planned[name] or not same_gran:
            raise ConfigError(
                "export", f"layer {name} is quantized as {q.extra_repr()}, not as {qcfg}"
            )


def export(
    model: nn.Module,
    out_dir: str | Path,
    model_cfg: ModelConfig | None = None,
    qcfg: QuantConfig | None = None,
    tokenizer_json: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the packed HF-style folder of a *prepared* model; returns the folder.

    ``model_cfg`` defaults to ``model.cfg``; ``qcfg`` (optional) is recorded and checked against
    the attached quantizers. For a PTQ export, ``prepare()`` the FP model (its initial scales
    are the RTN min-max scales) and export that.
    """
    model = model._orig_mod if hasattr(model, "_orig_mod") else model
    qs = attached_quantizers(model)
    if not qs:
        raise ConfigError(
            "export",
            "model has no quantizers; export a prepared model (for PTQ: prepare() the FP model "
            "and export it; converted models have lost their scales)",
        )
    cfg = model_cfg if model_cfg is not None else getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise ConfigError("export", "model_cfg is required (a coqat ModelConfig)")
    if getattr(model, "cfg", cfg) != cfg:
        raise ConfigError("export", f"model_cfg {cfg} does not match the model's {model.cfg}")
    if qcfg is not None:
        _check_consistent(model, qcfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    mods = weight_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, q in qs.items():
            w = mods[name].weight
            codes = q.codes(w)
            tensors[f"{name}.weight_packed"] = pack_int32(codes.cpu(), q.storage_bits)
            tensors[f"{name}.weight_scale"] = q.scale().cpu().contiguous()
            tensors[f"{name}.weight_shape"] = torch.tensor(q.weight_shape, dtype=torch.int64)
            layers[name] = {
                "grid": q.grid,
                "bits": q.bits,
                "storage_bits": q.storage_bits,
                "granularity": q.granularity,
                "group_size": q.group_size,
                "k": q.k,
                "d": q.d,
                "code_range": list(q.code_range),
                "levels": q.levels(),
            }
        skip = {f"{n}.weight" for n in qs} | {f"{n}.weight_quantizer.alpha" for n in qs}
        for k, v in model.state_dict().items():
            if k not in skip:
                tensors[k] = v.detach().cpu().contiguous()

    ignore = sorted(n for n in mods if n not in qs)
    bits_set = sorted({q.bits for q in qs.values()})
    config = {
        "architectures": ["CoqatLlamaForCausalLM"],
        "model_type": "coqat_llama",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "intermediate_size": cfg.hidden,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "torch_dtype": str(next(iter(qs.values())).alpha.dtype).removeprefix("torch."),
        "coqat_model_config": to_dict(cfg),
        "quantization_config": {
            "quant_method": "coqat",
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weight_bits": [format_bits(b) for b in bits_set],
            "coqat_quant_config": to_dict(qcfg) if qcfg is not None else None,
            "packing": PACKING,
            "layers": layers,
            "ignore": ignore,
        },
        "coqat_extra": extra or {},
    }

    from safetensors.torch import save_file

    tmp = out / f".model.safetensors.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "coqat_format": FORMAT})
    os.replace(tmp, out / "model.safetensors")
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    if tokenizer_json is not None:
        src = Path(tokenizer_json)
        if not src.is_file():
            raise ConfigError("export.tokenizer_json", f"file not found: {src}")
        tmp_tok = out / f".tokenizer.json.{os.getpid()}.tmp"
        shutil.copyfile(src, tmp_tok)
        os.replace(tmp_tok, out / "tokenizer.json")
    return out


def load_export(path: str | Path) -> tuple[Llama, dict[str, Any]]:
    """Rebuild a plain (unprepared) ``Llama`` from an export folder; weights are dequantized
    to exactly the fake-quantized values. Returns ``(model, info)`` with ``info`` holding
    ``model_config``, ``quant_config`` (QuantConfig or None), ``quantization_config`` (raw),
    ``extra``, ``tokenizer_json`` (path or None) and ``packed_bytes`` per layer."""
    from safetensors.torch import load_file

    d = Path(path)
    cfg_path, st_path = d / "config.json", d / "model.safetensors"
    for p in (cfg_path, st_path):
        if not p.is_file():
            raise ConfigError("export", f"{p} not found; not a coqat export folder")
    config = json.loads(cfg_path.read_text())
    qc = config.get("quantization_config") or {}
    if qc.get("format") != FORMAT or qc.get("quant_method") != "coqat":
        raise ConfigError("export", f"{cfg_path}: not a coqat {FORMAT} export")
    model_cfg = from_dict(ModelConfig, config["coqat_model_config"], prefix="model")
    tensors = load_file(str(st_path))
    model = Llama(model_cfg)
    state: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    packed_bytes: dict[str, int] = {}
    for name, layer in qc["layers"].items():
        keys = [f"{name}.weight_packed", f"{name}.weight_scale", f"{name}.weight_shape"]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise ConfigError("export", f"{st_path}: missing tensors {missing}")
        packed, scale, shape = (tensors[k] for k in keys)
        consumed.update(keys)
        shape = tuple(int(s) for s in shape.tolist())
        q = make_quantizer(
            layer["bits"], shape, layer["granularity"], layer["group_size"], name=name,
            dtype=scale.dtype,
        )  # fmt: skip
        if tuple(scale.shape) != tuple(q.alpha.shape):
            raise ConfigError(
                "export", f"{name}.weight_scale has shape {tuple(scale.shape)}, "
                f"expected {tuple(q.alpha.shape)}",
            )  # fmt: skip
        with torch.no_grad():
            q.alpha.copy_(scale)
        codes = unpack_int32(packed, int(layer["storage_bits"]), shape[1])
        state[f"{name}.weight"] = q.dequantize(codes)
        packed_bytes[name] = packed.numel() * packed.element_size()
    for k, v in tensors.items():
        if k not in consumed:
            state[k] = v
    load_state_dict_checked(model, state)
    qcfg_raw = qc.get("coqat_quant_config")
    info = {
        "model_config": model_cfg,
        "quant_config": from_dict(QuantConfig, qcfg_raw, prefix="quant") if qcfg_raw else None,
        "quantization_config": qc,
        "extra": config.get("coqat_extra", {}),
        "tokenizer_json": (d / "tokenizer.json") if (d / "tokenizer.json").is_file() else None,
        "packed_bytes": packed_bytes,
    }
    return model, info
