"""Intra-op threads for a one-process run: one per core the process may use, less one per data-loader worker.

Two 2-thread jobs on two cores ran a recipe 20x slower than each with one thread, and loader workers beside as many
intra-op threads as cores oversubscribe the same way; torch's default (every core of the machine, not those this
process may use) knows neither. ``threads=N`` or ``OMP_NUM_THREADS`` overrides the choice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose_threads(requested: int | None, workers: int, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(intra-op threads, why): ``requested`` if given, else ``OMP_NUM_THREADS`` if set, else the usable cores less
    one per loader worker, at least 1."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive integer or null (one per usable core), got {requested!r}")
        return requested, f"threads={requested}"
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"]), f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}"
    cores = usable_cores()
    return max(1, cores - workers), f"{cores} usable cores - {workers} loader workers"


def other_runnable(samples: int = 5, interval: float = 0.01) -> int | None:
    """Runnable threads of other processes on the machine now (Linux ``/proc/loadavg``, less this reader): the
    fewest over a few samples, so a busy job counts and a passing blip does not. None where it cannot be read.
    The load average would count this process's own earlier work, e.g. the first stage before the LDM."""
    counts = []
    for _ in range(samples):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return None
        counts.append(int(running) - 1)
        time.sleep(interval)
    return max(0, min(counts))


def busy_warning(threads: int, cores: int, others: int) -> str | None:
    """A warning when ``others`` runnable threads of other jobs and this run's ``threads`` oversubscribe ``cores``."""
    if others + threads <= cores:
        return None
    return (f"{others} thread(s) of other jobs are running on these {cores} cores: with {threads} more, threads wait "
            f"for each other; with two jobs on two cores give each threads=1 (or OMP_NUM_THREADS=1)")
