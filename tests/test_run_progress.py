"""What a run reports while and after it trains: progress lines, evaluation counts and times."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import tiny_run_config


def _events(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_no_duplicate_evaluations(tiny_data, tmp_path, monkeypatch, fraction):
    """Each evaluation point is measured once: the intermediate schedule skips the phase switch
    (loss_fp and its PTQ are measured there) and the end (the final loss)."""
    from coqat.train import run as run_mod

    cfg = tiny_run_config(tiny_data, **{"qat.fraction": fraction, "eval_every": 8 * 32 * 5})
    plan = run_mod.plan_phases(cfg)
    calls = []
    real = run_mod.Trainer.evaluate
    monkeypatch.setattr(
        run_mod.Trainer, "evaluate", lambda tr, m=None: calls.append(tr.step) or real(tr, m)
    )
    res = run_mod.execute(cfg, tmp_path / "r")
    switch = [plan.fp_steps, plan.fp_steps]  # FP model and its PTQ copy
    inter = [s for s in range(5, plan.steps, 5) if s != plan.fp_steps]
    final = [] if fraction == 0 else [plan.steps]
    assert sorted(calls) == sorted(inter + switch + final)
    steps = [e["step"] for e in _events(tmp_path / "r") if "val_loss" in e]
    assert len(steps) == len(set(steps))
    assert res["wall_eval"] > 0 and res["wall_fp"] > 0


def test_auto_validation_budget():
    from coqat.config import from_dict
    from coqat.train.config import AUTO_VAL_CAP, RunConfig

    def cfg(**kw):
        return from_dict(RunConfig, {"model": {"seq_len": 128}, "optim": {"batch_size": 8}, **kw})

    assert cfg(tokens=10**9).val_tokens == AUTO_VAL_CAP
    assert cfg(tokens=2_000_000).val_tokens == 2_000_000 // 64
    assert cfg(tokens=8 * 128 * 3).val_tokens == 8 * 128
    assert cfg(tokens=10**9, data={"val_tokens": 4096}).val_tokens == 4096


def test_progress_lines_without_a_terminal(tiny_data, tmp_path, caplog, monkeypatch):
    """Without a TTY the run logs its plan, a line at each phase with step, losses, tokens/s
    and ETA, the FP->QAT switch and the result with train and eval time apart."""
    from coqat.train.run import execute

    monkeypatch.setattr("coqat.log.is_tty", lambda: False)
    cfg = tiny_run_config(tiny_data, **{"qat.fraction": 0.5})
    coqat_log = logging.getLogger("coqat")  # the CLI stops it propagating to the root logger
    coqat_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="coqat"):
            execute(cfg, tmp_path / "r", progress=True)
    finally:
        coqat_log.removeHandler(caplog.handler)
    text = caplog.text
    assert "training " in text and "val tokens per evaluation" in text
    assert "FP phase done at step" in text and "after PTQ to 4 bits" in text
    assert "train QAT, step" in text and "tok/s" in text and "ETA" in text
    assert "done: val loss" in text and "eval" in text


def test_progress_numbers_leave_out_evaluation_time(monkeypatch):
    from coqat.train import progress as pmod

    clock = [0.0]
    monkeypatch.setattr(pmod.time, "perf_counter", lambda: clock[0])
    p = pmod.RunProgress(100, 1000, 0, evals=2, tty=False)
    clock[0] = 10.0
    p.update(50, loss=3.0)  # 50 steps of 1000 tokens in 10 s
    p.eval_begin()
    clock[0] = 20.0
    p.eval_end(2.5)  # 10 s of evaluation
    assert p.tokens_per_s == pytest.approx(5000.0)
    assert p.eta_s == pytest.approx(10.0 + 1 * 10.0)  # 50 steps left + one 10 s evaluation
    assert "val 2.5000" in p.line() and "5,000 tok/s" in p.line()


def test_overrides_before_and_after_flags_and_print_config(tiny_data, capsys):
    """KEY=VALUE overrides go anywhere on the line; --print-config prints the resolved config
    (model.vocab_size from the data) without training."""
    import yaml

    from coqat.cli import main

    rc = main(["train", "optim.lr=0.002", "--data", str(tiny_data), "--size", "tiny",
               "seed=3", "--print-config", "schedule.warmup=0.1"])  # fmt: skip
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.002 and cfg["seed"] == 3 and cfg["schedule"]["warmup"] == 0.1
    assert cfg["model"]["vocab_size"] == 512  # the data's vocabulary
    rc = main(["train", "--data", str(tiny_data), "model.vocab_size=1024", "--print-config"])
    assert rc == 0 and yaml.safe_load(capsys.readouterr().out)["model"]["vocab_size"] == 1024


def test_auto_cpu_threads():
    from coqat.train.threads import auto_threads

    assert auto_threads(2, 0.0) == 1  # a 2-core machine: one thread
    assert auto_threads(16, 0.0) == 8
    assert auto_threads(16, 12.0) == 4  # busy: only the idle cores
    assert auto_threads(64, 0.0) == 8  # small models gain nothing from more
    assert auto_threads(4, 9.0) == 1


def test_sweep_plan_uses_the_cpu_rate_without_cuda(monkeypatch):
    """device auto on a machine without CUDA is timed at the CPU rate, not the H200 table."""
    from coqat.config import from_dict
    from coqat.model.config import flops_per_token
    from coqat.sweep import throughput
    from coqat.train.config import RunConfig

    cfg = from_dict(RunConfig, {"size": "tiny", "device": "auto"})
    monkeypatch.setattr(throughput, "_cuda_available", lambda: False)
    assert throughput.tokens_per_s(cfg) == throughput.CPU_FLOPS / flops_per_token(cfg.model)
    monkeypatch.setattr(throughput, "_cuda_available", lambda: True)
    assert throughput.tokens_per_s(cfg) > 1e6  # the GPU table
