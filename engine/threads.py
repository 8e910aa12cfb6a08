"""How many intra-op threads a CPU training run uses.

PyTorch's default is one OpenMP thread per core. When another process keeps a core busy, the threads of each
parallel region wait for the slowest one at every barrier, and a 2-core CPU ran the demo about 5x slower
(docs/training.md). The default here is the number of cores that were idle when the run started (sampled from
/proc/stat over a fraction of a second), so a quiet machine keeps every core and a busy one does not oversubscribe.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """{cpu: (idle, total)} jiffies from /proc/stat, or None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (v[3] + v[4], sum(v))  # idle + iowait, all
    return out or None


def idle_cores(cpus: list[int], seconds: float = 0.3) -> float | None:
    """How many of `cpus` were idle over the next `seconds` (e.g. 1.0 of 2 when another job uses one)."""
    a = _cpu_times(cpus)
    if a is None:
        return None
    time.sleep(seconds)
    b = _cpu_times(cpus)
    if b is None:
        return None
    idle = 0.0
    for cpu, (i1, t1) in b.items():
        i0, t0 = a.get(cpu, (i1, t1))
        idle += (i1 - i0) / (t1 - t0) if t1 > t0 else 1.0
    return idle


def choose_threads(cores: int, idle: float | None, processes: int = 1) -> int:
    """Threads per process: the idle cores (rounded) shared among `processes`, at least 1, at most `cores`."""
    per = max(1, cores // max(1, processes))
    if idle is None:
        return per
    return max(1, min(per, int(idle / max(1, processes) + 0.5)))


def set_cpu_threads(requested: int, processes: int = 1) -> str:
    """Set torch's intra-op thread count for a CPU run; returns the one line that says what and how to change it.

    `requested` > 0 is used as given; 0 = automatic, unless OMP_NUM_THREADS / MKL_NUM_THREADS is set (then torch
    already follows it and nothing changes).
    """
    import torch

    how = "--threads N or OMP_NUM_THREADS=N chooses"
    if requested > 0:
        torch.set_num_threads(requested)
        return f"CPU threads: {requested} (--threads)"
    env = next((v for v in ENV_VARS if os.environ.get(v)), None)
    if env is not None:
        return f"CPU threads: {torch.get_num_threads()} ({env}={os.environ[env]})"
    cpus = usable_cores()
    idle = idle_cores(cpus)
    n = choose_threads(len(cpus), idle, processes)
    torch.set_num_threads(n)
    seen = f"{idle:.1f} of {len(cpus)} cores idle" if idle is not None else f"{len(cpus)} cores"
    return f"CPU threads: {n} ({seen} at start; {how})"
