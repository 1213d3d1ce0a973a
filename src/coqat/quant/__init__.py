"""Weight quantization for QAT: ParetoQ quantizers, prepare/convert/PTQ, packed export.

``coqat.quant.config`` (``QuantConfig``, ``ALLOWED_BITS``, ...) is torch-free and imported
eagerly; everything else needs torch and is imported lazily on first attribute access, so
``from coqat.quant import QuantConfig`` works in the torch-free sweep planner.

Modules: ``config`` (QuantConfig), ``quantizers`` (ParetoQ fake quantizers, RTN), ``qat``
(prepare / convert / ptq / counting / checked state-dict loading), ``pack`` (int32 bit packing),
``exporter`` (export / load_export in the compressed-tensors, hf and coqat formats), ``hf``
(Hugging Face Llama names and configs), ``int_grid`` (lossless ParetoQ -> standard int codes),
``files`` (atomic 0644 writes, sha256 records). The implementation modules are not named
``prepare`` or ``export``: a submodule of that name would shadow the package-level function
on import.
"""

from __future__ import annotations

import importlib
from typing import Any

from coqat.quant.config import (
    ALLOWED_BITS,
    QuantConfig,
    format_bits,
    grid_for_bits,
    parse_bits,
    storage_bits,
)

_LAZY = {
    # quantizers
    "WeightQuantizer": "coqat.quant.quantizers",
    "SignQuantizer": "coqat.quant.quantizers",
    "SEQQuantizer": "coqat.quant.quantizers",
    "LSQQuantizer": "coqat.quant.quantizers",
    "MinMaxRTN": "coqat.quant.quantizers",
    "make_quantizer": "coqat.quant.quantizers",
    "ptq_quantize": "coqat.quant.quantizers",
    # prepare
    "prepare": "coqat.quant.qat",
    "convert": "coqat.quant.qat",
    "ptq": "coqat.quant.qat",
    "is_prepared": "coqat.quant.qat",
    "attached_quantizers": "coqat.quant.qat",
    "quantizer_parameters": "coqat.quant.qat",
    "quantized_param_count": "coqat.quant.qat",
    "model_bytes": "coqat.quant.qat",
    "load_state_dict_checked": "coqat.quant.qat",
    # packing / export
    "pack_int32": "coqat.quant.pack",
    "unpack_int32": "coqat.quant.pack",
    "export": "coqat.quant.exporter",
    "write_export": "coqat.quant.exporter",
    "load_export": "coqat.quant.exporter",
    "reencode": "coqat.quant.int_grid",
    "encoding": "coqat.quant.int_grid",
    "hf_module": "coqat.quant.hf",
}

__all__ = [
    "ALLOWED_BITS",
    "QuantConfig",
    "format_bits",
    "grid_for_bits",
    "parse_bits",
    "storage_bits",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'coqat.quant' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
