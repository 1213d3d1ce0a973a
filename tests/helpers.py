"""Helpers shared by test modules (``from helpers import ...``; see conftest.py)."""

from __future__ import annotations

import os
import sys


def tiny_run_config(data_path, **over):
    """A RunConfig small enough to train a few dozen CPU steps in about a second."""
    from coqat.config import apply_overrides, from_dict
    from coqat.train.config import RunConfig

    base = {
        "size": "tiny",
        "model": {"vocab_size": 512, "seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2},
        "data": {"path": str(data_path), "val_tokens": 2048},
        "optim": {"lr": 3e-3, "batch_size": 8},
        "tokens": 8 * 32 * 40,
        "device": "cpu",
        "compile": "off",
        "qat": {"bits": 4, "fraction": 0.25},
    }
    base.pop("size")  # explicit shape above
    return from_dict(RunConfig, apply_overrides(base, [f"{k}={v}" for k, v in over.items()]))


def killed_at(step: int, cfg, run_dir) -> None:
    """Run ``cfg`` in ``run_dir`` and kill it (KeyboardInterrupt) at training step ``step``."""
    import pytest

    from coqat.train import run as run_mod

    calls = {"n": 0}
    orig = run_mod.Trainer.train_step

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("simulated kill")
        return orig(self)

    run_mod.Trainer.train_step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            run_mod.execute(cfg, run_dir)
    finally:
        run_mod.Trainer.train_step = orig


# ---------------------------------------------------------------- sweeps with the fake engine
BASE = {
    "model": {"vocab_size": 512, "seq_len": 64},
    "optim": {"batch_size": 8},
    "tokens": 8 * 64 * 100,
    "device": "cpu",
}


def runs_of(**kw):
    from coqat.sweep.spec import expand, spec_from_dict

    d = {"name": "t", "base": BASE, "sizes": ["tiny"], "bits": [2, 4], "fractions": [0, 0.25, 1],
         "schedules": ["fused", "standard"]} | kw
    return expand(spec_from_dict(d))


def make_store(tmp_path, runs=None, name="t"):
    from coqat.sweep.store import Store

    st = Store(tmp_path / "s.db")
    st.register(runs if runs is not None else runs_of(), name, tmp_path / "root", version="v")
    return st


def fake_env(tmp_path, delay=0.05, **extra):
    env = os.environ.copy()
    env.update(COQAT_FAKE_DELAY=str(delay), COQAT_FAKE_LOG=str(tmp_path / "events.log"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def worker_cmd(tmp_path, *extra):
    return [sys.executable, "-m", "coqat.sweep.worker", str(tmp_path / "s.db"),
            str(tmp_path / "root"), "--engine", "fake", "--code-version", "v", "--poll", "0.05",
            "--lease", "30", "--max-attempts", "100", *extra]


def events(tmp_path):
    p = tmp_path / "events.log"
    if not p.exists():
        return []
    return [line.split() for line in p.read_text().splitlines() if line.strip()]
