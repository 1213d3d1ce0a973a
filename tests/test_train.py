"""Trainer: token accounting, schedules, exact resume, divergence, trunk branching."""

from __future__ import annotations

import json
import math

import pytest
from helpers import killed_at, tiny_run_config

from coqat.errors import ConfigError
from coqat.model import ladder, param_counts
from coqat.model.llama import Llama
from coqat.train.config import RunConfig
from coqat.train.phases import lr_multiplier, plan_phases


def test_param_counts_match_the_module():
    for name in ("tiny", "2m", "7m"):
        cfg = ladder(name, seq_len=64)
        pc = param_counts(cfg)
        model = Llama(cfg)
        assert sum(p.numel() for p in model.parameters()) == pc.total
        assert pc.total == pc.embedding + pc.non_embedding
        linear = sum(
            m.weight.numel() for n, m in model.named_modules() if type(m).__name__ == "Linear"
        )
        assert linear == pc.linear


def test_ladder_counts_recorded():
    # exact counts (vocab 8192) documented in docs/model.md
    assert param_counts(ladder("2m")).total == 1_901_696
    assert param_counts(ladder("7m")).total == 6_917_376
    assert param_counts(ladder("30m")).total == 29_893_120


@pytest.mark.parametrize("f", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_token_accounting(f):
    cfg = RunConfig(
        tokens=1000 * 32 * 512,
        qat={"fraction": f}
        and __import__("coqat.train.config", fromlist=["QATConfig"]).QATConfig(fraction=f),
    )
    plan = plan_phases(cfg)
    assert plan.d_fp + plan.d_qat == plan.tokens == 1000 * 32 * 512
    assert plan.qat_steps == round(f * 1000)
    assert abs(plan.fraction - f) <= 0.5 / 1000
    if f == 0:
        assert plan.d_qat == 0
    if f == 1:
        assert plan.d_fp == 0


def _lrs(cfg):
    plan = plan_phases(cfg)
    return plan, [lr_multiplier(cfg, plan, k) for k in range(plan.steps)]


def test_schedule_shapes(tiny_data):
    std = tiny_run_config(
        tiny_data,
        **{
            "qat.schedule": "standard",
            "qat.fraction": 0.5,
            "qat.cooldown": 0.2,
            "qat.cooldown_of": "qat",  # 20% of the QAT phase (test_qat_cooldown_of_total: total)
            "tokens": 8 * 32 * 100,
        },
    )
    plan, lr = _lrs(std)
    assert plan.fp_steps == 50
    # FP: warmup (2 steps), stable, cooldown over the last 20% of the FP phase
    assert lr[0] == 0.5 and lr[1] == 1.0
    assert lr[39] == 1.0 and lr[40] == 1.0 and lr[41] < 1.0 and lr[49] == pytest.approx(0.1)
    # QAT: rewarmup from low, stable, cooldown to ~0
    assert lr[50] < 0.6 and max(lr[50:]) == 1.0 and lr[-1] == pytest.approx(0.1)
    fused = tiny_run_config(
        tiny_data,
        **{
            "qat.fraction": 0.5,
            "qat.cooldown": 0.2,
            "qat.cooldown_of": "qat",
            "tokens": 8 * 32 * 100,
        },
    )
    plan, lr = _lrs(fused)
    # fused: no FP cooldown, no rewarmup; the only decay is at the end of QAT
    assert all(v == 1.0 for v in lr[2:91]) and lr[91] < 1.0 and lr[-1] == pytest.approx(0.1)
    assert plan.branch_step == plan.fp_steps == 50


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_cooldown_shapes(tiny_data, shape):
    cfg = tiny_run_config(
        tiny_data,
        **{
            "qat.bits": 16,
            "schedule.cooldown_shape": shape,
            "schedule.cooldown": 0.5,
            "tokens": 8 * 32 * 100,
        },
    )
    _, lr = _lrs(cfg)
    tail = lr[50:]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    mid = tail[25]
    expected = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}[shape]
    assert mid == pytest.approx(expected, abs=1e-9)


def test_bad_run_config():
    with pytest.raises(ConfigError, match="qat.fraction"):
        tiny_run_config("x", **{"qat.fraction": 1.5})
    with pytest.raises(ConfigError, match="qat.bits"):
        tiny_run_config("x", **{"qat.bits": 9})
    with pytest.raises(ConfigError, match="qat.bits"):
        tiny_run_config("x", **{"qat.bits": 0})
    with pytest.raises(ConfigError, match="size"):
        tiny_run_config("x", size="huge")
    with pytest.raises(ConfigError, match="optim.nope"):
        tiny_run_config("x", **{"optim.nope": 1})


def _val_losses(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.append((rec["step"], rec["loss"]))
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_exact_resume(tiny_data, tmp_path, fraction):
    """Kill after a checkpoint, resume: identical losses, bit for bit, to the uninterrupted run."""
    from coqat.train import run as run_mod

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": fraction, "checkpoint_every": 8 * 32 * 8})
    ref = run_mod.execute(cfg, tmp_path / "ref")
    killed_at(27, cfg, tmp_path / "killed")
    assert (tmp_path / "killed" / "checkpoint.pt").exists()
    assert not (tmp_path / "killed" / "result.json").exists()
    res = run_mod.execute(cfg, tmp_path / "killed")
    assert res["loss"] == ref["loss"]
    assert res["loss_fp"] == ref["loss_fp"] or (
        math.isnan(res["loss_fp"]) and math.isnan(ref["loss_fp"])
    )
    assert _val_losses(tmp_path / "killed") == _val_losses(tmp_path / "ref")


def test_result_record(tiny_data, tmp_path):
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.25, "qat.bits": 2})
    r = execute(cfg, tmp_path / "r")
    assert r["status"] == "done"
    assert r["D_fp"] + r["D_qat"] == r["D_total"] == cfg.tokens
    assert r["f"] == pytest.approx(0.25)
    nb = r["N"] * 2 / 8
    assert r["S_total"] == pytest.approx(r["D_total"] / nb)
    assert r["S_qat"] == pytest.approx(r["D_qat"] / nb)
    assert math.isfinite(r["loss"]) and math.isfinite(r["loss_fp"]) and math.isfinite(r["loss_ptq"])
    assert r["flops_fp"] > 0 and r["flops_qat"] > 0
    assert (tmp_path / "r" / "config.json").exists() and (tmp_path / "r" / "model.pt").exists()
    # a finished run is not trained again
    assert execute(cfg, tmp_path / "r") == r


def test_divergence_is_recorded(tiny_data, tmp_path):
    from coqat.train.run import execute

    cfg = tiny_run_config(
        tiny_data,
        **{"optim.lr": 1e4, "optim.grad_clip": 0, "qat.bits": 16, "divergence_factor": 1.05},
    )
    r = execute(cfg, tmp_path / "d")
    assert r["status"] == "diverged"
    assert math.isnan(r["loss"]) and r["diverged_at"] is not None
    assert r["last_train_loss"] is not None
    assert json.loads((tmp_path / "d" / "result.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("schedule", ["fused", "standard"])
def test_branch_equals_independent(tiny_data, tmp_path, schedule):
    from coqat.train.run import execute, train_trunk

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.5, "qat.schedule": schedule})
    alone = execute(cfg, tmp_path / "alone")
    plan = plan_phases(cfg)
    ckpts = train_trunk(cfg, tmp_path / "trunk", [plan.branch_step, plan.branch_step // 2])
    branched = execute(cfg, tmp_path / "branched", start_from=ckpts[plan.branch_step])
    assert branched["loss"] == alone["loss"]
    assert branched["loss_fp"] == alone["loss_fp"]


def test_resume_refuses_another_configuration(tiny_data, tmp_path):
    """A checkpoint is resumed only under the configuration saved beside it (where the data
    lives or how often it is evaluated may change): resuming it with another QAT fraction, or
    after a default changed, would give a run that belongs to neither."""
    import json

    from coqat.errors import ConfigError
    from coqat.train import run as run_mod

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.5, "checkpoint_every": 8 * 32 * 8})
    killed_at(20, cfg, tmp_path / "r")
    other = tiny_run_config(tiny_data, **{"qat.fraction": 0.3, "checkpoint_every": 8 * 32 * 8})
    with pytest.raises(ConfigError, match="qat.fraction: 0.5 -> 0.3"):
        run_mod.execute(other, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["qat"]["cooldown_of"]  # a run saved before the field existed
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="qat.cooldown_of: '\\(not set\\)' -> 'total'"):
        run_mod.execute(cfg, tmp_path / "r")
    saved["qat"]["cooldown_of"] = "total"
    saved["eval_every"] = 12345  # free to change
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    assert run_mod.execute(cfg, tmp_path / "r")["status"] == "done"


def test_trunk_resumes_from_other_runs_checkpoint(tiny_data, tmp_path, monkeypatch):
    """A trunk asked for a step it lacks resumes from the latest earlier checkpoint in its folder
    (saved for another run's branch), and the branch still equals the independent run."""
    from coqat.train import run as run_mod
    from coqat.train.run import execute, train_trunk

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.5})
    plan = plan_phases(cfg)
    half = plan.branch_step // 2
    train_trunk(cfg, tmp_path / "trunk", [half])
    calls = []
    step = run_mod.Trainer.train_step
    monkeypatch.setattr(run_mod.Trainer, "train_step", lambda tr: calls.append(1) or step(tr))
    ckpts = train_trunk(cfg, tmp_path / "trunk", [plan.branch_step])
    monkeypatch.undo()
    assert len(calls) == plan.branch_step - half
    branched = execute(cfg, tmp_path / "branched", start_from=ckpts[plan.branch_step])
    assert branched["loss"] == execute(cfg, tmp_path / "alone")["loss"]


def test_qat_beats_ptq_at_4_bits(tiny_data, tmp_path):
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.3, "qat.bits": 4, "tokens": 8 * 32 * 80})
    r = execute(cfg, tmp_path / "q")
    assert r["loss"] < r["loss_ptq"], r


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
def test_compiled_forward_loss_options_are_accepted(mode):
    """torch.compile checks inductor option names when the wrapper is built (no compilation
    happens here): the size-assert switch and each mode's own options must be valid."""
    from coqat.train.run import _COMPILED, compiled_forward_loss

    _COMPILED.pop(mode, None)
    fn = compiled_forward_loss(mode)
    assert callable(fn) and compiled_forward_loss(mode) is fn


@pytest.mark.parametrize("f", [0.1, 0.5])
def test_qat_cooldown_of_total(tiny_data, f):
    """qat.cooldown_of = total (the default): the decay spans qat.cooldown of the whole run,
    capped at the QAT phase, instead of a fraction of the QAT phase that shrinks with f."""
    over = {"qat.fraction": f, "qat.cooldown": 0.2, "tokens": 8 * 32 * 100}
    plan_q, lr_q = _lrs(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "qat"}))
    plan, lr_t = _lrs(tiny_run_config(tiny_data, **over))
    assert plan == plan_phases(tiny_run_config(tiny_data, **over, **{"qat.cooldown_of": "total"}))
    # 20% of the 100 steps, at most the QAT phase (vs 20% of the QAT phase)
    assert plan.steps - plan.qat_cooldown_start == min(plan.qat_steps, 20)
    assert plan_q.steps - plan_q.qat_cooldown_start == round(0.2 * plan.qat_steps)
    tail = lr_t[plan.qat_cooldown_start :]
    assert all(a > b for a, b in zip(tail, tail[1:]))
    assert all(v == 1.0 for v in lr_t[plan.qat_start : plan.qat_cooldown_start])
    with pytest.raises(ConfigError, match="qat.cooldown_of"):
        tiny_run_config(tiny_data, **{"qat.cooldown_of": "phase"})


@pytest.mark.parametrize("carry", [True, False])
def test_quantizer_scales_have_no_weight_decay(tiny_data, carry):
    """Scales (and norms) sit in the no-decay group, matrices in the decay group, whether QAT
    keeps the FP optimizer (scales appended) or starts a fresh one; every parameter once."""
    from coqat.train.run import Trainer

    cfg = tiny_run_config(tiny_data, **{"qat.carry_optimizer": carry})
    tr = Trainer(cfg)
    tr.train_step()
    tr.enter_qat()
    tr.train_step()
    wd = {id(p): g["weight_decay"] for g in tr.optimizer.param_groups for p in g["params"]}
    names = dict(tr.model.named_parameters())
    assert len(wd) == len(names) == sum(len(g["params"]) for g in tr.optimizer.param_groups)
    for n, p in names.items():
        if "weight_quantizer" in n or p.ndim < 2:
            assert wd[id(p)] == 0.0, n
        else:
            assert wd[id(p)] == cfg.optim.weight_decay > 0, n
    assert any("weight_quantizer" in n for n in names)
    assert tr._trainable() == list(tr.model.parameters())  # the cached list follows prepare


def test_standard_decay_follows_the_rewarmup(tiny_data):
    """Standard schedule, decay over 20% of the run at f = 0.1: the QAT phase re-warms to the
    peak, then decays (it does not start decaying during the re-warmup)."""
    over = {"qat.schedule": "standard", "qat.fraction": 0.1, "qat.rewarmup": 0.2,
            "tokens": 8 * 32 * 100}
    plan, lr = _lrs(tiny_run_config(tiny_data, **over))
    q = lr[plan.qat_start :]
    rw = round(0.2 * plan.qat_steps)
    assert plan.qat_cooldown_start == plan.qat_start + rw
    assert q[:rw] == sorted(q[:rw]) and q[rw - 1] == 1.0
    assert q[rw] == 1.0 and all(a > b for a, b in zip(q[rw:], q[rw + 1 :]))  # then decays
