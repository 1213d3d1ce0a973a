"""coqat.quant export: int32 packing layout, lossless re-encoding, export -> load_export
bit-exactness in every format, sizes, file modes and checksums."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from coqat.errors import ConfigError
from coqat.model.config import ModelConfig, param_counts
from coqat.model.llama import Llama
from coqat.quant import (
    ALLOWED_BITS,
    QuantConfig,
    attached_quantizers,
    convert,
    encoding,
    export,
    load_export,
    pack_int32,
    prepare,
    quantizer_parameters,
    reencode,
    storage_bits,
    unpack_int32,
)
from coqat.quant.hf import coqat_module, hf_module

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=512, seq_len=16)


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


# ------------------------------------------------------------------------------- re-encode ----
def _prepared(bits, gran="row", seed=0, **kw):
    torch.manual_seed(seed)
    m = Llama(TINY)
    qcfg = QuantConfig(bits=bits, granularity=gran, group_size=16, **kw)
    prepare(m, qcfg)
    with torch.no_grad():  # trained-looking scales, not just the init
        for p in quantizer_parameters(m):
            p.mul_(torch.empty_like(p).uniform_(0.7, 1.1))
    return m, qcfg


# coqat bits -> (code map, scale map, smallest int width): the table of docs/quant.md
ENCODINGS = {
    1.0: ("q = 2r + 1", "alpha", 2),
    1.58: ("q = r", "alpha / 1.5", 2),
    2.0: ("q = 2r + 1", "alpha / 4", 3),
    **{float(b): ("q = r", "alpha", b) for b in range(3, 9)},
}


@pytest.mark.parametrize("gran", ["row", "group"])
@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_reencode_is_lossless_on_the_standard_int_grid(bits, gran):
    m, _ = _prepared(bits, gran)
    for name, q in attached_quantizers(m).items():
        w = dict(m.named_modules())[name].weight
        codes, scale, n = reencode(q, w)
        enc = encoding(q)
        assert (enc.code, enc.scale, enc.min_bits) == ENCODINGS[q.bits] and n == enc.min_bits
        assert int(codes.min()) >= -(2 ** (n - 1)) and int(codes.max()) <= 2 ** (n - 1) - 1
        if q.bits in (1.0, 2.0):  # odd codes only: the half-integer grid, doubled
            assert bool((codes % 2 != 0).all())
        out_f, in_f = q.weight_shape
        # compressed-tensors' dequantization: code in the scale's dtype times the scale
        g = scale.shape[1]
        deq = (codes.reshape(out_f, g, -1).to(scale.dtype) * scale.unsqueeze(-1)).reshape(w.shape)
        assert torch.equal(deq, q(w.detach()))  # bit for bit, not approximately
    wider = reencode(q, w, num_bits=8)
    assert torch.equal(wider[0], codes) and wider[2] == 8
    if n > 1:
        with pytest.raises(ConfigError, match="pack_bits"):
            reencode(q, w, num_bits=n - 1)


def test_hf_names_are_a_bijection():
    mapped = list(dict.fromkeys(k.rpartition(".")[0] for k in Llama(TINY).state_dict()))
    hf = [hf_module(n) for n in mapped]
    assert len(set(hf)) == len(mapped) == 2 + 2 * 9
    assert [coqat_module(h) for h in hf] == mapped
    assert hf_module("layers.1.mlp.w1") == "model.layers.1.mlp.gate_proj"
    assert hf_module("layers.0.mlp_norm") == "model.layers.0.post_attention_layernorm"
    with pytest.raises(ConfigError):
        coqat_module("lm_head")


# ---------------------------------------------------------------------------------- export ----
CASES = [(b, f, None) for b in ALLOWED_BITS for f in ("coqat", "compressed-tensors")] + [
    (b, "hf", torch.float32) for b in (2.0, 4.0)
]


@pytest.mark.parametrize("bits,fmt,dtype", CASES)
def test_export_roundtrip_exact(tmp_path, tiny_data, bits, fmt, dtype):
    m, qcfg = _prepared(bits, gran="group" if bits in (2.0, 5.0) else "row")
    tok = tiny_data / "tokenizer.json"
    out = export(m, tmp_path / "exp", TINY, qcfg, format=fmt, dtype=dtype,
                 tokenizer_json=tok, meta={"run": {"x": 1}})  # fmt: skip
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "generation_config.json",
    }  # fmt: skip
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    idx, tgt = _batch()
    m2, info = load_export(out)
    with torch.no_grad():
        assert torch.equal(m2(idx), m(idx))
        assert torch.equal(m2(idx, tgt), m(idx, tgt))
    assert info["quant_config"] == qcfg and info["meta"]["run"] == {"x": 1}
    assert info["format"] == fmt and info["meta"]["format"] == fmt
    assert info["model_config"] == TINY and info["tokenizer_json"].read_bytes() == tok.read_bytes()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["hidden_size"] == 32
    rec = cfg["coqat"]["files"]["model.safetensors"]
    assert rec["bytes"] == (out / "model.safetensors").stat().st_size and len(rec["sha256"]) == 64
    tc = json.loads((out / "tokenizer_config.json").read_text())
    gc = json.loads((out / "generation_config.json").read_text())
    assert tc["eos_token"] == "<|endoftext|>" and tc["model_max_length"] == TINY.seq_len
    assert gc["eos_token_id"] == 0  # the data's end-of-text id
    qc = cfg.get("quantization_config")
    if fmt == "coqat":
        assert cfg["model_type"] == "coqat_llama" and qc["quant_method"] == "coqat"
        wq = qc["layers"]["layers.0.attn.wq"]
        assert wq["bits"] == bits and wq["storage_bits"] == storage_bits(bits)
        assert wq["grid"] == {1.0: "sign", 1.58: "seq", 2.0: "seq"}.get(bits, "lsq")
        assert qc["layers"]["embed"]["bits"] == max(bits, 4.0)
    else:
        assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["eos_token_id"] == cfg["bos_token_id"] == 0
        assert cfg["rope_parameters"]["rope_theta"] == TINY.rope_theta
        assert cfg["intermediate_size"] == TINY.hidden and cfg["head_dim"] == TINY.head_dim
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys and not any("lm_head" in k for k in keys)
    if fmt == "compressed-tensors":
        assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
        assert qc["quantization_status"] == "compressed" and qc["ignore"] == ["lm_head"]
        w = qc["config_groups"]["group_0"]["weights"]
        assert w["num_bits"] == ENCODINGS[bits][2] and w["type"] == "int" and w["symmetric"]
        gran = "group" if bits in (2.0, 5.0) else "channel"
        assert w["strategy"] == gran and w["group_size"] == (16 if gran == "group" else None)
        assert "model.layers.0.self_attn.q_proj.weight_packed" in keys
    if fmt == "hf":
        assert qc is None and cfg["dtype"] == "float32"
    # the converted model agrees too (prepare -> convert == prepare -> export -> load)
    convert(m)
    with torch.no_grad():
        assert torch.equal(m2(idx), m(idx))


def test_export_hf_bfloat16_and_pack_bits(tmp_path):
    m, qcfg = _prepared(2.0)
    out = export(m, tmp_path / "bf16", TINY, qcfg, format="hf")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert w.dtype == torch.bfloat16
    m2, _ = load_export(out)
    idx, tgt = _batch()
    with torch.no_grad():
        assert float(m2(idx, tgt)) == pytest.approx(float(m(idx, tgt)), abs=0.05)
    out4 = export(m, tmp_path / "int4", TINY, qcfg, pack_bits=4)
    cfg = json.loads((out4 / "config.json").read_text())
    assert cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    assert cfg["coqat"]["storage"]["encoding"]["int_bits"] == 4
    m4, _ = load_export(out4)
    with torch.no_grad():
        assert torch.equal(m4(idx), m(idx))
    with pytest.raises(ConfigError, match="pack_bits"):
        export(m, tmp_path / "bad", TINY, qcfg, pack_bits=2)
    with pytest.raises(ConfigError, match="pack_bits"):
        export(m, tmp_path / "bad", TINY, qcfg, format="hf", pack_bits=4)
    with pytest.raises(ConfigError, match="dtype"):
        export(m, tmp_path / "bad", TINY, qcfg, dtype=torch.float16)
    with pytest.raises(ConfigError, match="format"):
        export(m, tmp_path / "bad", TINY, qcfg, format="gguf")
    assert not (tmp_path / "bad").exists()  # a failed export leaves nothing behind


def test_export_packed_sizes_scale_with_bits(tmp_path):
    n_linear = param_counts(TINY).linear
    linear_bytes, file_bytes = {}, {}
    for bits in ALLOWED_BITS:
        m, qcfg = _prepared(bits, embed_bits="fp")
        out = export(m, tmp_path / f"b{bits}", TINY, qcfg, format="coqat")
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            linear_bytes[bits] = sum(
                f.get_tensor(k).numel() * 4
                for k in f.keys()  # noqa: SIM118
                if k.endswith("weight_packed")
            )
        file_bytes[bits] = (out / "model.safetensors").stat().st_size
        _, info = load_export(out)
        assert sum(info["packed_bytes"].values()) == linear_bytes[bits]
        assert info["meta"]["storage"]["linear_bytes"] == linear_bytes[bits]
    for bits in ALLOWED_BITS:  # all in_features are multiples of 32: exact
        assert linear_bytes[bits] == n_linear * storage_bits(bits) / 8
    sizes = [file_bytes[b] for b in ALLOWED_BITS]
    assert sizes == sorted(sizes) and file_bytes[1.58] == file_bytes[2.0]
    assert linear_bytes[8.0] / linear_bytes[1.0] == 8
    # the file grows by exactly the packed-code bytes (up to the safetensors JSON header)
    for bits in ALLOWED_BITS:
        grow = file_bytes[bits] - file_bytes[1.0]
        assert abs(grow - (linear_bytes[bits] - linear_bytes[1.0])) < 256


def test_export_storage_accounting_compressed_tensors(tmp_path):
    m, qcfg = _prepared(2.0)
    out = export(m, tmp_path / "ct", TINY, qcfg)
    st = json.loads((out / "config.json").read_text())["coqat"]["storage"]
    pc = param_counts(TINY)
    assert st["linear_bytes"] == pc.linear * 3 / 8  # 2-bit SEQ as int3 codes
    assert st["embedding_bytes"] == pc.embedding * 4  # dequantized, float32
    assert "dequantized" in st["embedding"] and "4 bits" in st["embedding"]
    assert st["encoding"] == {"bits": "2", "grid": "seq", "code": "q = 2r + 1",
                              "scale": "alpha / 4", "min_int_bits": 3, "int_bits": 3}  # fmt: skip


def test_export_embed_fp_and_errors(tmp_path):
    m, qcfg = _prepared(4, embed_bits="fp")
    out = export(m, tmp_path / "e", qcfg=qcfg, format="coqat")
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


@pytest.mark.parametrize("fmt", ["compressed-tensors", "coqat"])
def test_same_size_corruption_is_caught_on_load(tmp_path, fmt):
    m, qcfg = _prepared(4)
    out = export(m, tmp_path / "e", TINY, qcfg, format=fmt)
    st = out / "model.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-3] ^= 0x10  # one bit of a tensor's payload: same size, still a valid file
    os.chmod(st, 0o644)
    st.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="model.safetensors: sha256 does not match"):
        load_export(out)
    load_export(out, verify=False)  # the file itself still parses: only the checksum knows
    st.write_bytes(bytes(blob[:-8]))
    with pytest.raises(ConfigError, match="model.safetensors: size does not match"):
        load_export(out)


def test_edited_config_is_an_error_not_a_traceback(tmp_path):
    m, qcfg = _prepared(2.0)
    out = export(m, tmp_path / "e", TINY, qcfg)
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="weight_packed"):
        load_export(out)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: invalid JSON"):
        load_export(out)


def test_export_folder_is_replaced_whole_or_refused(tmp_path):
    m, qcfg = _prepared(4)
    out = export(m, tmp_path / "e", TINY, qcfg, format="hf", dtype=torch.float32)
    (out / "stale.txt").write_text("from an earlier export")
    export(m, out, TINY, qcfg)  # an earlier export is replaced as a whole
    assert (
        not (out / "stale.txt").exists() and load_export(out)[1]["format"] == "compressed-tensors"
    )
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export(m, other, TINY, qcfg)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
