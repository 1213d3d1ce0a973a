"""Benchmark: QATLaw fit on 1,000 synthetic runs + 200 cluster-bootstrap resamples (target <= 60 s
on 2 CPU cores) and the cold start of ``coqat plan`` (target <= 0.5 s each: the default law, a
fitted law with its 200 bootstrap samples, the same law without them).

    python bench/bench_law.py [--jobs 2] [--boot 200] [--out bench_law.json]

Every figure printed is judged against its target (PASS/FAIL per line); the exit status is 1 if
any fails. Targets are wall-clock seconds (cold starts: the best of several subprocess runs); the
CPU seconds used are printed beside them (fit + bootstrap: summed over both processes), which other
load on a shared machine inflates less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIT_TOTAL_S = 60.0  # fit + bootstrap, 2 cores
COLD_START_S = 0.5  # every `coqat plan` cold start
MAX_REL_ERR = 0.01  # in-sample mean relative error of the fit on data with 0.5% noise
MIN_BOOT_CONVERGED = 0.95  # share of bootstrap refits that converge


def cold_start(args: list[str], repeats: int = 5) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run) of ``coqat plan ARGS --json``."""
    cmd = [sys.executable, "-m", "coqat.plan.cli", "plan", *args, "--json"]
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        best = min(best, (wall, cpu))
    return best


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--out", help="write the figures and verdicts as JSON here")
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
    t0, c0 = time.perf_counter(), _cpu()
    law = QATLaw().fit(runs)
    t_fit, c_fit = time.perf_counter() - t0, _cpu() - c0
    t1 = time.perf_counter()
    law.bootstrap(runs, n_boot=a.boot, n_jobs=a.jobs)
    t_boot, c_boot = time.perf_counter() - t1, _cpu() - c0 - c_fit
    plan = ["--params", "30M", "--tokens", "3e9", "--bits", "4"]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "law.json")
        law.save(p)
        cold_default = cold_start(plan)
        cold_boot = cold_start([*plan, "--law", p])
        law.bootstrap_ = None
        p2 = os.path.join(d, "law_noboot.json")
        law.save(p2)
        cold_noboot = cold_start([*plan, "--law", p2])
    n_conv = law.bootstrap_info_["n_converged"]
    rel = law.fit_report_["mean_rel_err"]
    # (name, value, target text, passed)
    boot_name = f"plan cold start, fitted law + {a.boot} bootstrap samples (s)"
    checks = [
        (f"fit_s + bootstrap_s (1,000 runs, {a.boot} resamples, {a.jobs} jobs)",
         round(t_fit + t_boot, 2), f"<= {FIT_TOTAL_S:g} s", t_fit + t_boot <= FIT_TOTAL_S),
        ("fit converged", law.converged, "true", bool(law.converged)),
        ("bootstrap refits converged", f"{n_conv}/{a.boot}", f">= {MIN_BOOT_CONVERGED:.0%}",
         n_conv >= MIN_BOOT_CONVERGED * a.boot),
        ("fit mean relative error (data noise 0.5%)", round(rel, 5), f"<= {MAX_REL_ERR:g}",
         rel <= MAX_REL_ERR),
        ("plan cold start, default law (s)", round(cold_default[0], 3), f"<= {COLD_START_S:g} s",
         cold_default[0] <= COLD_START_S),
        (boot_name, round(cold_boot[0], 3), f"<= {COLD_START_S:g} s", cold_boot[0] <= COLD_START_S),
        ("plan cold start, fitted law without samples (s)", round(cold_noboot[0], 3),
         f"<= {COLD_START_S:g} s", cold_noboot[0] <= COLD_START_S),
    ]  # fmt: skip
    cpu = {
        checks[0][0]: c_fit + c_boot,
        "plan cold start, default law (s)": cold_default[1],
        boot_name: cold_boot[1],
        "plan cold start, fitted law without samples (s)": cold_noboot[1],
    }
    width = max(len(c[0]) for c in checks)
    for name, value, target, ok in checks:
        extra = f"  (CPU {cpu[name]:.3f} s)" if name in cpu else ""
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {value!s:>9}  target {target}{extra}")
    print(f"fit {t_fit:.2f} s, bootstrap {t_boot:.2f} s; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    failed = [c[0] for c in checks if not c[3]]
    print("ALL PASS" if not failed else f"{len(failed)} FAIL: " + "; ".join(failed))
    if a.out:
        from coqat.provenance import git_commit

        Path(a.out).write_text(json.dumps({
            "provenance": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "commit": git_commit(), "host": platform.node(),
                           "cpus": os.cpu_count(), "command": " ".join(sys.argv)},
            "fit_s": t_fit, "bootstrap_s": t_boot,
            "checks": [{"name": n, "value": v, "target": t, "pass": ok}
                       for n, v, t, ok in checks],
            "cold_start_cpu_s": cpu,
        }, indent=2) + "\n")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
