"""How many threads torch uses for a CPU run.

torch starts one intra-op thread per core. On a small or busy machine those threads spin
against each other and against other processes: on a 2-core machine under load, a tiny model
trained at 470 tokens/s with 2 threads and 7,300 with 1 (2026-11-30, load average 8.5,
``coqat train --size tiny --tokens 102400 --batch-size 16 --seq-len 64 --bits 2``). Unless
``OMP_NUM_THREADS`` or ``COQAT_CPU_THREADS`` says otherwise, a CPU run uses half the usable
cores (at most 8), fewer when the 1-minute load average leaves fewer idle, and at least 1.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
MAX_AUTO_THREADS = 8
_done: list[int] = []


def auto_threads(cores: int, load: float) -> int:
    """Threads for ``cores`` usable cores at 1-minute load average ``load``."""
    idle = int(cores - load + 0.5)
    return max(1, min(cores // 2, MAX_AUTO_THREADS, idle))


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads for CPU training once per process; returns the count."""
    import torch

    if _done:
        return _done[0]
    env = os.environ.get("COQAT_CPU_THREADS")
    if env:
        n = max(1, int(env))
        torch.set_num_threads(n)
    elif os.environ.get("OMP_NUM_THREADS"):
        n = torch.get_num_threads()
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = auto_threads(cores or 1, load)
        torch.set_num_threads(n)
        log.info(
            "CPU: %d torch thread%s (%d cores, load %.1f; set COQAT_CPU_THREADS to change)",
            n, "" if n == 1 else "s", cores, load,
        )  # fmt: skip
    _done.append(n)
    return n
