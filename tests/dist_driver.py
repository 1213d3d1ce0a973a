"""Run under ``torchrun`` by tests/test_distributed.py: several tiny runs in one launch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_driver.py \
        DATA OUT [full|partial|resume] ...

Every mode trains the config that ``config(data, strategy)`` builds (tiny model, 4-bit QAT over
half the run, a checkpoint every 8 steps):

* ``full STRATEGY DIR``: ``execute`` the run in DIR;
* ``partial STRATEGY DIR STEP``: train to QAT step STEP, write the checkpoint a killed run would
  have left in DIR (config.json, checkpoint.pt) and stop;
* ``copy SRC DST``: copy a run folder (rank 0).
Modes chain: ``full fsdp a partial fsdp b 20 copy b c full fsdp b`` runs four steps in order.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

TOKENS = 8 * 32 * 24  # 24 steps of 8 x 32 tokens; FP 12, QAT 12


def config(data: str, strategy: str = "auto"):
    from helpers import tiny_run_config

    return tiny_run_config(data, **{
        "tokens": TOKENS, "qat.fraction": 0.5, "checkpoint_every": 2048,
        "dist.strategy": strategy,
    })  # fmt: skip


def partial(cfg, run_dir: Path, stop: int) -> None:
    """Train ``cfg`` like ``execute`` up to step ``stop`` (in the QAT phase) and save the
    checkpoint there, as a run killed after that checkpoint leaves it."""
    from coqat.config import atomic_write_text, to_dict
    from coqat.train.run import CHECKPOINT, Trainer, _run_steps

    tr = Trainer(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if tr.dist.main:
        atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    steps = {"eval_steps": set(), "ckpt_steps": set(), "ckpt_path": None, "log": None}
    _run_steps(tr, tr.plan.fp_steps, phase="fp", **steps)
    tr.info["loss_fp"] = tr.evaluate()
    tr.info["loss_ptq"] = tr.evaluate_ptq()
    tr.enter_qat()
    _run_steps(tr, stop, phase="qat", **steps)
    tr.save(run_dir / CHECKPOINT)


def gloo_threads(wait: float = 2.0) -> list[str]:
    """Names of gloo's threads still running in this process (Linux's /proc; none elsewhere),
    after up to ``wait`` seconds for joined threads to leave the listing."""
    tasks = Path("/proc/self/task")
    deadline = time.monotonic() + wait
    while True:
        names = []
        for t in tasks.glob("*/comm"):
            try:
                names.append(t.read_text().strip())
            except OSError:  # a thread that just ended
                pass
        left = [n for n in names if "gloo" in n]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    from coqat.train.distributed import barrier, init_distributed, shutdown_distributed
    from coqat.train.run import execute

    data, out, args = argv[0], Path(argv[1]), argv[2:]
    info = init_distributed("cpu")
    while args:
        mode = args.pop(0)
        if mode == "full":
            strategy, name = args.pop(0), args.pop(0)
            execute(config(data, strategy), out / name)
        elif mode == "partial":
            strategy, name, stop = args.pop(0), args.pop(0), int(args.pop(0))
            partial(config(data, strategy), out / name, stop)
        elif mode == "copy":
            src, dst = args.pop(0), args.pop(0)
            if info.main:
                shutil.copytree(out / src, out / dst)
            barrier(info)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    shutdown_distributed()
    # a gloo thread still running when the interpreter finalizes can abort the process
    # (coqat.train.distributed.shutdown_distributed): every one must be gone here
    if left := gloo_threads():
        raise SystemExit(f"gloo threads still running after shutdown_distributed: {left}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
