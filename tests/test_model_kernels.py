"""The fused kernels path (chunked linear + cross-entropy, concatenated q/k/v and gate/up) computes
the plain path's loss and gradients: fp32 to ~1e-6 relative, bf16 autocast to bf16 rounding, and
it compiles as one graph."""

import copy

import pytest
import torch
import torch.nn.functional as F

from coqat.model import ladder
from coqat.model.llama import Llama
from coqat.model.loss import chunk_tokens, linear_cross_entropy


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _inputs(n=300, d=24, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(vocab, d, generator=g) * 0.3).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, w, y


@pytest.mark.parametrize("chunk", [None, 64, 77, 1000])
def test_linear_cross_entropy_matches_plain_fp32(chunk):
    h, w, y = _inputs()
    ref = F.cross_entropy(F.linear(h, w).float(), y)
    gh_ref, gw_ref = torch.autograd.grad(ref * 0.7, (h, w))
    loss = linear_cross_entropy(h, w, y, chunk)
    gh, gw = torch.autograd.grad(loss * 0.7, (h, w))  # an upstream gradient other than 1
    assert abs(loss.item() - ref.item()) <= 1e-6 * ref.item()
    assert _rel(gh, gh_ref) < 1e-5 and _rel(gw, gw_ref) < 1e-5
    assert gh.dtype == h.dtype and gw.dtype == w.dtype


def test_linear_cross_entropy_shapes_and_no_grad():
    h, w, y = _inputs(n=2 * 3 * 5)
    h3, y3 = h.detach().view(2, 15, -1), y.view(2, 15)
    with torch.no_grad():  # nothing to differentiate: exactly the plain expression
        a = linear_cross_entropy(h3, w, y3)
    b = F.cross_entropy(F.linear(h3, w).float().view(-1, w.shape[0]), y3.reshape(-1))
    assert torch.equal(a, b)
    assert chunk_tokens(8192) == 8192 and chunk_tokens(10**9) == 1


def test_linear_cross_entropy_bf16_autocast():
    """Under autocast the matmuls run in bf16 like F.linear's; the gradients agree with the plain
    path's to bf16 rounding (the weight gradient is summed in fp32 here)."""
    h, w, y = _inputs(n=512, d=64, vocab=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y, chunk=100)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert abs(loss.item() - ref.item()) < 1e-3 * ref.item()
    assert _rel(gh, gh_ref) < 2e-2 and _rel(gw, gw_ref) < 2e-2
    exact = torch.autograd.grad(F.cross_entropy(F.linear(h, w), y), (h, w))  # fp32 truth
    assert _rel(gw, exact[1]) <= _rel(gw_ref, exact[1]) * 1.5  # no worse than the plain path


def _model_pair(bits=None, granularity="row"):
    cfg = ladder("tiny", vocab_size=128, seq_len=16)
    torch.manual_seed(0)
    plain = Llama(cfg)
    if bits is not None:
        from coqat.quant import prepare
        from coqat.quant.config import QuantConfig

        prepare(plain, QuantConfig(bits=bits, granularity=granularity, group_size=32))
    fused = copy.deepcopy(plain)
    fused.kernels = "fused"
    return plain, fused


@pytest.mark.parametrize("bits,granularity", [(None, "row"), (4, "row"), (2, "group"), (1, "row")])
def test_fused_model_matches_plain_fp32(bits, granularity):
    plain, fused = _model_pair(bits, granularity)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 128, (3, 16), generator=g)
    y = torch.randint(0, 128, (3, 16), generator=g)
    lp, lf = plain(x, y), fused(x, y)
    assert abs(lp.item() - lf.item()) <= 1e-6 * lp.item()
    lp.backward()
    lf.backward()
    fp = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        assert _rel(fp[name].grad, p.grad) < 1e-5, name
    with torch.no_grad():  # logits and evaluation losses too
        assert _rel(fused(x), plain(x)) < 1e-6
        assert abs(fused(x, y).item() - lp.item()) <= 1e-6 * lp.item()
    assert plain.state_dict().keys() == fused.state_dict().keys()


def test_fused_model_compiles_as_one_graph():
    """No graph break (fullgraph), forward and backward through AOT autograd, same gradients
    (4-bit QAT: the quantizers, the concatenated weights and the chunked loss in one graph)."""
    import torch._dynamo

    plain, fused = _model_pair(4)
    torch._dynamo.reset()
    fn = torch.compile(lambda m, a, b: m(a, b), fullgraph=True, backend="aot_eager")
    x = torch.randint(0, 128, (2, 16))
    y = torch.randint(0, 128, (2, 16))
    fn(fused, x, y).backward()
    plain(x, y).backward()
    fp = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        assert _rel(fp[name].grad, p.grad) < 1e-5, name
