"""The fixed-length fused decay (qat.cooldown_of = fixed) and the train-split subset
(data.train_tokens): the knobs that separate the decay and the data repetition from the QAT
fraction."""

from __future__ import annotations

import pytest
from helpers import tiny_run_config

from coqat.errors import DataError
from coqat.train.phases import lr_multiplier, plan_phases


def _lrs(cfg):
    plan = plan_phases(cfg)
    return plan, [lr_multiplier(cfg, plan, k) for k in range(plan.steps)]


@pytest.mark.parametrize("f", [0.05, 0.1, 0.15])
def test_fixed_decay_starts_in_fp_below_the_cooldown(tiny_data, f):
    over = {"qat.fraction": f, "qat.cooldown": 0.2, "tokens": 8 * 32 * 100}
    plan, lr = _lrs(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "fixed"}))
    assert plan.qat_steps == round(100 * f) and plan.fp_steps == 100 - plan.qat_steps
    # the decay is 20 steps long whatever f is, and starts in the FP phase
    assert plan.qat_cooldown_start == plan.branch_step == 80 < plan.fp_steps
    assert all(v == 1.0 for v in lr[2:80])
    tail = lr[80:]
    assert all(a > b for a, b in zip(tail, tail[1:]))
    # one linear decay through the phase switch: equal steps on both sides of it
    k = plan.fp_steps
    assert lr[k - 1] - lr[k] == pytest.approx(lr[k] - lr[k + 1], abs=1e-12)
    # the capped definition gives a shorter decay that starts at the switch
    p_tot, lr_tot = _lrs(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "total"}))
    assert p_tot.qat_cooldown_start == p_tot.fp_steps == p_tot.branch_step
    assert sum(lr_tot) > sum(lr)


@pytest.mark.parametrize("f", [0.2, 0.5, 1.0, 0.0])
def test_fixed_decay_equals_total_when_qat_holds_the_decay(tiny_data, f):
    over = {"qat.fraction": f, "qat.cooldown": 0.2, "tokens": 8 * 32 * 100}
    fixed = _lrs(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "fixed"}))
    total = _lrs(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "total"}))
    assert fixed == total


def test_fixed_decay_branch_equals_independent(tiny_data, tmp_path):
    """A run whose decay starts in FP, branched from the stable-LR trunk at its branch step,
    ends exactly where the same run trained alone ends."""
    from coqat.train.run import execute, train_trunk

    cfg = tiny_run_config(
        tiny_data, **{"qat.fraction": 0.1, "qat.cooldown_of": "fixed", "tokens": 8 * 32 * 30}
    )
    plan = plan_phases(cfg)
    assert plan.branch_step < plan.fp_steps
    alone = execute(cfg, tmp_path / "alone")
    paths = train_trunk(cfg, tmp_path / "trunk", [plan.branch_step])
    branched = execute(cfg, tmp_path / "branch", start_from=paths[plan.branch_step])
    assert branched["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert branched["loss_fp"] == pytest.approx(alone["loss_fp"], rel=1e-6)


def test_train_tokens_subset_repeats_the_data(tiny_data, tmp_path):
    from coqat.data import BatchSampler, TokenDataset
    from coqat.train.run import execute

    full = TokenDataset(tiny_data, "train")
    head = full.head(4096)
    assert len(head) == 4096 and len(full) > 4096
    s = BatchSampler(head, 8, 32, seed=0)
    for k in range(20):  # every window lies inside the subset
        b = s.batch(k)
        assert b.shape == (8, 33)
    with pytest.raises(DataError, match="train_tokens"):
        full.head(len(full) + 1)
    cfg = tiny_run_config(tiny_data, **{"data.train_tokens": 4096, "tokens": 8 * 32 * 20})
    res = execute(cfg, tmp_path / "sub")
    assert res["train_tokens"] == 4096
    assert res["epochs"] == pytest.approx(8 * 32 * 20 / 4096)
    with pytest.raises(Exception, match="data.train_tokens"):
        tiny_run_config(tiny_data, **{"data.train_tokens": -1})
