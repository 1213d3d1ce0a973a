"""Export a prepared (fake-quantized) model as a folder other programs load, and load it back.

Formats (``export(..., format=...)``):

* ``compressed-tensors`` (default): a Hugging Face Llama folder whose block linears are
  compressed-tensors ``pack-quantized`` int codes, re-encoded losslessly from ParetoQ's grids
  (:mod:`coqat.quant.hf`, :mod:`coqat.quant.int_grid`); transformers + compressed-tensors load it.
* ``hf``: the same folder with dense dequantized weights (bfloat16 by default).
* ``coqat``: coqat's own packed format (``model_type: coqat_llama``), which also keeps the tied
  embedding quantized. Layout::

      config.json        quantization_config = {quant_method: coqat, format: pack-quantized,
                         packing, layers: {name: {grid, bits, storage_bits, k, d, ...}}, ignore}
      model.safetensors  <module>.weight_packed (int32), <module>.weight_scale ([out, G], the
                         clamped scale the forward used), <module>.weight_shape (int64
                         [out, in]); unquantized tensors (norms, an FP embedding) as they are

Every format writes ``tokenizer.json`` + ``tokenizer_config.json`` + ``generation_config.json``
when a tokenizer is given, and ``config.json["coqat"]``: the format, the exact ``ModelConfig``
and ``QuantConfig``, the storage accounting, the sha256 of every tensor file (checked by
:func:`load_export`), and whatever the caller adds (a run's provenance). Files are 0644 and the
folder appears only when complete.

:func:`load_export` rebuilds a plain ``Llama`` whose weights equal the prepared model's
fake-quantized weights exactly (for ``hf``, up to its dtype), so its loss is the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import coqat
from coqat.config import from_dict, to_dict
from coqat.errors import ConfigError
from coqat.model.config import ModelConfig
from coqat.model.llama import Llama, weight_modules
from coqat.provenance import git_commit
from coqat.quant import files
from coqat.quant.config import QuantConfig, format_bits
from coqat.quant.pack import pack_int32, unpack_int32
from coqat.quant.qat import _plan, attached_quantizers, load_state_dict_checked
from coqat.quant.quantizers import WeightQuantizer, make_quantizer

FORMATS = ("compressed-tensors", "hf", "coqat")
FORMAT_VERSION = 2  # of the coqat metadata and of the coqat format
WEIGHTS = "model.safetensors"
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
    *,
    format: str = "compressed-tensors",
    tokenizer_json: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    pack_bits: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the export folder of a *prepared* model; returns the folder.

    ``model_cfg`` defaults to ``model.cfg``; ``qcfg`` (optional) is recorded and checked against
    the attached quantizers. For a PTQ export, ``prepare()`` the FP model (its initial scales
    are the RTN min-max scales) and export that. ``meta`` is merged into ``config.json["coqat"]``.
    ``pack_bits`` (compressed-tensors): int width of the codes, default the smallest lossless
    one (4 makes every width below 4 servable by int4 kernels). ``dtype`` (hf): of the dense
    weights, default bfloat16. ``out_dir`` must be new, empty or an earlier export (replaced).
    """
    with files.staged_folder(Path(out_dir)) as stage:
        write_export(
            model, stage, model_cfg, qcfg, format=format, tokenizer_json=tokenizer_json,
            meta=meta, pack_bits=pack_bits, dtype=dtype,
        )  # fmt: skip
    return Path(out_dir)


def write_export(
    model: nn.Module,
    folder: Path,
    model_cfg: ModelConfig | None = None,
    qcfg: QuantConfig | None = None,
    *,
    format: str = "compressed-tensors",
    tokenizer_json: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    pack_bits: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """:func:`export` into an existing folder (no staging); returns ``config.json["coqat"]``."""
    if format not in FORMATS:
        raise ConfigError("export.format", f"{format!r} is not one of {list(FORMATS)}")
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
    if format == "coqat" and (pack_bits is not None or dtype is not None):
        raise ConfigError("export", "pack_bits and dtype do not apply to the coqat format")
    eot = _tokenizer_files(folder, tokenizer_json, cfg.seq_len, cfg.vocab_size)
    eot_id = None if eot is None else eot[1]

    if format == "coqat":
        tensors, config, acc = _coqat_tensors(model, qs, cfg, qcfg)
    else:
        from coqat.quant.hf import hf_tensors, llama_config

        tensors, qc, acc, out_dtype = hf_tensors(
            model, qs, format, pack_bits=pack_bits, dtype=dtype
        )
        config = llama_config(cfg, out_dtype, eos_id=eot_id, bos_id=eot_id)
        if qc is not None:
            config["quantization_config"] = qc
    record = files.save_tensors(tensors, folder / WEIGHTS, {"format": "pt"})
    acc["file_bytes"] = record["bytes"]
    bits = sorted({q.bits for q in qs.values()})
    embed_q = qs.get("embed")
    acc["embedding"] = (
        "not quantized in training" if embed_q is None
        else f"{format_bits(embed_q.bits)}-bit codes (packed)" if format == "coqat"
        else f"trained at {format_bits(embed_q.bits)} bits, stored dequantized (standard "
        "stacks do not quantize the embedding)"
    )  # fmt: skip
    coqat_meta = {
        "format": format,
        "format_version": FORMAT_VERSION,
        "version": coqat.__version__,
        "exported": {
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "model_config": to_dict(cfg),
        "quant_config": to_dict(qcfg) if qcfg is not None else None,
        "weight_bits": [format_bits(b) for b in bits],
        "storage": acc,
        **(meta or {}),
        "files": {WEIGHTS: record},
    }
    config["coqat"] = coqat_meta
    files.write_json(folder / files.CONFIG, config)  # last: the folder is complete
    return coqat_meta


def _tokenizer_files(
    folder: Path, tokenizer_json, seq_len: int, vocab_size: int
) -> tuple[str, int] | None:
    """Copy tokenizer.json and write tokenizer_config.json + generation_config.json; returns
    ``(end-of-text token, its id)`` or None without a tokenizer."""
    if tokenizer_json is None:
        return None
    from coqat.data.tokenizer import EOT, eot_id, load_tokenizer
    from coqat.quant.hf import generation_config, tokenizer_config

    src = Path(tokenizer_json)
    if not src.is_file():
        raise ConfigError("export.tokenizer_json", f"file not found: {src}")
    tok = load_tokenizer(src)
    if tok.get_vocab_size() > vocab_size:
        raise ConfigError(
            "export.tokenizer_json",
            f"{src} has {tok.get_vocab_size()} tokens, more than the model's vocab_size "
            f"{vocab_size}",
        )
    i = eot_id(tok)
    files.copy_file(src, folder / "tokenizer.json")
    files.write_json(folder / "tokenizer_config.json", tokenizer_config(EOT, i, seq_len))
    files.write_json(folder / "generation_config.json", generation_config(i))
    return EOT, i


def _coqat_tensors(
    model: nn.Module, qs: dict[str, WeightQuantizer], cfg: ModelConfig, qcfg: QuantConfig | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    mods = weight_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    acc = {"linear_bytes": 0, "scale_bytes": 0, "embedding_bytes": 0, "other_bytes": 0}
    with torch.no_grad():
        for name, q in qs.items():
            p = pack_int32(q.codes(mods[name].weight).cpu(), q.storage_bits)
            scale = q.scale().cpu().contiguous()
            tensors[f"{name}.weight_packed"] = p
            tensors[f"{name}.weight_scale"] = scale
            tensors[f"{name}.weight_shape"] = torch.tensor(q.weight_shape, dtype=torch.int64)
            acc["embedding_bytes" if name == "embed" else "linear_bytes"] += p.numel() * 4
            acc["scale_bytes"] += scale.numel() * scale.element_size()
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
                key = "embedding_bytes" if k == "embed.weight" else "other_bytes"
                acc[key] += v.numel() * v.element_size()
    config = {
        "architectures": ["CoqatLlamaForCausalLM"],
        "model_type": "coqat_llama",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.hidden,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.seq_len,
        "tie_word_embeddings": True,
        "quantization_config": {
            "quant_method": "coqat",
            "format": "pack-quantized",
            "packing": PACKING,
            "layers": layers,
            "ignore": sorted(n for n in weight_modules(model) if n not in qs),
        },
    }
    return tensors, config, acc


def load_export(path: str | Path, *, verify: bool = True) -> tuple[Llama, dict[str, Any]]:
    """Rebuild a plain (unprepared) ``Llama`` from an export folder of any format.

    The sha256 of every tensor file is checked against ``config.json["coqat"]["files"]`` first
    (``verify=False`` skips it); a mismatch raises ConfigError naming the file. Returns
    ``(model, info)`` with ``info`` holding ``format``, ``model_config``, ``quant_config``
    (QuantConfig or None), ``meta`` (``config.json["coqat"]``), ``tokenizer_json`` (path or
    None) and ``packed_bytes`` per packed layer.
    """
    d = Path(path)
    config = files.read_config(d)
    meta = config.get("coqat")
    if not isinstance(meta, dict):
        if (config.get("quantization_config") or {}).get("quant_method") == "coqat":
            raise ConfigError("export", f"{d}: written by an older coqat (no checksums); export "
                              "the run again")  # fmt: skip
        raise ConfigError("export", f"{d / files.CONFIG}: not a coqat export (no 'coqat' key)")
    fmt = meta.get("format")
    if fmt not in FORMATS or meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError("export", f"{d / files.CONFIG}: unsupported coqat export format "
                          f"{fmt!r} version {meta.get('format_version')!r}")  # fmt: skip
    if verify:
        files.verify_files(d, meta.get("files") or {})
    model_cfg = from_dict(ModelConfig, meta["model_config"], prefix="model")
    tensors = files.load_tensors(d / WEIGHTS)
    where = str(d / WEIGHTS)
    if fmt == "coqat":
        state, packed_bytes = _load_coqat(tensors, config["quantization_config"], where)
    else:
        from coqat.quant.hf import load_hf_tensors

        state, packed_bytes = load_hf_tensors(tensors, config, where)
    model = Llama(model_cfg)
    load_state_dict_checked(model, {k: v.to(torch.float32) for k, v in state.items()})
    qraw = meta.get("quant_config")
    info = {
        "format": fmt,
        "model_config": model_cfg,
        "quant_config": from_dict(QuantConfig, qraw, prefix="quant") if qraw else None,
        "meta": meta,
        "tokenizer_json": (d / "tokenizer.json") if (d / "tokenizer.json").is_file() else None,
        "packed_bytes": packed_bytes,
    }
    return model, info


def _load_coqat(
    tensors: dict[str, torch.Tensor], qc: dict[str, Any], where: str
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    state: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    packed_bytes: dict[str, int] = {}
    for name, layer in qc["layers"].items():
        keys = [f"{name}.weight_packed", f"{name}.weight_scale", f"{name}.weight_shape"]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise ConfigError("export", f"{where}: missing tensors {missing}")
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
        try:
            codes = unpack_int32(packed, int(layer["storage_bits"]), shape[1])
        except ValueError as e:
            raise ConfigError("export", f"{where}: {name}.weight_packed: {e}") from None
        state[f"{name}.weight"] = q.dequantize(codes)
        packed_bytes[name] = packed.numel() * packed.element_size()
    for k, v in tensors.items():
        if k not in consumed:
            state[k] = v
    return state, packed_bytes
