"""The reference experiment's slice runner on CPU: concurrent workers claim units, grids wait for
their size's LR sweep and use its best lr, a split cell shares its trunk across workers, and a
re-run with --done skips finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reference" / "run_slice.py"


def _run(data, out, work, *extra):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--slice",
        "smoke",
        "--out",
        str(out),
        "--work",
        str(work),
        "--workers",
        "2",
        "--eff",
        "1000",
        *extra,
    ]
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    path = out / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_concurrent_slice_and_done_skip(tiny_data, tmp_path):
    recs = _run(tiny_data, tmp_path / "out", tmp_path / "work")
    lr = [r for r in recs if r["experiment"] == "lr_sweep"]
    grid = [r for r in recs if r["experiment"] == "grid"]
    assert sorted(r["lr"] for r in lr) == [1e-3, 6e-3]
    assert sorted(round(r["f_requested"], 2) for r in grid) == [0.0, 0.5, 1.0]
    best = min(lr, key=lambda r: r["loss"])["lr"]
    # the grid waited for the sweep and took its best (BASE's lr, 3e-3, is not in the sweep)
    assert all(r["lr"] == best for r in grid)
    assert len({r["trunk"] for r in grid}) == 1 and all(r["status"] == "done" for r in recs)
    # the split cell: part 0 trained the trunk and ran f = 0.5, part 1 ran f = 1 and f = 0 (the
    # latter from the trunk checkpoint part 0 wrote)
    part = {round(r["f_requested"], 2): r["part"] for r in grid}
    assert part == {0.5: 0, 1.0: 1, 0.0: 1}
    f0 = next(r for r in grid if r["f_requested"] == 0.0)
    assert f0["branched_from"] and f0["branch_step"] > 0
    # every unit ran exactly once, whichever worker claimed it
    assert len({r["config_hash"] for r in recs}) == len(recs) == 5
    # a second call that knows the first call's results trains nothing
    again = _run(
        tiny_data,
        tmp_path / "out2",
        tmp_path / "work2",
        "--done",
        str(tmp_path / "out" / "results.jsonl"),
    )
    assert again == []


def _slices():
    sys.path.insert(0, str(SCRIPT.parent))
    import run_slice

    return run_slice


def test_simulated_schedule_predicts_the_skipped_cell():
    """Session 4's s12 listed two 4m cells (split 2) before a 12m cell (split 2): four workers
    took the 4m parts, and when the first freed (~220 s) the 12m part 0 no longer fitted the
    budget, so the 12m cell never ran although the worker-seconds fitted. The simulation must
    say so, and must run it once the budget allows."""
    rs = _slices()
    s12 = rs.SLICES["s12"]
    plan = rs.simulate(s12, 0.22, 4, 533)
    assert set(plan) == {0, 1, 2, 3}  # units 4, 5: the 12m cell's parts, skipped
    assert all(start == 0.0 for _, start, _ in plan.values())
    roomy = rs.simulate(s12, 0.22, 4, 2000)
    assert set(roomy) == set(range(6))
    w, start, end = roomy[4]
    assert start == min(e for _, _, e in plan.values())  # the first worker to free takes it
    assert roomy[5][2] >= start + rs.unit_seconds(rs.slice_units(s12)[5], s12, 0.22) - 1e-6
    # s10 and s11 ran every unit in session 4; the simulation agrees
    for name in ("s10", "s11"):
        assert len(rs.simulate(rs.SLICES[name], 0.22, 4, 533)) == len(
            rs.slice_units(rs.SLICES[name])
        )
