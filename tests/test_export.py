"""coqat.quant export: int32 packing layout and export -> load_export bit-exactness and size."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coqat.errors import ConfigError
from coqat.model.config import ModelConfig, param_counts
from coqat.model.llama import Llama
from coqat.quant import (
    ALLOWED_BITS,
    QuantConfig,
    convert,
    export,
    load_export,
    pack_int32,
    prepare,
    quantizer_parameters,
    storage_bits,
    unpack_int32,
)

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16)


def _batch(cfg=TINY):
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    return idx, torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)


# ------------------------------------------------------------------------------------ pack ----
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cols", [1, 7, 32, 37, 128])
def test_pack_roundtrip(bits, cols):
    g = torch.Generator().manual_seed(bits * 100 + cols)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
    codes = torch.randint(lo, hi, (5, cols), generator=g).to(torch.int8)
    packed = pack_int32(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (5, math.ceil(cols * bits / 32))
    assert torch.equal(unpack_int32(packed, bits, cols), codes)


def test_pack_layout_matches_compressed_tensors():
    # 4 bits: u = code + 8 = 0..7, element j at bits [4j, 4j+4) of one int32
    codes = torch.arange(-8, 0, dtype=torch.int8).view(1, 8)
    exp = sum(j << (4 * j) for j in range(8))
    assert pack_int32(codes, 4).tolist() == [[exp]]
    # top bit set -> negative int32 (two's complement view)
    assert pack_int32(torch.full((1, 8), 7, dtype=torch.int8), 4).tolist() == [[-1]]
    # 3 bits: dense stream, element 10 straddles words 0 and 1 (bits 30..32)
    codes = torch.zeros(1, 11, dtype=torch.int8) - 4  # u = 0
    codes[0, 10] = 3  # u = 7 = 0b111
    p = pack_int32(codes, 3)
    assert p.shape == (1, 2)
    assert (int(p[0, 0]) & 0xFFFFFFFF) == (0b11 << 30) and int(p[0, 1]) == 0b1


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_int32(torch.tensor([[2]], dtype=torch.int8), 2)


# ---------------------------------------------------------------------------------- export ----
def _prepared(bits, gran="row", seed=0, **kw):
    torch.manual_seed(seed)
    m = Llama(TINY)
    qcfg = QuantConfig(bits=bits, granularity=gran, group_size=16, **kw)
    prepare(m, qcfg)
    with torch.no_grad():  # trained-looking scales, not just the init
        for p in quantizer_parameters(m):
            p.mul_(torch.empty_like(p).uniform_(0.7, 1.1))
    return m, qcfg


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_export_roundtrip_exact(tmp_path, bits):
    m, qcfg = _prepared(bits, gran="group" if bits in (2.0, 5.0) else "row")
    tok = tmp_path / "tok.json"
    tok.write_text('{"model": {}}')
    out = export(m, tmp_path / "exp", TINY, qcfg, tokenizer_json=tok, extra={"run": "x"})
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                               "tokenizer.json"}  # fmt: skip
    idx, tgt = _batch()
    m2, info = load_export(out)
    with torch.no_grad():
        assert torch.equal(m2(idx), m(idx))
        assert torch.equal(m2(idx, tgt), m(idx, tgt))
    assert info["quant_config"] == qcfg and info["extra"] == {"run": "x"}
    assert info["model_config"] == TINY and info["tokenizer_json"].read_text() == tok.read_text()
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["format"] == "pack-quantized"
    wq = qc["layers"]["layers.0.attn.wq"]
    assert wq["bits"] == bits and wq["storage_bits"] == storage_bits(bits)
    assert wq["grid"] == {1.0: "sign", 1.58: "seq", 2.0: "seq"}.get(bits, "lsq")
    assert qc["layers"]["embed"]["bits"] == max(bits, 4.0)
    assert cfg["hidden_size"] == 32 and cfg["tie_word_embeddings"] is True
    # the converted model agrees too (prepare -> convert == prepare -> export -> load)
    convert(m)
    with torch.no_grad():
        assert torch.equal(m2(idx), m(idx))


def test_export_packed_sizes_scale_with_bits(tmp_path):
    from safetensors import safe_open

    n_linear = param_counts(TINY).linear
    linear_bytes, file_bytes = {}, {}
    for bits in ALLOWED_BITS:
        m, qcfg = _prepared(bits, embed_bits="fp")
        out = export(m, tmp_path / f"b{bits}", TINY, qcfg)
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            linear_bytes[bits] = sum(
                f.get_tensor(k).numel() * 4
                for k in f.keys()  # noqa: SIM118
                if k.endswith("weight_packed")
            )
        file_bytes[bits] = (out / "model.safetensors").stat().st_size
        _, info = load_export(out)
        assert sum(info["packed_bytes"].values()) == linear_bytes[bits]
    for bits in ALLOWED_BITS:  # all in_features are multiples of 32: exact
        assert linear_bytes[bits] == n_linear * storage_bits(bits) / 8
    sizes = [file_bytes[b] for b in ALLOWED_BITS]
    assert sizes == sorted(sizes) and file_bytes[1.58] == file_bytes[2.0]
    assert linear_bytes[8.0] / linear_bytes[1.0] == 8
    # the file grows by exactly the packed-code bytes (up to the safetensors JSON header)
    for bits in ALLOWED_BITS:
        grow = file_bytes[bits] - file_bytes[1.0]
        assert abs(grow - (linear_bytes[bits] - linear_bytes[1.0])) < 256


def test_export_embed_fp_and_errors(tmp_path):
    m, qcfg = _prepared(4, embed_bits="fp")
    out = export(m, tmp_path / "e", qcfg=qcfg)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["ignore"] == ["embed"]
    m2, _ = load_export(out)
    idx, _ = _batch()
    with torch.no_grad():
        assert torch.equal(m2(idx), m(idx))
    with pytest.raises(ConfigError, match="no quantizers"):
        export(Llama(TINY), tmp_path / "fp")
    with pytest.raises(ConfigError, match="export"):
        export(m, tmp_path / "bad", TINY, QuantConfig(bits=2, embed_bits="fp"))
    with pytest.raises(ConfigError, match="not found"):
        load_export(tmp_path / "missing")
