"""Hugging Face Llama folders: tensor names, config.json, compressed-tensors pack-quantized
weights, and reading them back into coqat's ``Llama``.

Two formats share the names and the config:

* ``compressed-tensors``: every quantized block linear as ``<module>.weight_packed`` (int32,
  compressed-tensors' dense little-endian packing along the input dimension, the layout of
  :mod:`coqat.quant.pack`), ``.weight_scale`` (``[out, G]``, the quantizer's dtype) and
  ``.weight_shape``; codes re-encoded losslessly on the symmetric int grid
  (:mod:`coqat.quant.int_grid`). ``quantization_config`` follows compressed-tensors' schema.
* ``hf``: the dequantized (fake-quantized) weights as a dense checkpoint in ``dtype``.

The tied embedding is written dequantized in both (standard stacks do not quantize it), and
the LM head is the embedding (``tie_word_embeddings``). transformers' ``LlamaForCausalLM`` then
computes what coqat's ``Llama`` computes: same RMSNorm, half-split RoPE, SwiGLU, no biases.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from coqat.errors import ConfigError
from coqat.model.config import ModelConfig
from coqat.model.llama import Llama
from coqat.quant.int_grid import encoding, reencode
from coqat.quant.pack import pack_int32, unpack_int32
from coqat.quant.quantizers import WeightQuantizer

FORMATS = ("compressed-tensors", "hf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# coqat module suffix inside a block -> Hugging Face Llama suffix
_BLOCK = {
    "attn.wq": "self_attn.q_proj",
    "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj",
    "attn.wo": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w3": "mlp.up_proj",
    "mlp.w2": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}
_TOP = {"embed": "model.embed_tokens", "norm": "model.norm"}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_TOP_INV = {v: k for k, v in _TOP.items()}
_COQAT_RE = re.compile(r"layers\.(\d+)\.(.+)")
_HF_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def hf_module(name: str) -> str:
    """Hugging Face Llama module name of a coqat module (``layers.0.attn.wq`` ->
    ``model.layers.0.self_attn.q_proj``)."""
    if name in _TOP:
        return _TOP[name]
    m = _COQAT_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}"
    raise ConfigError("export", f"module {name!r} has no Hugging Face Llama name")


def coqat_module(name: str) -> str:
    """Inverse of :func:`hf_module`."""
    if name in _TOP_INV:
        return _TOP_INV[name]
    m = _HF_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK_INV:
        return f"layers.{m.group(1)}.{_BLOCK_INV[m.group(2)]}"
    raise ConfigError("export", f"tensor module {name!r} is not part of a coqat Llama")


def llama_config(
    cfg: ModelConfig, dtype: torch.dtype, eos_id: int | None, bos_id: int | None
) -> dict[str, Any]:
    """config.json fields of a ``LlamaForCausalLM`` that computes exactly what ``Llama(cfg)``
    computes (``rope_theta`` is written both flat, for transformers 4 and vLLM, and as
    ``rope_parameters``, for transformers 5)."""
    name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_cache": True,
        "dtype": name,
        "torch_dtype": name,  # the key transformers 4 and vLLM read
    }


def tokenizer_config(eot: str, eot_id: int, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json beside coqat's byte-level BPE ``tokenizer.json``: the end-of-text
    token is eos, bos and pad (documents were separated by it in training; nothing is added
    when encoding), and ``model_max_length`` is the trained context."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "pad_token": eot,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {
            str(eot_id): {
                "content": eot,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
    }


def generation_config(eot_id: int) -> dict[str, Any]:
    """generation_config.json: stop at end-of-text and pad with it."""
    return {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}


def _weights_args(q: WeightQuantizer, num_bits: int) -> dict[str, Any]:
    group = q.granularity == "group"
    return {
        "num_bits": num_bits,
        "type": "int",
        "symmetric": True,
        "strategy": "group" if group else "channel",
        "group_size": q.group_size if group else None,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
    }


def ct_quantization_config(weights: dict[str, Any]) -> dict[str, Any]:
    """compressed-tensors' ``quantization_config``: one weight-only group over every Linear but
    the (tied, unquantized) LM head."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def hf_tensors(
    model: Llama,
    quantizers: dict[str, WeightQuantizer],
    fmt: str,
    *,
    pack_bits: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any], torch.dtype]:
    """``(tensors, quantization_config, accounting, dtype)`` of a prepared model in format
    ``fmt`` (see the module docstring). ``pack_bits``: int width of the packed codes
    (compressed-tensors; default the smallest lossless one). ``dtype``: of the dense tensors
    (``hf``; default bfloat16). Block linears are the only packed modules; the embedding is
    dequantized."""
    if fmt not in FORMATS:
        raise ConfigError("export.format", f"{fmt!r} is not one of {list(FORMATS)}")
    from coqat.model.llama import Linear, weight_modules

    mods = weight_modules(model)
    packed = {n: q for n, q in quantizers.items() if isinstance(mods[n], Linear)}
    if fmt == "hf":
        if pack_bits is not None:
            raise ConfigError("export.pack_bits", "applies to the compressed-tensors format only")
        dtype = dtype or torch.bfloat16
    elif dtype is not None:
        raise ConfigError("export.dtype", "applies to the hf format only (compressed-tensors "
                          "keeps the trained dtype, so its weights stay exact)")  # fmt: skip
    tensors: dict[str, torch.Tensor] = {}
    acc = {"linear_bytes": 0, "scale_bytes": 0, "embedding_bytes": 0, "other_bytes": 0}
    args: dict[tuple, dict[str, Any]] = {}
    with torch.no_grad():
        for name, m in mods.items():
            hf = hf_module(name)
            q = quantizers.get(name)
            if fmt == "compressed-tensors" and name in packed:
                codes, scale, n = reencode(q, m.weight, pack_bits, name)
                p = pack_int32(codes.cpu(), n)
                tensors[f"{hf}.weight_packed"] = p
                tensors[f"{hf}.weight_scale"] = scale.cpu()
                tensors[f"{hf}.weight_shape"] = torch.tensor(q.weight_shape, dtype=torch.int64)
                acc["linear_bytes"] += p.numel() * p.element_size()
                acc["scale_bytes"] += scale.numel() * scale.element_size()
                a = _weights_args(q, n)
                args[tuple(sorted((k, str(v)) for k, v in a.items()))] = a
                continue
            w = (q(m.weight) if q is not None else m.weight).detach().cpu()
            w = w.to(dtype or w.dtype).contiguous()
            tensors[f"{hf}.weight"] = w
            key = "embedding_bytes" if name == "embed" else "linear_bytes"
            acc[key] += w.numel() * w.element_size()
        for k, v in model.state_dict().items():  # norms (everything that is not a weight slot)
            mod, _, leaf = k.rpartition(".")
            if mod in mods or ".weight_quantizer" in k:
                continue
            v = v.detach().cpu().to(dtype or v.dtype).contiguous()
            tensors[f"{hf_module(mod)}.{leaf}"] = v
            acc["other_bytes"] += v.numel() * v.element_size()
    if len(args) > 1:  # pragma: no cover - coqat quantizes every block linear alike
        raise ConfigError("export", f"block linears are quantized in {len(args)} different ways")
    qc = ct_quantization_config(next(iter(args.values()))) if args else None
    out_dtype = dtype or tensors["model.embed_tokens.weight"].dtype
    acc["dtype"] = str(out_dtype).removeprefix("torch.")
    if packed and fmt == "compressed-tensors":
        q0 = next(iter(packed.values()))
        acc["encoding"] = encoding(q0).row() | {"int_bits": next(iter(args.values()))["num_bits"]}
    return tensors, qc, acc, out_dtype


def load_hf_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], where: str):
    """State dict of a coqat ``Llama`` from a ``compressed-tensors`` or ``hf`` folder's tensors:
    packed codes are unpacked and dequantized as compressed-tensors does (``code * scale`` in
    the scale's dtype, per group), names mapped back. Returns ``(state, packed_bytes)``."""
    qc = config.get("quantization_config")
    wargs = None
    if qc is not None:
        if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != "pack-quantized":
            raise ConfigError("export", f"{where}: quantization_config is not compressed-tensors "
                              "pack-quantized")  # fmt: skip
        groups = qc.get("config_groups") or {}
        if len(groups) != 1:
            raise ConfigError("export", f"{where}: expected one config group, got {len(groups)}")
        wargs = next(iter(groups.values()))["weights"]
    state: dict[str, torch.Tensor] = {}
    packed_bytes: dict[str, int] = {}
    for key, v in tensors.items():
        mod, _, leaf = key.rpartition(".")
        name = coqat_module(mod)
        if leaf == "weight_packed":
            if wargs is None:
                raise ConfigError("export", f"{where}: packed tensor {key} without a "
                                  "quantization_config")  # fmt: skip
            need = [f"{mod}.weight_scale", f"{mod}.weight_shape"]
            if any(k not in tensors for k in need):
                raise ConfigError("export", f"{where}: {key} comes without {need}")
            scale, shape = (tensors[k] for k in need)
            out_f, in_f = (int(s) for s in shape.tolist())
            try:
                codes = unpack_int32(v, int(wargs["num_bits"]), in_f)
            except ValueError as e:
                raise ConfigError("export", f"{where}: {key}: {e}") from None
            g = scale.shape[1]
            w = codes.reshape(out_f, g, in_f // g).to(scale.dtype) * scale.unsqueeze(-1)
            state[f"{name}.weight"] = w.reshape(out_f, in_f)
            packed_bytes[name] = v.numel() * v.element_size()
        elif leaf in ("weight_scale", "weight_shape"):
            continue
        else:
            state[f"{name}.{leaf}"] = v
    return state, packed_bytes
