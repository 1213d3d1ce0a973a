"""A fake training engine with the interface of :mod:`coqat.train.run` (no torch, no data).

``execute`` and ``train_trunk`` sleep instead of training and return result records whose losses
come from a smooth QAT-law-shaped formula (a true interior optimal fraction), so the whole sweep
machinery (store, leases, trunks, kills, export, report) can be exercised in seconds::

    coqat sweep run examples/sweeps/tiny.yaml --store /tmp/s.db --root /tmp/s --engine fake

Environment knobs (read at every call, so worker subprocesses see them):

* ``COQAT_FAKE_DELAY``: seconds per run (default 0.05); trunks take the same per branch step;
* ``COQAT_FAKE_TOKENS_PER_S``: instead of the delay, train at this rate: a run takes the tokens
  it trains itself (after its branch step when branched) / rate, a trunk segment its tokens /
  rate (and records that wall time, so the sweep's time estimates can measure it);
* ``COQAT_FAKE_CHECKPOINT_S``: save a checkpoint (``checkpoint.json`` in the run's or trunk's
  folder) every that many seconds of training, and resume from it, as the real engine does with
  ``checkpoint_every``;
* ``COQAT_FAKE_LOG``: a file to which every event is appended as one line
  (``start KEY PID``, ``end KEY PID``, ``cached KEY PID``, ``trunk DIR STEP PID``,
  ``double KEY PID`` if a run is ever completed twice);
* ``COQAT_FAKE_FAIL_SEED``: runs with this seed raise RuntimeError.

A run whose ``optim.lr >= 1`` diverges. The run's completion is an atomic ``os.link`` of
``result.json`` (it fails if the file exists), so a second completion of one run is detected.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _log(event: str, what: str) -> None:
    path = os.environ.get("COQAT_FAKE_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _sleep(total: float) -> None:
    end = time.monotonic() + total
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))


def device_name(cfg_device: str) -> str:
    """The device label of the fake engine's records."""
    return "fake"


def _rate() -> float | None:
    r = os.environ.get("COQAT_FAKE_TOKENS_PER_S")
    return float(r) if r else None


def _duration(tokens: int) -> float:
    rate = _rate()
    return tokens / rate if rate else float(os.environ.get("COQAT_FAKE_DELAY", "0.05"))


def _train(seconds: float, ckpt: Path, done_s: float, key: str) -> None:
    """Sleep ``seconds - done_s``, writing ``ckpt`` (``{"done_s": ...}``) every
    ``COQAT_FAKE_CHECKPOINT_S`` seconds."""
    from coqat.config import atomic_write_text

    every = float(os.environ.get("COQAT_FAKE_CHECKPOINT_S", "0") or 0)
    while done_s < seconds:
        chunk = min(seconds - done_s, every) if every > 0 else seconds - done_s
        _sleep(chunk)
        done_s += chunk
        if every > 0 and done_s < seconds:
            atomic_write_text(ckpt, json.dumps({"done_s": done_s}))
            _log("ckpt", key)


def fake_loss(N: float, D_fp: float, D_qat: float, bits: float) -> float:
    """A QAT-law-shaped loss: Chinchilla terms on effective tokens plus a quantization penalty
    that QAT tokens (relative to the model's bytes) reduce and FP tokens make harder."""
    base = 1.7 + 50.0 / N**0.34 + 40.0 / (D_fp + 0.7 * D_qat + 1.0) ** 0.28
    if bits >= 16:
        return base
    nb = N * bits / 8.0
    s_qat = D_qat / nb
    s_fp = D_fp / nb
    pen = 2.0 ** (-bits) * 1.6 * (1.0 + 0.15 * math.log1p(s_fp)) / (1.0 + s_qat**0.6)
    return base + pen


def record(cfg, status: str = "done") -> dict[str, Any]:
    """A result record with the fields of :func:`coqat.train.run.execute`'s."""
    from coqat.config import config_hash
    from coqat.train.phases import plan_phases, run_accounting

    plan = plan_phases(cfg)
    acct = run_accounting(cfg)
    bits = cfg.qat.bits
    n = acct["N"]
    loss = fake_loss(n, plan.d_fp, plan.d_qat, bits)
    loss_fp = fake_loss(n, plan.d_fp, 0, 16.0) if plan.d_fp else float("nan")
    loss_ptq = loss_fp + 2.0 ** (-bits) * 6 if plan.d_fp and bits < 16 else float("nan")
    if plan.qat_steps == 0 and bits < 16:
        loss = loss_ptq
    elif plan.schedule == "standard" and 0 < plan.qat_steps < plan.steps:
        loss += 0.02 * plan.fraction * (1 - plan.fraction)  # fusion helps a little
    if status != "done":
        loss = float("nan")
    delay = float(os.environ.get("COQAT_FAKE_DELAY", "0.05"))
    return {
        "status": status,
        "loss": loss,
        "loss_fp": loss_fp,
        "loss_ptq": loss_ptq,
        **acct,
        "wall_fp": delay * (1 - plan.fraction),
        "wall_qat": delay * plan.fraction,
        "tokens_per_s": plan.tokens / max(delay, 1e-9),
        "device": "fake",
        "commit": "",
        "config_hash": config_hash(cfg),
        "engine": "fake",
    }


def execute(cfg, run_dir, *, resume: bool = True, start_from=None, progress: bool = False) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    res_path = run_dir / "result.json"
    key = run_dir.name
    if resume and res_path.exists():
        _log("cached", key)
        return json.loads(res_path.read_text())
    if start_from is not None:
        from coqat.train.phases import plan_phases

        got = json.loads(Path(start_from).read_text())["step"]
        want = plan_phases(cfg).branch_step
        if got != want:
            raise RuntimeError(f"start_from is at step {got}, the run branches at {want}")
    _log("start", key)
    from coqat.train.phases import plan_phases

    own = cfg.tokens - (plan_phases(cfg).branch_step * cfg.tokens_per_step if start_from else 0)
    seconds = _duration(own)
    ckpt = run_dir / "checkpoint.json"
    done_s = json.loads(ckpt.read_text())["done_s"] if resume and ckpt.exists() else 0.0
    _train(seconds, ckpt, done_s, key)
    fail_seed = os.environ.get("COQAT_FAKE_FAIL_SEED")
    if fail_seed is not None and cfg.seed == int(fail_seed):
        raise RuntimeError(f"fake failure for seed {cfg.seed}")
    rec = record(cfg, "diverged" if cfg.optim.lr >= 1.0 else "done")
    f = plan_phases(cfg).fraction
    rec.update(wall_fp=seconds * (1 - f), wall_qat=seconds * f,
               tokens_per_s=own / max(seconds, 1e-9))
    if start_from is not None:
        rec["branched_from"] = str(start_from)
    tmp = run_dir / f".result.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec))
    try:
        os.link(tmp, res_path)  # atomic, and fails if the run was completed before
    except FileExistsError:
        _log("double", key)
    finally:
        tmp.unlink(missing_ok=True)
    ckpt.unlink(missing_ok=True)
    _log("end", key)
    return rec


def train_trunk(cfg, trunk_dir, branch_steps, *, progress: bool = False) -> dict[int, Path]:
    """Sleep through the trunk to each branch step (resuming from the latest step file or the
    periodic ``checkpoint.json`` before it) and write ``step_XXXXXXXX.json`` there."""
    from coqat.config import atomic_write_text

    trunk_dir = Path(trunk_dir)
    trunk_dir.mkdir(parents=True, exist_ok=True)
    steps = sorted({int(s) for s in branch_steps if s > 0})
    paths = {s: trunk_dir / f"step_{s:08d}.json" for s in steps}
    ckpt = trunk_dir / "checkpoint.json"
    rate = _rate()
    every = float(os.environ.get("COQAT_FAKE_CHECKPOINT_S", "0") or 0)
    for s in steps:
        if paths[s].exists():
            continue
        have = [int(p.stem.split("_")[1]) for p in trunk_dir.glob("step_*.json")]
        at = max((k for k in have if k < s), default=0)
        if ckpt.exists():
            k = json.loads(ckpt.read_text())["step"]
            at = max(at, k) if k <= s else at
        per_step = cfg.tokens_per_step / rate if rate else (
            float(os.environ.get("COQAT_FAKE_DELAY", "0.05")) / max(s - at, 1))
        _log("segment", f"{trunk_dir.name}@{at}-{s}")
        while at < s:
            n = s - at if every <= 0 else max(1, min(s - at, int(every / per_step)))
            _sleep(n * per_step)
            at += n
            if at < s:
                atomic_write_text(ckpt, json.dumps({"step": at}))
                _log("ckpt", f"{trunk_dir.name}@{at}")
        atomic_write_text(paths[s], json.dumps({"step": s}))
        _log("trunk", f"{trunk_dir.name}@{s}")
    return paths
