"""coqat.quant: config, ParetoQ quantizers (levels, init, gradients), prepare/convert/PTQ."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from coqat.config import from_dict
from coqat.errors import ConfigError
from coqat.model.config import ModelConfig, param_counts
from coqat.model.llama import Embedding, Llama, weight_modules
from coqat.quant import (
    ALLOWED_BITS,
    LSQQuantizer,
    MinMaxRTN,
    QuantConfig,
    SEQQuantizer,
    SignQuantizer,
    attached_quantizers,
    convert,
    is_prepared,
    load_state_dict_checked,
    make_quantizer,
    model_bytes,
    prepare,
    ptq,
    ptq_quantize,
    quantized_param_count,
    quantizer_parameters,
)

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16)  # hidden 128

EXPECTED_LEVELS = {
    1.0: [-1.0, 1.0],
    1.58: [-2 / 3, 0.0, 2 / 3],
    2.0: [-0.75, -0.25, 0.25, 0.75],
    **{float(b): [float(v) for v in range(-(2 ** (b - 1)), 2 ** (b - 1))] for b in range(3, 9)},
}


def tiny_model(seed: int = 0, cfg: ModelConfig = TINY) -> Llama:
    torch.manual_seed(seed)
    return Llama(cfg)


def batch(cfg: ModelConfig = TINY, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    tgt = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    return idx, tgt


# ---------------------------------------------------------------------------------- config ----
def test_config_defaults_and_embed_bits():
    q = QuantConfig()
    assert (q.bits, q.granularity, q.group_size, q.embed_bits) == (4.0, "row", 128, "auto")
    assert QuantConfig(bits=2).resolved_embed_bits == 4.0
    assert QuantConfig(bits=1.58).resolved_embed_bits == 4.0
    assert QuantConfig(bits=6).resolved_embed_bits == 6.0
    assert QuantConfig(bits=2, embed_bits="fp").resolved_embed_bits is None
    assert QuantConfig(bits=2, embed_bits="8").resolved_embed_bits == 8.0
    assert QuantConfig(bits=2, embed_bits=3).embed_bits == "3"  # float/int normalised
    assert QuantConfig(bits=2, embed_bits="1.58").resolved_embed_bits == 1.58
    assert QuantConfig(bits="4").bits == 4.0
    assert [QuantConfig(bits=b).grid for b in (1, 1.58, 2, 3, 8)] == [
        "sign", "seq", "seq", "lsq", "lsq"
    ]  # fmt: skip


@pytest.mark.parametrize("bad", [0, 9, 2.5, "abc", float("nan"), True, None, 16])
def test_config_bad_bits(bad):
    with pytest.raises(ConfigError) as e:
        QuantConfig(bits=bad)
    assert e.value.field == "quant.bits" and "allowed: [1, 1.58, 2, 3" in str(e.value)


@pytest.mark.parametrize("bad", ["16", "x", 2.5, 0, ""])
def test_config_bad_embed_bits(bad):
    with pytest.raises(ConfigError) as e:
        QuantConfig(embed_bits=bad)
    assert e.value.field == "quant.embed_bits"


def test_config_other_errors_and_from_dict():
    with pytest.raises(ConfigError, match="quant.group_size"):
        QuantConfig(group_size=0)
    with pytest.raises(ConfigError, match="quant.granularity"):
        QuantConfig(granularity="tensor")
    q = from_dict(QuantConfig, {"bits": 1.58, "granularity": "group", "group_size": 64}, "quant")
    assert q.bits == 1.58 and q.group_size == 64
    with pytest.raises(ConfigError) as e:
        from_dict(QuantConfig, {"bits": "abc"}, "quant")
    assert e.value.field == "quant.bits"


def test_config_module_is_torch_free():
    code = (
        "import sys; from coqat.quant import QuantConfig; import coqat.quant.config; "
        "QuantConfig(bits=2); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ quantizers ----
@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_level_sets(bits):
    levels = EXPECTED_LEVELS[bits]
    out, n = 4, 1024
    q = make_quantizer(bits, (out, n))
    assert q.levels() == pytest.approx(levels)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([[0.5], [1.0], [2.0], [0.01]]))
    # weights sweeping beyond the clip range on both sides hit every level
    span = max(abs(levels[0]), abs(levels[-1])) + 1.0
    w = torch.linspace(-span, span, n).repeat(out, 1) * q.alpha.detach()
    y = q(w)
    ratio = y.detach().double() / q.alpha.detach().double()
    for row in ratio:
        got = sorted(set(np.round(row.numpy(), 4).tolist()))
        assert got == pytest.approx(levels, abs=1e-4)
    assert torch.equal(q.dequantize(q.codes(w)), y.detach())
    lo, hi = q.code_range
    c = q.codes(w)
    assert c.dtype == torch.int8 and int(c.min()) == lo and int(c.max()) == hi


def test_grids_and_classes():
    assert isinstance(make_quantizer(1, (2, 4)), SignQuantizer)
    assert isinstance(make_quantizer(1.58, (2, 4)), SEQQuantizer)
    assert isinstance(make_quantizer(2, (2, 4)), SEQQuantizer)
    for b in (3, 4, 5, 6, 7, 8):
        q = make_quantizer(b, (2, 4))
        assert isinstance(q, LSQQuantizer) and q.grid == "lsq" and q.bits == b
    assert make_quantizer(1, (2, 4)).grid == "sign"
    assert make_quantizer(2, (2, 4)).grid == "seq"


def test_sign_of_zero_maps_to_plus_alpha():
    q = make_quantizer(1, (1, 3))
    with torch.no_grad():
        q.alpha.fill_(0.5)
    w = torch.tensor([[0.0, -0.0, -1.0]])
    assert q(w).tolist() == [[0.5, 0.5, -0.5]]


W23 = [[0.3, -1.2, 0.05], [0.9, -0.4, 2.0]]
G23 = [[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]]


def _grads(bits, alpha, w=W23, g=G23):
    q = make_quantizer(bits, (2, 3), dtype=torch.float64)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor(alpha, dtype=torch.float64))
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = q(wt)
    y.backward(torch.tensor(g, dtype=torch.float64))
    return y.detach().numpy(), wt.grad.numpy(), q.alpha.grad.numpy().ravel()


def test_hand_gradients_sign():
    # x = w/alpha: row0 [0.6, -2.4, 0.1] (|x|<=1: 1,0,1), row1 [0.9, -0.4, 2.0] (1,1,0)
    y, gw, ga = _grads(1, [[0.5], [1.0]])
    np.testing.assert_allclose(y, [[0.5, -0.5, 0.5], [1, -1, 1]])
    np.testing.assert_allclose(gw, [[1, 0, -1], [0.5, -1, 0]])
    # sum(sign(w) * g) / sqrt(6): row0 1 - 2 - 1 = -2, row1 0.5 + 1 + 3 = 4.5
    np.testing.assert_allclose(ga, np.array([-2.0, 4.5]) / math.sqrt(6), rtol=1e-12)


def test_hand_gradients_ternary():
    # q = round(clamp(x, +-.99) * 1.5) / 1.5: row0 [2/3, -2/3, 0], row1 [2/3, -2/3, 2/3]
    y, gw, ga = _grads(1.58, [[0.5], [1.0]])
    np.testing.assert_allclose(y, [[1 / 3, -1 / 3, 0], [2 / 3, -2 / 3, 2 / 3]], rtol=1e-12)
    np.testing.assert_allclose(gw, [[1, 0, -1], [0.5, -1, 0]])
    # row0: 1*(2/3-0.6) + 2*(-1) + (-1)*(0-0.1); row1: .5*(2/3-.9) + (-1)*(-2/3+.4) + 3*1
    r0 = (2 / 3 - 0.6) - 2 + 0.1
    r1 = 0.5 * (2 / 3 - 0.9) - (-2 / 3 + 0.4) + 3
    np.testing.assert_allclose(ga, np.array([r0, r1]) / math.sqrt(6), rtol=1e-12)
    assert ga * math.sqrt(6) == pytest.approx([-1.8333333333, 3.15])


def test_hand_gradients_2bit():
    # q = (round(clamp(x, +-.99)*2 - .5) + .5)/2: row0 [.75, -.75, .25], row1 [.75, -.25, .75]
    y, gw, ga = _grads(2, [[0.5], [1.0]])
    np.testing.assert_allclose(y, [[0.375, -0.375, 0.125], [0.75, -0.25, 0.75]])
    np.testing.assert_allclose(gw, [[1, 0, -1], [0.5, -1, 0]])
    # row0: 1*(.75-.6) + 2*(-.75) + (-1)*(.25-.1) = -1.5; row1: .5*(.75-.9) - (-.25+.4) + 3*.75
    np.testing.assert_allclose(ga, np.array([-1.5, 2.025]) / math.sqrt(6), rtol=1e-12)


def test_hand_gradients_lsq4():
    # row0 alpha .5: x [0.6, -2.4, 0.1] all inside [-8, 7], round [1, -2, 0]
    # row1 alpha .1: x [9, -4, 20] -> clamp [7, -4, 7]; 9 and 20 above Qp=7
    y, gw, ga = _grads(4, [[0.5], [0.1]])
    np.testing.assert_allclose(y, [[0.5, -1.0, 0.0], [0.7, -0.4, 0.7]], rtol=1e-12)
    np.testing.assert_allclose(gw, [[1, 2, -1], [0, -1, 0]])
    # row0: 1*(1-.6) + 2*(-2+2.4) + (-1)*(0-.1) = 1.3 ; row1: .5*7 + (-1)*0 + 3*7 = 24.5
    np.testing.assert_allclose(ga, np.array([1.3, 24.5]) / math.sqrt(6 * 7), rtol=1e-9)


def paretoq_reference(w, alpha, g, bits, group_size=None):
    """numpy float64 re-statement of ParetoQ's forward/backward formulas (per row or group)."""
    out, n = w.shape
    gs = group_size or n
    w3 = w.reshape(out, n // gs, gs)
    g3 = g.reshape(out, n // gs, gs)
    a = np.maximum(alpha, 1e-5)[..., None]
    x = w3 / a
    if bits == 1:
        qn, qp = -1, 1
        s = 1 / math.sqrt(w.size)
        q = np.where(w3 >= 0, 1.0, -1.0)
        coef = q
    elif bits in (1.58, 2):
        c = 0.99
        k, d = (1.5, 0.0) if bits == 1.58 else (2.0, 0.5)
        s = 1 / math.sqrt(w.size)
        qn, qp = -c, c
        q = (np.round(np.clip(x, -c, c) * k - d) + d) / k
        top = (k - d) / k
        coef = np.where(x < -c, -top, np.where(x > c, top, q - x))
    else:
        qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = 1 / math.sqrt(w.size * qp)
        q = np.clip(np.round(x), qn, qp)
        coef = np.where(x < qn, qn, np.where(x > qp, qp, np.round(x) - x))
    mid = (x >= qn) & (x <= qp)
    return (
        (q * a).reshape(out, n),
        (mid * g3).reshape(out, n),
        (coef * g3 * s).sum(-1),
    )


@pytest.mark.parametrize("bits", ALLOWED_BITS)
@pytest.mark.parametrize("group_size", [None, 8])
def test_gradients_match_paretoq_reference(bits, group_size):
    rng = np.random.default_rng(int(bits * 100) + (group_size or 0))
    w = rng.normal(size=(6, 32))
    g = rng.normal(size=(6, 32))
    gran = "group" if group_size else "row"
    q = make_quantizer(bits, w.shape, gran, group_size or 128, dtype=torch.float64)
    q.initialize(torch.from_numpy(w))
    with torch.no_grad():  # perturb the scales so some weights fall outside the clip range
        q.alpha.mul_(torch.from_numpy(rng.uniform(0.3, 1.2, size=q.alpha.shape)))
    alpha = q.alpha.detach().numpy().copy()
    wt = torch.from_numpy(w).requires_grad_(True)
    y = q(wt)
    y.backward(torch.from_numpy(g))
    y_ref, gw_ref, ga_ref = paretoq_reference(w, alpha, g, bits, group_size)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(wt.grad.numpy(), gw_ref)
    np.testing.assert_allclose(q.alpha.grad.numpy(), ga_ref, rtol=1e-10, atol=1e-14)
    assert q.alpha.grad.shape == q.alpha.shape


def test_alpha_clamp_passes_gradient_like_paretoq():
    q = make_quantizer(4, (1, 3))
    with torch.no_grad():
        q.alpha.fill_(1e-7)
    w = torch.tensor([[1e-5, -3e-5, 2e-4]], requires_grad=True)
    y = q(w)
    assert torch.allclose(y, torch.tensor([[1e-5, -3e-5, 7e-5]]))  # alpha used = 1e-5
    y.sum().backward()
    assert q.alpha.grad is not None and q.alpha.grad.abs().item() > 0


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_alpha_init(bits):
    torch.manual_seed(0)
    w = torch.randn(5, 16)
    q = make_quantizer(bits, w.shape)
    q.initialize(w)
    a = w.abs()
    if bits == 1:
        exp = a.mean(-1, keepdim=True)
    elif bits in (1.58, 2):
        exp = a.amax(-1, keepdim=True)
    else:
        exp = a.amax(-1, keepdim=True) / (2 ** (int(bits) - 1) - 1)
    assert q.alpha.shape == (5, 1)
    torch.testing.assert_close(q.alpha.detach(), exp, rtol=0, atol=0)
    qg = make_quantizer(bits, w.shape, "group", 4)
    qg.initialize(w)
    assert qg.alpha.shape == (5, 4)
    wg = w.view(5, 4, 4).abs()
    exp_g = wg.mean(-1) if bits == 1 else wg.amax(-1)
    if bits >= 3:
        exp_g = exp_g / (2 ** (int(bits) - 1) - 1)
    torch.testing.assert_close(qg.alpha.detach(), exp_g, rtol=0, atol=0)


def test_ptq_rtn_values():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    wq = ptq_quantize(w, 4)
    scale = w.abs().amax(-1, keepdim=True) / 7
    torch.testing.assert_close(wq, torch.clamp(torch.round(w / scale), -8, 7) * scale)
    w1 = ptq_quantize(w, 1)
    torch.testing.assert_close(w1, torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(-1, True))
    w2 = MinMaxRTN(2, "group", 4)(w)
    assert w2.shape == w.shape and not w2.requires_grad
    for b in (1.58, 2):
        wt = ptq_quantize(w, b)
        ratio = (wt.double() / w.abs().amax(-1, keepdim=True).double()).flatten().tolist()
        assert all(min(abs(r - v) for v in EXPECTED_LEVELS[b]) < 1e-6 for r in ratio)


# --------------------------------------------------------------------------------- prepare ----
@pytest.mark.parametrize("gran", ["row", "group"])
@pytest.mark.parametrize("bits", [1, 1.58, 2, 4, 8])
def test_prepare_convert_parity(bits, gran):
    m = tiny_model()
    qcfg = QuantConfig(bits=bits, granularity=gran, group_size=16)
    prepare(m, qcfg)
    assert is_prepared(m)
    qs = attached_quantizers(m)
    assert len(qs) == 2 * 7 + 1
    assert qs["embed"].bits == max(float(bits), 4.0)
    assert all(q.bits == float(bits) for n, q in qs.items() if n != "embed")
    assert all(q.alpha.shape[1] == (1 if gran == "row" else q.weight_shape[1] // 16)
               for q in qs.values())  # fmt: skip
    assert len(quantizer_parameters(m)) == 15
    idx, tgt = batch()
    with torch.no_grad():
        logits = m(idx)
        loss = m(idx, tgt)
    convert(m)
    assert not is_prepared(m)
    assert all(mod.weight_quantizer is None for mod in weight_modules(m).values())
    with torch.no_grad():
        assert torch.equal(m(idx), logits)
        assert torch.equal(m(idx, tgt), loss)
    assert not any("alpha" in k for k in m.state_dict())


def test_prepare_embed_options_and_counts():
    pc = param_counts(TINY)
    m = prepare(tiny_model(), QuantConfig(bits=2, embed_bits="fp"))
    assert "embed" not in attached_quantizers(m) and len(attached_quantizers(m)) == 14
    assert quantized_param_count(m) == pc.linear
    m = prepare(tiny_model(), QuantConfig(bits=2, embed_bits="8"))
    assert attached_quantizers(m)["embed"].bits == 8.0
    assert quantized_param_count(m) == pc.linear + pc.embedding
    m = prepare(tiny_model(), QuantConfig(bits=3, quantize_blocks=False))
    assert list(attached_quantizers(m)) == ["embed"] and attached_quantizers(m)["embed"].bits == 4.0
    m = tiny_model()
    prepare(m, QuantConfig(bits=4))
    with pytest.raises(ConfigError, match="already prepared"):
        prepare(m, QuantConfig(bits=4))


def test_bad_group_size_names_layer():
    m = tiny_model()
    with pytest.raises(ConfigError) as e:
        prepare(m, QuantConfig(bits=4, granularity="group", group_size=24))
    msg = str(e.value)
    assert e.value.field == "quant.group_size"
    assert "in_features=32" in msg and "layer " in msg and "[1, 2, 4, 8, 16, 32]" in msg
    assert not is_prepared(m)  # validated before anything was attached
    with pytest.raises(ConfigError, match="in_features=32 of layer layers.0.attn.wq"):
        prepare(m, QuantConfig(bits=4, granularity="group", group_size=64, embed_bits="fp"))
    with pytest.raises(ConfigError, match="in_features=32 of layer embed"):
        prepare(m, QuantConfig(bits=4, granularity="group", group_size=64))


def test_scales_follow_weight_device_dtype():
    m = tiny_model().double()
    prepare(m, QuantConfig(bits=4))
    assert all(p.dtype == torch.float64 for p in quantizer_parameters(m))
    assert all(p.requires_grad for p in quantizer_parameters(m))


def test_model_bytes():
    pc = param_counts(TINY)
    m = tiny_model()
    for bits, gran in [(4, "row"), (2, "group"), (1.58, "row"), (8, "row")]:
        qcfg = QuantConfig(bits=bits, granularity=gran, group_size=16)
        eb = max(float(bits), 4.0)
        rows = TINY.n_layers * (4 * 32 + 2 * 128 + 32) + TINY.vocab_size  # output rows
        if gran == "group":
            scales = TINY.n_layers * (4 * 32 * 2 + 2 * 128 * 2 + 32 * 8) + TINY.vocab_size * 2
        else:
            scales = rows
        exp = (pc.linear * float(bits) + pc.embedding * eb + pc.norm * 16) / 8 + scales * 2
        assert model_bytes(m, qcfg) == pytest.approx(exp)
        assert model_bytes(prepare(tiny_model(), qcfg), qcfg) == pytest.approx(exp)
    assert model_bytes(m, QuantConfig(bits=1.58), packed=True) > model_bytes(
        m, QuantConfig(bits=1.58)
    )


def test_ptq_model():
    m = tiny_model()
    ref = tiny_model()
    prepare(ref, QuantConfig(bits=3))
    ptq(m, QuantConfig(bits=3))
    assert not is_prepared(m)
    for name, mod in weight_modules(m).items():
        bits = 4 if name == "embed" else 3  # embedding at max(B, 4)
        exp = ptq_quantize(weight_modules(tiny_model())[name].weight, bits)
        assert torch.equal(mod.weight.detach(), exp)
    idx, _ = batch()
    with torch.no_grad():
        assert torch.equal(m(idx), ref(idx))


def test_state_dict_roundtrip_and_errors():
    qcfg = QuantConfig(bits=2, granularity="group", group_size=16)
    a = prepare(tiny_model(0), qcfg)
    with torch.no_grad():
        for p in quantizer_parameters(a):
            p.mul_(1.1)
    sd = a.state_dict()
    assert any(k.endswith("weight_quantizer.alpha") for k in sd)
    b = prepare(tiny_model(5), qcfg)
    load_state_dict_checked(b, sd)
    idx, _ = batch()
    with torch.no_grad():
        assert torch.equal(a(idx), b(idx))
    # compiled-model prefix is accepted
    c = prepare(tiny_model(6), qcfg)
    load_state_dict_checked(c, {f"_orig_mod.{k}": v for k, v in sd.items()})
    # another model size
    big = prepare(tiny_model(0, ModelConfig(d_model=64, n_layers=2, n_heads=2, vocab_size=64,
                                            seq_len=16)), qcfg)  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_state_dict_checked(big, sd)
    assert e.value.field == "checkpoint" and "shape" in str(e.value) and "(64, 32)" in str(e.value)
    # other granularity: scale shapes differ
    with pytest.raises(ConfigError, match="weight_quantizer.alpha"):
        load_state_dict_checked(prepare(tiny_model(), QuantConfig(bits=2)), sd)
    # FP checkpoint into a prepared model: missing scales
    with pytest.raises(ConfigError, match="missing keys"):
        load_state_dict_checked(prepare(tiny_model(), qcfg), tiny_model().state_dict())


def test_training_step_updates_alpha():
    m = prepare(tiny_model(), QuantConfig(bits=2))
    idx, tgt = batch()
    m(idx, tgt).backward()
    for name, q in attached_quantizers(m).items():
        assert q.alpha.grad is not None and torch.isfinite(q.alpha.grad).all(), name
    assert isinstance(weight_modules(m)["embed"], Embedding)
    assert m.embed.weight.grad is not None
