"""The model layer: config and counts (torch-free) plus the Llama decoder (torch, lazy)."""

from coqat.model.config import (
    LADDER,
    ModelConfig,
    ParamCounts,
    flops_per_token,
    ladder,
    param_counts,
)

__all__ = ["LADDER", "ModelConfig", "ParamCounts", "flops_per_token", "ladder", "param_counts"]
