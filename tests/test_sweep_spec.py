"""Sweep files: parsing, bad input, expansion and dedup, S-based tokens; exact FLOPs saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from coqat.errors import ConfigError
from coqat.model.config import param_counts
from coqat.sweep.spec import expand, load_spec, spec_from_dict
from coqat.sweep.tree import plan_sweep

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "model": {"vocab_size": 512, "seq_len": 64},
    "optim": {"batch_size": 8},
    "tokens": 8 * 64 * 100,
    "device": "cpu",
}


def spec(**kw):
    return spec_from_dict({"name": "t", "base": BASE, "sizes": ["tiny"], **kw})


def test_example_file_expands_to_8_runs():
    s = load_spec(ROOT / "examples/sweeps/tiny.yaml")
    runs = expand(s)
    # 2 bits x 3 fractions x 2 schedules = 12; f=0 and f=1 collapse across schedules -> 8
    assert len(runs) == 8
    combos = {(r.qat.bits, r.qat.fraction, r.qat.schedule) for r in runs}
    assert (2.0, 0.0, "standard") in combos and (2.0, 0.0, "fused") not in combos
    assert (4.0, 1.0, "standard") in combos and (4.0, 1.0, "fused") not in combos
    assert (4.0, 0.25, "fused") in combos and (4.0, 0.25, "standard") in combos
    assert all(r.size == "tiny" and r.model.seq_len == 64 for r in runs)


def test_expansion_counts_and_dedup():
    s = spec(bits=[2, 4, 16], fractions=[0, 0.1, 0.5, 1], schedules=["fused", "standard"],
             seeds=[0, 1])
    runs = expand(s)
    # per seed: quantized 2 bits x (2 interior x 2 schedules + 2 endpoints) = 12; FP: 1
    assert len(runs) == 2 * (12 + 1)
    fp = [r for r in runs if r.qat.bits == 16]
    assert len(fp) == 2 and all(r.qat.fraction == 0 and r.qat.schedule == "standard" for r in fp)
    # fractions rounding to the same step count are one run
    s2 = spec(bits=[4], fractions=[0.5, 0.501], schedules=["fused"])
    assert len(expand(s2)) == 1


def test_include_exclude_overrides():
    s = spec(
        sizes=["tiny", "2m"],
        bits=[2, 4],
        fractions=[0.25, 0.5],
        schedules=["fused"],
        exclude=[{"bits": 2, "size": "2m"}],
        include=[{"size": "2m", "bits": 3, "fraction": [0.1], "override": {"seed": 5}}],
        overrides={"2m": {"optim": {"lr": 1e-3}}},
    )
    runs = expand(s)
    assert len(runs) == 2 * 2 + 2 + 1
    two = [r for r in runs if r.size == "2m"]
    assert {r.qat.bits for r in two} == {3.0, 4.0}
    assert all(r.optim.lr == 1e-3 for r in two)
    assert all(r.optim.lr == 3e-3 for r in runs if r.size == "tiny")
    extra = [r for r in two if r.qat.bits == 3][0]
    assert extra.seed == 5 and extra.qat.fraction == 0.1


def test_s_total_tokens():
    s = spec(s_total=[10, 50], bits=[2, 4], fractions=[0.5], schedules=["fused"])
    runs = expand(s)
    assert len(runs) == 4
    n = param_counts(runs[0].model).total
    tps = 8 * 64
    for r in runs:
        assert r.tokens % tps == 0
    got = {(r.qat.bits, r.tokens) for r in runs}
    want = set()
    for S in (10, 50):
        for b in (2, 4):
            steps = int(S * n * b / 8 / tps + 0.5)
            want.add((float(b), steps * tps))
    assert got == want
    # realised S within half a step of the target
    for r in runs:
        S = r.tokens / (n * r.qat.bits / 8)
        assert min(abs(S - 10), abs(S - 50)) <= 0.5 * tps / (n * r.qat.bits / 8)


def test_toml_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'name = "toml"\nsizes = ["tiny"]\nbits = [4]\nfractions = [0, 0.5]\n'
        '[base]\ntokens = 51200\n[base.model]\nseq_len = 64\n[base.optim]\nbatch_size = 8\n'
    )
    assert len(expand(load_spec(p))) == 2


@pytest.mark.parametrize(
    "data, field, allowed",
    [
        ({"bitz": [2]}, "bitz", "allowed keys"),
        ({"schedules": ["fast"]}, "schedules", "fused"),
        ({"bits": [9]}, "bits", "allowed"),
        ({"sizes": ["huge"]}, "sizes", "tiny"),
        ({"fractions": [1.5]}, "fractions", "[0, 1]"),
        ({"base": {"optim": {"lr": -1}}}, "base.optim.lr", "> 0"),
        ({"base": {"optim": {"nope": 1}}}, "base.optim.nope", "allowed keys"),
        ({"tokens": [51200], "s_total": [10]}, "tokens", "not both"),
        ({"include": [{"bitz": 2}]}, "include[0].bitz", "allowed keys"),
        ({"exclude": [{"schedule": "x"}]}, "exclude[0].schedule", "fused"),
        ({"overrides": {"huge": {}}}, "overrides.huge", "ladder"),
        ({"overrides": {"2m": {"optim": {"lr": "x"}}}}, "overrides.2m.optim.lr", "number"),
    ],
)
def test_bad_input_names_key_and_allowed(data, field, allowed):
    d = {"name": "t", "base": BASE} | data
    with pytest.raises(ConfigError) as e:
        spec_from_dict(d)
    assert e.value.field == field or str(e.value).startswith(field), str(e.value)
    assert allowed in str(e.value)


def test_exact_flops_saved_small_tree():
    """One trunk (bits 2 and 4 x f in {0, 0.25} x both schedules) + f=1 runs, by hand."""
    s = spec(bits=[2, 4], fractions=[0, 0.25, 1], schedules=["fused", "standard"])
    plan = plan_sweep(expand(s))
    # tiny at vocab 512, seq 64: d=64, L=2, SwiGLU hidden 192 (8*64/3 -> multiple of 64)
    linear = 2 * (4 * 64 * 64 + 3 * 64 * 192)
    fpt = 6 * (linear + 512 * 64) + 6 * 2 * 64 * 64
    tps = 8 * 64
    steps = 100
    # branch steps: f=0 (standard cooldown 20%): 80; f=0.25 fused: 75; standard: 75 - 15 = 60
    branch = [80, 75, 60] * 2
    assert sorted(r.branch_step for r in plan.runs if r.trunk) == sorted(branch)
    assert len(plan.trunks) == 1 and next(iter(plan.trunks.values())).branch_steps == (60, 75, 80)
    indep = 8 * steps * tps * fpt
    shared = (sum(steps - b for b in branch) + 2 * steps + 80) * tps * fpt
    assert plan.flops_independent == indep
    assert plan.flops_shared == shared
    assert plan.flops_saved == (sum(branch) - 80) * tps * fpt == 350 * 512 * 884736
    assert isinstance(plan.flops_saved, int)
    # no sharing: nothing saved; a lone run gets no trunk
    assert plan_sweep(expand(s), share=False).flops_saved == 0
    lone = plan_sweep(expand(spec(bits=[4], fractions=[0.25], schedules=["fused"])))
    assert lone.flops_saved == 0 and not lone.trunks


def test_runs_on_one_trunk_train_the_same_fp_trunk():
    """Runs that coqat.sweep.keys.trunk_key (the one trunk key) puts on one trunk train the same
    FP trunk in the engine (coqat.train.run.trunk_config), and runs on different trunks do not."""
    pytest.importorskip("torch")
    from coqat.config import to_dict
    from coqat.sweep.keys import trunk_key
    from coqat.train.run import trunk_config

    s = spec(sizes=["tiny", "2m"], bits=[2, 4, 16], fractions=[0, 0.3, 1],
             schedules=["fused", "standard"], seeds=[0, 1])
    runs = expand(s)
    for a in runs:
        for b in runs:
            same_key = trunk_key(a, "v", "") == trunk_key(b, "v", "")
            assert same_key == (to_dict(trunk_config(a)) == to_dict(trunk_config(b))), (a, b)


def test_time_estimate_uses_table():
    s = spec(bits=[4], fractions=[0.25, 0.5], schedules=["fused"])
    runs = expand(s)
    p1 = plan_sweep(runs, tokens_per_s=1000.0)
    assert p1.seconds_independent == pytest.approx(2 * 100 * 512 / 1000.0)
    p2 = plan_sweep(runs, tokens_per_s={"tiny": 2000.0})
    assert p2.seconds_independent == pytest.approx(2 * 100 * 512 / 2000.0)
