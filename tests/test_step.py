"""The training step's hot path (coqat.train.step): device-resident batches equal the sampler's,
runs on them equal runs on host batches bit for bit (also resumed and branched), the captured-step
control flow (warm-up, capture, replay, reset, fallback) gives the eager arithmetic, and
checkpoints do not depend on how the step ran."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from helpers import killed_at, tiny_run_config

from coqat.data import BatchSampler, TokenDataset
from coqat.errors import ConfigError


class _Split:
    """A stand-in split with uint16 ids and a given vocabulary."""

    def __init__(self, n: int, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.tokens = rng.integers(0, min(vocab, 1 << 16), n).astype(np.uint16)
        self.vocab_size, self.path, self.data_hash = vocab, f"/split-{vocab}-{n}", f"h{seed}"

    def __len__(self) -> int:
        return len(self.tokens)


@pytest.mark.parametrize("vocab", [512, 40_000])  # int16 on the device; int32 above 2^15
def test_device_batches_equal_the_samplers(vocab):
    from coqat.train.step import DeviceBatches

    sampler = BatchSampler(_Split(5000, vocab), batch_size=6, seq_len=17, seed=3)
    for rows in (slice(0, 6), slice(2, 4)):  # a whole batch, one rank's share
        b = DeviceBatches(sampler, rows, torch.device("cpu"))
        assert b.tokens.dtype == (torch.int16 if vocab <= 1 << 15 else torch.int32)
        for k in (0, 1, 99):
            b.load(k)
            got = b.get()
            assert got.dtype == torch.int64
            assert np.array_equal(got.numpy(), sampler.batch(k)[rows])
    assert sampler.starts(7).shape == (6,)


def _run(cfg, path):
    from coqat.train.run import execute

    return execute(cfg, path)


def _losses(run_dir):
    import json

    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in recs]


def test_device_batches_train_exactly_as_host_batches(tiny_data, tmp_path):
    short = {"tokens": 8 * 32 * 16, "eval_every": 8 * 32 * 8}
    host = tiny_run_config(tiny_data, **{"perf.batches": "host"}, **short)
    dev = tiny_run_config(tiny_data, **{"perf.batches": "device"}, **short)
    a, b = _run(host, tmp_path / "h"), _run(dev, tmp_path / "d")
    assert a["loss"] == b["loss"] and a["loss_fp"] == b["loss_fp"]
    assert _losses(tmp_path / "h") == _losses(tmp_path / "d")


@pytest.mark.slow
def test_device_batches_resume_and_branch_exactly(tiny_data, tmp_path):
    from coqat.train.phases import plan_phases
    from coqat.train.run import execute, train_trunk

    over = {"perf.batches": "device", "qat.fraction": 0.5, "checkpoint_every": 8 * 32 * 8}
    cfg = tiny_run_config(tiny_data, **over)
    ref = execute(cfg, tmp_path / "ref")
    killed_at(27, cfg, tmp_path / "killed")
    assert execute(cfg, tmp_path / "killed")["loss"] == ref["loss"]
    plan = plan_phases(cfg)
    ckpts = train_trunk(cfg, tmp_path / "trunk", [plan.branch_step])
    branched = execute(cfg, tmp_path / "branched", start_from=ckpts[plan.branch_step])
    assert branched["loss"] == ref["loss"]


def test_plain_and_fused_kernels_train_alike(tiny_data, tmp_path):
    """Same mathematics, different summation order: close, not necessarily equal."""
    short = {"tokens": 8 * 32 * 16, "eval_every": 8 * 32 * 8}
    a = _run(tiny_run_config(tiny_data, **{"perf.kernels": "plain"}, **short), tmp_path / "p")
    b = _run(tiny_run_config(tiny_data, **{"perf.kernels": "fused"}, **short), tmp_path / "f")
    assert math.isclose(a["loss_fp"], b["loss_fp"], rel_tol=1e-5)
    assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3)  # after QAT: flipped codes amplify


class _FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay() runs the captured function again and
    writes its result into the one output tensor, as a replay overwrites the static output."""

    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self):
        self.replays += 1
        self.out.copy_(self.fn())


def _fake_cuda(monkeypatch, fail: bool = False):
    from coqat.train import step as step_mod

    captured = []

    def capture(fn):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        g = _FakeGraph(fn)
        g.out = torch.full((2,), float("nan"))  # nothing runs at capture time
        captured.append(g)
        return g, g.out

    monkeypatch.setattr(step_mod, "capture", capture)
    monkeypatch.setattr(step_mod, "on_side_stream", lambda fn, device: fn())
    monkeypatch.setattr(step_mod, "use_cuda_graph", lambda tr: True)
    return captured


@pytest.mark.parametrize("fail", [False, True])
def test_captured_step_control_flow(tiny_data, monkeypatch, fail):
    """Warm-up steps, one capture, replays; QAT entry and checkpoint loads drop the graph; a
    failed capture falls back to eager steps. Every path computes the eager losses exactly."""
    from coqat.train import step as step_mod
    from coqat.train.run import Trainer

    cfg = tiny_run_config(tiny_data, **{"perf.batches": "device", "qat.fraction": 0.5})

    def train(tr):
        out = []
        for k in range(12):
            if k == 6:
                tr.enter_qat()
                assert not tr.runner.captured
            loss, gnorm, lr = tr.train_step()
            assert isinstance(lr, float) and torch.isfinite(gnorm)
            out.append(loss.item())
        return out

    plain = train(Trainer(cfg))  # no graphs: the learning rate as a Python float
    captured = _fake_cuda(monkeypatch, fail)
    warm = step_mod.WARMUP_STEPS
    monkeypatch.setattr(step_mod, "WARMUP_STEPS", 10**9)
    ref = Trainer(cfg)  # graph mode that never captures: every step eager
    want = train(ref)
    assert not captured
    monkeypatch.setattr(step_mod, "WARMUP_STEPS", warm)
    tr = Trainer(cfg)
    assert tr.runner.graphs and isinstance(tr.runner.lr, torch.Tensor)
    expect = pytest.warns(UserWarning, match="CUDA graph failed") if fail else nullcontext()
    with expect:
        assert train(tr) == want  # replays compute the eager steps exactly
    # CPU AdamW computes with a float32 tensor lr in float32 (a Python lr in double): rounding
    # differences, amplified where QAT codes flip
    assert want == pytest.approx(plain, rel=1e-3)
    assert tr.runner.captured == (not fail) and tr.runner.failed == fail
    if not fail:
        assert len(captured) == 2 and [g.replays for g in captured] == [6 - warm] * 2
        assert all(g["lr"] is tr.runner.lr for g in tr.optimizer.param_groups)
    # a checkpoint of a graphed run holds what an uncaptured run's holds
    sd, sd_ref = tr.state_dict(), Trainer(cfg).state_dict()
    for g in sd["optimizer"]["param_groups"]:
        assert g["lr"] == tr.runner.last_lr and g["capturable"] is False
    keys = [g.keys() for g in sd_ref["optimizer"]["param_groups"]]
    assert [g.keys() for g in sd["optimizer"]["param_groups"]] == keys
    tr.load_state_dict(ref.state_dict())
    assert not tr.runner.captured


def test_perf_config_errors(tiny_data):
    with pytest.raises(ConfigError, match="perf.cuda_graph"):
        tiny_run_config(tiny_data, **{"perf.cuda_graph": "on", "compile_mode": "reduce-overhead"})
    with pytest.raises(ConfigError, match="perf.kernels"):
        tiny_run_config(tiny_data, **{"perf.kernels": "triton"})


def test_auto_choices_on_cpu(tiny_data):
    from coqat.train.run import Trainer
    from coqat.train.step import HostBatches

    tr = Trainer(tiny_run_config(tiny_data))
    assert isinstance(tr.runner.batches, HostBatches) and not tr.runner.graphs
    assert tr.model.kernels == "plain"
    ds = TokenDataset(tiny_data, "train")
    assert len(ds) > 0


def test_perf_settings_are_not_a_variant():
    """How a step runs does not make a run a knob study's variant (like device or compile); a
    config written before the perf fields existed has no variant either."""
    import json

    from coqat.config import to_dict
    from coqat.sweep.keys import variant_of
    from coqat.train.config import RunConfig

    cfg = to_dict(RunConfig())
    cfg["perf"] = {"kernels": "plain", "batches": "host", "cuda_graph": "off"}
    assert variant_of(cfg) == ""
    old = json.loads(json.dumps(cfg))
    del old["perf"]
    assert variant_of(old) == ""
