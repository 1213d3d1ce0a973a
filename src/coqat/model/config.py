"""Model configuration, the named size ladder, parameter counts and FLOPs per token.

Pure Python (no torch), so the planner and the sweep planner can count parameters and FLOPs
without a GPU stack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from coqat.config import check


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-2-like decoder: RMSNorm, RoPE, SwiGLU, no biases, tied embeddings."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 8192
    seq_len: int = 512
    ffn_hidden: int = 0  # 0: SwiGLU default, 8/3*d rounded up to a multiple of ffn_multiple
    ffn_multiple: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check(self.d_model > 0, "model.d_model", f"must be > 0, got {self.d_model}")
        check(self.n_layers > 0, "model.n_layers", f"must be > 0, got {self.n_layers}")
        check(self.n_heads > 0, "model.n_heads", f"must be > 0, got {self.n_heads}")
        check(
            self.d_model % self.n_heads == 0,
            "model.n_heads",
            f"must divide d_model={self.d_model}, got {self.n_heads}",
        )
        check(
            (self.d_model // self.n_heads) % 2 == 0,
            "model.n_heads",
            f"head dim d_model/n_heads must be even for rotary embeddings, got "
            f"{self.d_model // self.n_heads}",
        )
        check(self.vocab_size > 1, "model.vocab_size", f"must be > 1, got {self.vocab_size}")
        check(self.seq_len > 0, "model.seq_len", f"must be > 0, got {self.seq_len}")
        check(self.ffn_hidden >= 0, "model.ffn_hidden", "must be >= 0 (0 = default 8/3*d)")
        check(self.ffn_multiple > 0, "model.ffn_multiple", "must be > 0")
        check(self.init_std > 0, "model.init_std", "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        """SwiGLU hidden width."""
        if self.ffn_hidden:
            return self.ffn_hidden
        h = int(8 * self.d_model / 3)
        m = self.ffn_multiple
        return (h + m - 1) // m * m


# d_model, n_layers, n_heads. Names follow the rough parameter count at vocab 8192. From 300m on
# the ladder spans the paper's range (86M-2.2B; its exact shapes are not published) in steps of
# about 2x with Llama-2's proportions: head dim 64 up to d_model 1024 (as below 300m), 128 above
# (Llama-2's); depth so that d_model / n_layers stays in 40-95 (GPT-2 medium 43, Llama-2 7B 128);
# widths from 1536 on are multiples of 512 (tensor-core friendly); SwiGLU hidden 8/3 d.
LADDER: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "2m": (128, 4, 4),
    "4m": (192, 5, 4),
    "7m": (256, 6, 4),
    "12m": (320, 7, 5),
    "17m": (384, 8, 6),
    "30m": (512, 8, 8),
    "50m": (576, 11, 9),
    "90m": (768, 12, 12),
    "150m": (896, 16, 14),
    "300m": (1024, 24, 16),
    "600m": (1536, 20, 12),
    "1.2b": (2048, 24, 16),
    "2.2b": (2560, 28, 20),
}


def ladder(name: str, **overrides) -> ModelConfig:
    """ModelConfig of a named ladder size (``coqat.model.LADDER``)."""
    check(name in LADDER, "model.size", f"unknown size {name!r}; choose one of {list(LADDER)}")
    d, n_layers, n_heads = LADDER[name]
    return replace(ModelConfig(d_model=d, n_layers=n_layers, n_heads=n_heads), **overrides)


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts of a ModelConfig (tied embeddings counted once)."""

    total: int
    embedding: int
    non_embedding: int
    linear: int  # the block linears (what QAT quantizes at B bits)
    norm: int

    def model_bytes(self, bits: float, embed_bits: float | None = None) -> float:
        """Weight bytes with block linears at ``bits`` and the embedding at ``embed_bits``
        (default max(bits, 4); ``16`` for bf16); norms stay at 16 bits."""
        eb = max(bits, 4.0) if embed_bits is None else embed_bits
        return (self.linear * bits + self.embedding * eb + self.norm * 16) / 8


def param_counts(cfg: ModelConfig) -> ParamCounts:
    d, h = cfg.d_model, cfg.hidden
    per_layer_linear = 4 * d * d + 3 * d * h
    linear = cfg.n_layers * per_layer_linear
    norm = cfg.n_layers * 2 * d + d
    embedding = cfg.vocab_size * d
    return ParamCounts(
        total=linear + norm + embedding,
        embedding=embedding,
        non_embedding=linear + norm,
        linear=linear,
        norm=norm,
    )


def flops_per_token(cfg: ModelConfig, training: bool = True) -> float:
    """Model FLOPs per token: 6*N_matmul + attention (training) or a third of it (forward).

    N_matmul counts the block linears and the (tied) output projection, which is a matmul on
    every token; the input embedding lookup is not a matmul. Attention adds 6*L*T*d for the
    QK^T and AV products of a causal model (12*L*T*d halved for causality), the convention of
    PaLM's appendix B with causal masking, as in torchtitan.
    """
    pc = param_counts(cfg)
    n_matmul = pc.linear + pc.embedding
    fwd_bwd = 6 * n_matmul + 6 * cfg.n_layers * cfg.seq_len * cfg.d_model
    return float(fwd_bwd if training else fwd_bwd / 3)
