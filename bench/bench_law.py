"""Benchmark: QATLaw fit on 1,000 synthetic runs + 200 cluster-bootstrap resamples (target <= 60 s
on 2 CPU cores) and the cold start of the plan CLI (target <= 0.5 s).

    python bench/bench_law.py [--jobs 2] [--boot 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def cold_start(args: list[str], repeats: int = 5) -> float:
    cmd = [sys.executable, "-m", "coqat.plan.cli", "plan", *args, "--json"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--boot", type=int, default=200)
    a = ap.parse_args()

    from coqat.law import QATLaw
    from coqat.law.synthetic import EXAMPLE_QAT_PARAMS, synthetic_runs

    runs = synthetic_runs(
        QATLaw(EXAMPLE_QAT_PARAMS),
        S_totals=(10, 20, 50, 100, 300, 1000),
        fp_S=(5, 10, 20, 50, 100, 200, 400, 800),
        noise=0.005,
        seed=0,
    )
    assert len(runs) == 1000, len(runs)
    t0 = time.perf_counter()
    law = QATLaw().fit(runs)
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    law.bootstrap(runs, n_boot=a.boot, n_jobs=a.jobs)
    t_boot = time.perf_counter() - t1
    res = {
        "n_runs": len(runs),
        "n_boot": a.boot,
        "jobs": a.jobs,
        "fit_s": round(t_fit, 2),
        "bootstrap_s": round(t_boot, 2),
        "total_s": round(t_fit + t_boot, 2),
        "converged": law.converged,
        "boot_converged": law.bootstrap_info_["n_converged"],
        "fit_mean_rel_err": round(law.fit_report_["mean_rel_err"], 5),
    }
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "law.json")
        law.save(p)
        res["plan_cold_start_default_s"] = round(
            cold_start(["--params", "30M", "--tokens", "3e9", "--bits", "4"]), 3
        )
        res["plan_cold_start_fitted_law_200boot_s"] = round(
            cold_start(["--params", "30M", "--tokens", "3e9", "--bits", "4", "--law", p], 3), 3
        )
        law.bootstrap_ = None
        p2 = os.path.join(d, "law_noboot.json")
        law.save(p2)
        res["plan_cold_start_fitted_law_no_boot_s"] = round(
            cold_start(["--params", "30M", "--tokens", "3e9", "--bits", "4", "--law", p2], 3), 3
        )
    print(json.dumps(res, indent=2))
    ok = res["total_s"] <= 60 and res["plan_cold_start_default_s"] <= 0.5
    print("PASS" if ok else "FAIL", "(targets: fit+bootstrap <= 60 s, plan cold start <= 0.5 s)")


if __name__ == "__main__":
    main()
