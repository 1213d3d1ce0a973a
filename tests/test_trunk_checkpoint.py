"""The real engine's trunks save periodic checkpoints like runs (``checkpoint_every``): a trunk
killed before its first branch step resumes from there, not from zero, and the branch still
equals the run trained alone (CPU)."""

from __future__ import annotations

import pytest
from helpers import tiny_run_config

pytest.importorskip("torch")


def test_trunk_killed_before_its_branch_resumes_from_its_periodic_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    from coqat.train import run as run_mod
    from coqat.train.phases import plan_phases

    every = 8  # steps between checkpoints
    cfg = tiny_run_config(
        tiny_data,
        **{"qat.fraction": 0.5, "checkpoint_every": 8 * 32 * every, "eval_every": 8 * 32 * 40},
    )
    plan = plan_phases(cfg)
    assert plan.branch_step == 20
    step = run_mod.Trainer.train_step
    calls: list[int] = []

    def killed_at_13(tr):
        if len(calls) == 13:
            raise KeyboardInterrupt  # a kill between checkpoints
        calls.append(1)
        return step(tr)

    monkeypatch.setattr(run_mod.Trainer, "train_step", killed_at_13)
    with pytest.raises(KeyboardInterrupt):
        run_mod.train_trunk(cfg, tmp_path / "trunk", [plan.branch_step])
    assert (tmp_path / "trunk" / "checkpoint.pt").exists()
    assert not (tmp_path / "trunk" / f"step_{plan.branch_step:08d}.pt").exists()
    calls.clear()
    monkeypatch.setattr(run_mod.Trainer, "train_step", lambda tr: calls.append(1) or step(tr))
    ckpts = run_mod.train_trunk(cfg, tmp_path / "trunk", [plan.branch_step])
    monkeypatch.undo()
    assert len(calls) == plan.branch_step - every  # resumed at step 8, not 0
    branched = run_mod.execute(cfg, tmp_path / "branched", start_from=ckpts[plan.branch_step])
    assert branched["loss"] == run_mod.execute(cfg, tmp_path / "alone")["loss"]
