"""One run over several processes: DDP and FSDP2 on CPU with gloo, against one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_driver import config as driver_config
from dist_driver import partial
from helpers import tiny_run_config


def _flags(data, out):
    return ["train", "--out", str(out), "--data", str(data), "--device", "cpu",
            "--compile", "off", "--tokens", str(8 * 32 * 24), "--bits", "4",
            "--fraction", "0.5", "--seq-len", "32", "--batch-size", "8",
            "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
            "model.vocab_size=512", "data.val_tokens=2048", "checkpoint_every=2048"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))


def _torchrun(*args, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _result(d: Path) -> dict:
    return json.loads((d / "result.json").read_text())


def _first_logged_step(d: Path) -> int:
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    return min(r["step"] for r in recs if "loss" in r)


@pytest.mark.slow
def test_two_process_gloo_matches_single(tiny_data, tmp_path):
    from coqat.train.run import execute

    cfg = tiny_run_config(tiny_data, **{"tokens": 8 * 32 * 24, "qat.fraction": 0.5,
                                        "checkpoint_every": 2048})
    single = execute(cfg, tmp_path / "single")
    _torchrun("-m", "coqat.cli", *_flags(tiny_data, tmp_path / "ddp"), timeout=300)
    ddp = _result(tmp_path / "ddp")
    assert ddp["D_total"] == single["D_total"] and ddp["D_qat"] == single["D_qat"]
    assert ddp["world_size"] == 2 and ddp["dist_strategy"] == "ddp"
    # same global batches and averaged gradients: the FP phase agrees up to summation order ...
    assert ddp["loss_fp"] == pytest.approx(single["loss_fp"], rel=1e-5)
    # ... and QAT amplifies last-bit differences where weights sit on a rounding boundary (a
    # level flips), so the final loss agrees to run-to-run-noise level, not bit for bit
    assert ddp["loss"] == pytest.approx(single["loss"], rel=2e-3)


# ------------------------------------------------------------------------------- FSDP, 2 ranks
@pytest.fixture(scope="module")
def fsdp_runs(tiny_data, tmp_path_factory):
    """One torchrun launch of tests/dist_driver.py: FSDP and DDP runs, an FSDP run interrupted
    in its QAT phase and resumed on 2 ranks, and a single-process checkpoint resumed under
    FSDP; the interrupted FSDP checkpoint is also resumed here, in one process."""
    from coqat.train.run import execute

    out = tmp_path_factory.mktemp("fsdp")
    runs = {"single": execute(driver_config(tiny_data), out / "single")}
    partial(driver_config(tiny_data), out / "from_single", 18)  # one-file checkpoint
    driver = str(Path(__file__).with_name("dist_driver.py"))
    _torchrun(driver, str(tiny_data), str(out),
              "full", "fsdp", "fsdp", "full", "ddp", "ddp",
              "partial", "fsdp", "part", "18", "copy", "part", "part_one",
              "full", "fsdp", "part", "full", "fsdp", "from_single")
    for name in ("fsdp", "ddp", "part", "from_single"):
        runs[name] = _result(out / name)
    runs["part_one"] = execute(driver_config(tiny_data), out / "part_one")  # 2 ranks -> 1
    runs["dir"] = out
    return runs


@pytest.mark.slow
def test_fsdp_matches_ddp_and_single_process(fsdp_runs):
    s, f, d = fsdp_runs["single"], fsdp_runs["fsdp"], fsdp_runs["ddp"]
    assert f["dist_strategy"] == "fsdp" and d["dist_strategy"] == "ddp" and s["world_size"] == 1
    for r in (f, d):  # FP phase: summation order only; QAT: to run-to-run noise (see above)
        assert r["loss_fp"] == pytest.approx(s["loss_fp"], rel=1e-5)
        assert r["loss_ptq"] == pytest.approx(s["loss_ptq"], rel=1e-5)
        assert r["loss"] == pytest.approx(s["loss"], rel=2e-3)
    assert f["loss"] == pytest.approx(d["loss"], rel=2e-3)


@pytest.mark.slow
def test_fsdp_resume_is_exact_on_the_same_ranks(fsdp_runs):
    """Killed in the QAT phase and resumed from its sharded checkpoint: the same numbers."""
    f, p = fsdp_runs["fsdp"], fsdp_runs["part"]
    assert _first_logged_step(fsdp_runs["dir"] / "part") > 18  # it did resume
    assert (p["loss_fp"], p["loss_ptq"], p["loss"]) == (f["loss_fp"], f["loss_ptq"], f["loss"])
    assert not (fsdp_runs["dir"] / "part" / "checkpoint.pt").exists()
    assert not list((fsdp_runs["dir"] / "part").glob("*.dcp"))  # shards removed with it


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process_and_back(fsdp_runs):
    """A sharded checkpoint resumes in one CPU process, a one-file checkpoint under FSDP."""
    f, one = fsdp_runs["fsdp"], fsdp_runs["part_one"]
    for name in ("part_one", "from_single"):
        assert _first_logged_step(fsdp_runs["dir"] / name) > 18, name
    assert one["world_size"] == 1 and one["loss_fp"] == f["loss_fp"]
    assert one["loss"] == pytest.approx(f["loss"], rel=2e-3)
    s, back = fsdp_runs["single"], fsdp_runs["from_single"]
    assert back["dist_strategy"] == "fsdp" and back["loss_fp"] == s["loss_fp"]
    assert back["loss"] == pytest.approx(s["loss"], rel=2e-3)


@pytest.mark.slow
def test_fsdp_final_weights_are_whole(fsdp_runs):
    """model.pt of a sharded run holds the unsharded weights and scales, as one process's."""
    from coqat.model.llama import Llama
    from coqat.quant import load_state_dict_checked, prepare
    from coqat.quant.config import QuantConfig

    sd = torch.load(fsdp_runs["dir"] / "fsdp" / "model.pt", weights_only=False)
    ref = torch.load(fsdp_runs["dir"] / "single" / "model.pt", weights_only=False)
    assert sd["quantized"] and set(sd["model"]) == set(ref["model"])
    for k, v in ref["model"].items():
        assert sd["model"][k].shape == v.shape, k
    model = prepare(Llama(driver_config("x").model), QuantConfig(bits=4))
    load_state_dict_checked(model, sd["model"])  # strict: every key and shape


# ------------------------------------------------------------------------------- one rank
@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank, so FSDP code runs in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tiny_model(seed=0):
    from coqat.model.config import ModelConfig
    from coqat.model.llama import Llama

    torch.manual_seed(seed)
    return Llama(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=64, seq_len=16))


def test_fsdp_quantizer_switch_equals_prepare(one_rank_group):
    """Rebuilding a sharded model with quantizers gives the scales and the loss of prepare()
    on the unsharded model, keeps the weights, consumes no random numbers, and hands the
    weights' AdamW moments over by name (the scales start empty)."""
    from coqat.quant import prepare
    from coqat.quant.config import QuantConfig
    from coqat.train.distributed import DistInfo
    from coqat.train.fsdp import device_mesh, move_optimizer_state, shard_model, with_quantizers

    qcfg = QuantConfig(bits=2)
    ref = prepare(_tiny_model(), qcfg)
    model = shard_model(_tiny_model(), device_mesh(DistInfo(), torch.device("cpu")))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as on CUDA
    x = torch.randint(0, 64, (4, 17))
    model(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    from coqat.quant.qat import attached_quantizers

    with torch.no_grad():  # the reference takes the same step's weights
        ref_params = dict(ref.named_parameters())
        for name, p in model.named_parameters():
            ref_params[name].copy_(p.full_tensor())
        for name, q in attached_quantizers(ref).items():  # re-init from the updated weights
            q.initialize(dict(ref.named_modules())[name].weight)
    rng = torch.get_rng_state()
    new = with_quantizers(model, qcfg)
    assert torch.equal(rng, torch.get_rng_state())
    ref_params = dict(ref.named_parameters())
    for name, p in new.named_parameters():
        assert torch.equal(p.full_tensor(), ref_params[name].detach()), name
    with torch.no_grad():
        assert new(x[:, :-1], x[:, 1:]).item() == ref(x[:, :-1], x[:, 1:]).item()
    new_opt = torch.optim.AdamW(new.parameters(), lr=1e-3)
    move_optimizer_state(model, opt, new, new_opt)
    by_name = dict(new.named_parameters())
    assert by_name["embed.weight"] in new_opt.state
    assert by_name["embed.weight_quantizer.alpha"] not in new_opt.state
    old = opt.state[dict(model.named_parameters())["embed.weight"]]
    assert new_opt.state[by_name["embed.weight"]]["exp_avg"] is old["exp_avg"]


def test_sharded_checkpoint_loads_into_an_unsharded_model(one_rank_group, tmp_path):
    from coqat.train.checkpoint import (
        load_checkpoint,
        load_sharded_state,
        remove_checkpoint,
        save_sharded_checkpoint,
    )
    from coqat.train.distributed import DistInfo
    from coqat.train.fsdp import device_mesh, shard_model

    model = shard_model(_tiny_model(), device_mesh(DistInfo(), torch.device("cpu")))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (4, 17))
    model(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    path = tmp_path / "checkpoint.pt"
    for step in (5, 9):  # the second save replaces the first folder
        save_sharded_checkpoint(path, {"step": step, "info": {"a": 1}}, model, opt, DistInfo())
    assert [d.name for d in tmp_path.glob("*.dcp")] == ["checkpoint.pt.00000009.dcp"]
    sd = load_checkpoint(path)
    assert sd["step"] == 9 and sd["info"] == {"a": 1} and sd["sharded"].endswith("9.dcp")
    plain = _tiny_model(seed=1)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    load_sharded_state(sd["sharded"], plain, plain_opt)
    sharded = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(p, sharded[name].full_tensor()), name
        st, ref = plain_opt.state[p], opt.state[sharded[name]]
        assert torch.equal(st["exp_avg_sq"], ref["exp_avg_sq"].full_tensor()), name
    remove_checkpoint(path)
    assert not list(tmp_path.glob("checkpoint.pt*"))


# ------------------------------------------------------------------------------- pieces
def test_strategy_auto_shards_what_does_not_fit_comfortably():
    from coqat.train.distributed import resolve_strategy

    gib = 1 << 30
    assert resolve_strategy("fsdp", 10**9, 1, 80 * gib) == "none"  # one process: nothing
    assert resolve_strategy("auto", 10**9, 2, None) == "ddp"  # CPU
    assert resolve_strategy("auto", 2 * 10**9, 2, 141 * gib) == "ddp"  # 32 GB of 141
    assert resolve_strategy("auto", 2 * 10**9, 2, 40 * gib) == "fsdp"  # 32 GB of 40
    assert resolve_strategy("ddp", 10**11, 2, 40 * gib) == "ddp"


def test_gradient_buckets():
    from coqat.train.distributed import buckets

    ts = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.float64)]
    assert buckets(ts, bucket_bytes=80) == [[0, 1], [2], [3]]
    assert buckets(ts, bucket_bytes=1 << 20) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("n", [4, 5, 1])
def test_rank_share_in_lockstep(n):
    from coqat.train.distributed import DistInfo, rank_share

    shares = [list(rank_share(list(range(n)), DistInfo(r, 2), lockstep=True)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == math.ceil(n / 2)
    counted = sorted(b for s in shares for b, c in s if c)
    assert counted == list(range(n))
    free = [list(rank_share(list(range(n)), DistInfo(r, 2))) for r in (0, 1)]
    assert sum(len(s) for s in free) == n


def test_optimizer_state_by_name():
    from coqat.train.fsdp import optimizer_state_by_name

    osd = {"state": {0: {"m": 1}, 2: {"m": 3}},
           "param_groups": [{"params": [0, 1], "lr": 1}, {"params": [2], "lr": 2}]}
    out = optimizer_state_by_name(osd, ["a", "b", "c"])
    assert out["state"] == {"a": {"m": 1}, "c": {"m": 3}}
    assert [g["params"] for g in out["param_groups"]] == [["a", "b"], ["c"]]
    with pytest.raises(Exception, match="2 parameters"):
        optimizer_state_by_name({"state": {}, "param_groups": [{"params": [0, 1]}]}, ["a"])


def test_clock_separates_warmup_eval_and_steady_state(monkeypatch):
    from coqat.train import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    state: dict = {}
    c = timing.Clock(lambda: state, None)
    c.start(0)
    now[0] = 10.0  # steps 1-3: compilation
    c.lap(3)
    now[0] = 12.0  # steps 4-6: 2 s of training ...
    t0 = c.begin()
    now[0] = 15.0  # ... and a 3 s evaluation inside the lap
    c.end("eval", t0)
    c.lap(6)
    s = c.summary(tokens_per_step=100)
    assert s["wall_warmup"] == 10.0 and s["wall_eval"] == 3.0
    assert s["tokens_per_s_steady"] == pytest.approx(300 / 2.0)
