"""The generator's own CPU use: a process at a full core can no longer keep its schedule.

`CpuUse.sample()` (called every second or so) takes the process's CPU time since the last call
over the wall time since then: the share of one core the generator used in that interval.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CpuUse:
    def __init__(
        self, clock: Callable[[], float], cpu_clock: Callable[[], float] = time.process_time
    ):
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.shares: list[float] = []  # one per interval: bounded by the run's length in seconds
        self._last = (clock(), cpu_clock())

    def sample(self) -> None:
        wall, cpu = self.clock(), self.cpu_clock()
        last_wall, last_cpu = self._last
        if wall - last_wall > 0.1:  # shorter intervals say little
            self.shares.append((cpu - last_cpu) / (wall - last_wall))
            self._last = (wall, cpu)

    def summary(self) -> dict[str, Any]:
        """Mean and largest share of one core over the intervals sampled."""
        n = len(self.shares)
        return {
            "samples": n,
            "mean": sum(self.shares) / n if n else 0.0,
            "max": max(self.shares, default=0.0),
        }
