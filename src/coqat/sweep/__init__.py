"""Sweeps: grids of FP -> QAT runs with shared FP trunks, a crash-safe SQLite results store,
local and SLURM executors, progress display and an HTML report.

    from coqat.sweep import load_spec, expand, plan_sweep, run_sweep, Store, build_report
    runs = expand(load_spec("examples/sweeps/tiny.yaml"))
    print(plan_sweep(runs).summary())
    run_sweep("examples/sweeps/tiny.yaml", "runs/tiny.db", "runs/tiny", slots=1)
    Store("runs/tiny.db").export("runs/tiny.csv")

Importing this package does not import torch (the real engine, ``coqat.train.run``, is imported
by the workers that train).
"""

from coqat.sweep.keys import code_version, data_hash, run_key, trunk_key
from coqat.sweep.spec import SweepSpec, expand, load_spec, spec_from_dict, tokens_for_s
from coqat.sweep.store import SCHEMA_VERSION, Store, StoreError
from coqat.sweep.tree import SweepPlan, plan_sweep


def run_sweep(*args, **kwargs):
    """See :func:`coqat.sweep.executor.run_sweep`."""
    from coqat.sweep.executor import run_sweep as _run

    return _run(*args, **kwargs)


def build_report(*args, **kwargs):
    """See :func:`coqat.sweep.report.build_report`."""
    from coqat.sweep.report import build_report as _b

    return _b(*args, **kwargs)


__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "SweepPlan",
    "SweepSpec",
    "build_report",
    "code_version",
    "data_hash",
    "expand",
    "load_spec",
    "plan_sweep",
    "run_key",
    "run_sweep",
    "spec_from_dict",
    "tokens_for_s",
    "trunk_key",
]
