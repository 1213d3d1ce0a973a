"""Output projection + cross-entropy in chunks of tokens, without keeping the logits.

``F.cross_entropy(F.linear(h, w).float(), y)`` keeps the ``[n, V]`` logits for the backward pass
(at 131,072 tokens and V = 8192: 1.07G values, 2 GiB in bf16 plus fp32 copies), and the backward
reads them again. :func:`linear_cross_entropy` computes, chunk by chunk of tokens, the loss *and*
its gradients in the forward pass -- ``g = (softmax(h w^T) - onehot(y)) / n``, then ``g w`` and
``g^T h`` -- and keeps only those (``[n, d]`` and ``[V, d]``); the backward multiplies them by the
incoming gradient. Same mathematics as the plain path: in fp32 the same numbers up to summation
order. Under bf16 autocast the logits and ``g`` are rounded to bf16 as in the plain path; the
weight gradient is summed over chunks in fp32 (the plain path rounds the whole sum to bf16 once).

Written in plain torch operations inside an ``autograd.Function`` that dynamo traces whole (no
hand-written kernel, no graph break): under ``torch.compile`` inductor fuses the softmax, the
one-hot subtraction, the scaling and the cast of each chunk into one kernel between the matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: logits per chunk (V x tokens): 2^26 = 128 MiB of bf16 logits, 8,192 tokens at V = 8192
CHUNK_LOGITS = 1 << 26


def chunk_tokens(vocab_size: int, chunk_logits: int | None = None) -> int:
    """Tokens per chunk for a vocabulary of ``vocab_size`` (``CHUNK_LOGITS`` logits by default)."""
    return max(1, (chunk_logits or CHUNK_LOGITS) // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, y, chunk: int, dtype: torch.dtype):
        n, vocab = h.shape[0], w.shape[0]
        wc = w.to(dtype)
        classes = torch.arange(vocab, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        grad_h = []
        for s in range(0, n, chunk):
            hs, ys = h[s : s + chunk], y[s : s + chunk, None]
            logits = (hs @ wc.t()).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total = total + (lse - logits.gather(1, ys)).sum()
            p = torch.exp(logits - lse)
            g = (torch.where(classes == ys, p - 1.0, p) / n).to(dtype)
            grad_h.append(g @ wc)
            grad_w = grad_w + (g.t() @ hs).float()
        ctx.save_for_backward(torch.cat(grad_h), grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out, None, None, None


def linear_cross_entropy(
    h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ w.T`` against ``y`` (``h [..., d]``, ``w [V, d]``, ``y [...]``
    class indices), equal to ``F.cross_entropy(F.linear(h, w).float().flatten(0, -2),
    y.flatten())``. Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would.
    Without gradients to compute it is that plain expression (nothing to save)."""
    d = h.shape[-1]
    h2, y2 = h.reshape(-1, d), y.reshape(-1)
    if not (torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)):
        return F.cross_entropy(F.linear(h2, w).float(), y2)
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    chunk = chunk or chunk_tokens(w.shape[0])
    return _LinearCrossEntropy.apply(h2.to(dtype), w, y2, chunk, dtype)
