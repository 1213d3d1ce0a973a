"""The ladder to the paper's range and the paper-scale sweep file (torch-free, cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coqat.model.config import LADDER, flops_per_token, ladder, param_counts

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sweeps" / "paper-scale.yaml"


@pytest.mark.parametrize(
    "name, total",
    [("300m", 312_001_536), ("600m", 578_876_928), ("1.2b", 1_231_128_576),
     ("2.2b", 2_227_714_560)],
)
def test_large_sizes_exact_counts(name, total):
    cfg = ladder(name)
    pc = param_counts(cfg)
    assert pc.total == total  # docs/train.md's table
    # by hand: 4 d^2 (attention) + 3 d h (SwiGLU) per layer, 2 d + d norms, V d embedding
    d, h, n_layers = cfg.d_model, cfg.hidden, cfg.n_layers
    assert pc.total == n_layers * (4 * d * d + 3 * d * h + 2 * d) + d + cfg.vocab_size * d
    assert float(flops_per_token(cfg)).is_integer()


def test_ladder_names_match_counts_and_shapes_are_llama_like():
    for name, (d, n_layers, n_heads) in LADDER.items():
        if name == "tiny":
            continue
        scale = 1e9 if name.endswith("b") else 1e6
        named = float(name[:-1]) * scale
        assert 0.75 < param_counts(ladder(name)).total / named < 1.25, name
        if d >= 1536:
            assert d // n_heads == 128 and 40 <= d / n_layers <= 95, name


def test_paper_scale_sweep_plans_with_and_without_trunks():
    from coqat.sweep.spec import expand, load_spec
    from coqat.sweep.tree import plan_sweep

    runs = expand(load_spec(EXAMPLE))
    assert len(runs) == 630
    assert {r.size for r in runs} == {"90m", "150m", "300m", "600m", "1.2b", "2.2b"}
    assert {r.qat.bits for r in runs} == {1.0, 2.0, 4.0, 6.0}
    assert max(r.tokens for r in runs) < 1.5e12  # the paper's largest budget, 1.4T tokens
    shared, alone = plan_sweep(runs), plan_sweep(runs, share=False)
    assert shared.flops_independent == alone.flops_shared
    assert 0.3 < shared.summary()["saved_fraction"] < 0.5
    assert shared.seconds_shared < alone.seconds_shared
