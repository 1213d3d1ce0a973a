"""torch.compile of a prepared model: traces the fake quantizers, matches eager, no recompiles."""

from __future__ import annotations

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from coqat.model.config import ModelConfig
from coqat.model.llama import Llama
from coqat.quant import QuantConfig, prepare

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16)


def _step(model, idx, tgt):
    model.zero_grad(set_to_none=True)
    loss = model(idx, tgt)
    loss.backward()
    return loss.detach()


def test_compile_matches_eager_and_does_not_recompile():
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64, (2, 16), generator=g)
    tgt = torch.randint(0, 64, (2, 16), generator=g)

    torch.manual_seed(0)
    m = prepare(Llama(TINY), QuantConfig(bits=2, granularity="group", group_size=16))
    eager_loss = _step(m, idx, tgt)
    eager_grads = {n: p.grad.clone() for n, p in m.named_parameters()}

    cm = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):  # same config twice: one graph, no recompile
            loss = _step(cm, idx, tgt)
    assert abs(loss.item() - eager_loss.item()) < 1e-5
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-5, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1

    # another bit width is one new graph (a new model instance), not a storm
    torch.manual_seed(0)
    m4 = prepare(Llama(TINY), QuantConfig(bits=4))
    cm4 = torch.compile(m4, backend="aot_eager", fullgraph=True)
    eager4 = _step(m4, idx, tgt)
    for _ in range(2):
        loss4 = _step(cm4, idx, tgt)
    assert abs(loss4.item() - eager4.item()) < 1e-5
    assert counters["stats"]["unique_graphs"] == 2
