"""A Llama-2-like decoder in plain PyTorch (nanoGPT-style, readable).

Every weight matrix lives in a :class:`Linear` or the tied :class:`Embedding`. Both read their
weight through :meth:`effective_weight`, which applies ``weight_quantizer`` when one is attached:
``coqat.quant.prepare`` attaches fake quantizers there and ``coqat.quant.convert`` removes them,
so quantization never forks this file.

``Llama.kernels`` chooses how the same mathematics runs (the module tree and state dict are the
same either way): ``"plain"`` (the default, also the trainer's: ``RunConfig.perf.kernels``)
multiplies by each matrix on its own and computes the loss from full logits; ``"fused"``
concatenates the effective weights of q/k/v and of gate/up into one matmul each and computes the
loss with :func:`coqat.model.loss.linear_cross_entropy` (chunks of tokens, no logits kept).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from coqat.model.config import ModelConfig
from coqat.model.loss import linear_cross_entropy


class Linear(nn.Linear):
    """Bias-free linear layer whose weight passes through an optional ``weight_quantizer``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.weight_quantizer: nn.Module | None = None

    def effective_weight(self) -> torch.Tensor:
        q = self.weight_quantizer
        return self.weight if q is None else q(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())


class Embedding(nn.Module):
    """Token embedding tied with the output projection; same quantizer slot as Linear."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.weight_quantizer: nn.Module | None = None

    def effective_weight(self) -> torch.Tensor:
        q = self.weight_quantizer
        return self.weight if q is None else q(self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_cache(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of a [B, H, T, h] tensor (Llama's half split)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq, self.wk, self.wv, self.wo = (Linear(d, d) for _ in range(4))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fused: bool = False
    ) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        if fused:  # one matmul for q, k and v (the concatenated rows of the three weights)
            w = torch.cat([m.effective_weight() for m in (self.wq, self.wk, self.wv)])
            xq, xk, xv = F.linear(x, w).split(d, dim=-1)
        else:
            xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
        q = apply_rope(heads(xq), cos, sin)
        k = apply_rope(heads(xk), cos, sin)
        y = F.scaled_dot_product_attention(q, k, heads(xv), is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = Linear(cfg.d_model, cfg.hidden)  # gate
        self.w3 = Linear(cfg.d_model, cfg.hidden)  # up
        self.w2 = Linear(cfg.hidden, cfg.d_model)  # down

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused:  # one matmul for gate and up
            w = torch.cat([self.w1.effective_weight(), self.w3.effective_weight()])
            gate, up = F.linear(x, w).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fused: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, fused)
        return x + self.mlp(self.mlp_norm(x), fused)


class Llama(nn.Module):
    """Decoder-only LM. ``forward(idx, targets)`` returns the mean cross-entropy when targets are
    given, else the logits."""

    def __init__(self, cfg: ModelConfig, kernels: str = "plain"):
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels  # "plain" or "fused" (module doc); not part of the state dict
        self.embed = Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_cache(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2L)."""
        std = self.cfg.init_std
        nn.init.normal_(self.embed.weight, std=std)
        for name, m in self.named_modules():
            if isinstance(m, Linear):
                s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo", "w2")) else std
                nn.init.normal_(m.weight, std=s)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.shape[1]
        fused = self.kernels == "fused"
        emb = self.embed.effective_weight()
        x = F.embedding(idx, emb)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for block in self.layers:
            x = block(x, cos, sin, fused)
        h = self.norm(x)
        if targets is not None and fused:
            return linear_cross_entropy(h, emb, targets)
        logits = F.linear(h, emb)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All modules with a quantizer slot (block Linears and the tied Embedding), by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Linear | Embedding)}
