"""Compile the fast core before its first use, saying so: numba compiles it once per checkout
(about a minute on 2 cores) and caches the machine code beside the sources.

`python -m simulator.fast.warm` does it (make's install step runs it); the commands that
simulate call `warm` first, so a first forecast says why it waits instead of going quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from scenarios.plan import RequestSpec
from simulator.engine.core import EngineConfig


def compiled() -> bool:
    """Whether numba's cache holds the kernel compiled from these sources (importing the
    kernel clears a cache that another version of them left)."""
    from simulator.fast import kernel

    cache = getattr(kernel.run, "_cache", None)  # none with NUMBA_DISABLE_JIT: nothing to do
    if cache is None:
        return True
    return any(Path(cache._cache_path).glob("kernel.run-*.nbi"))


def warm(say: Callable[[str], None]) -> None:
    """Compile the kernel now, with a line through `say`, unless it is compiled already."""
    if compiled():
        return
    from simulator.fast.sim import simulate_fast

    say("compiling the fast simulator core (once per checkout: about a minute on 2 cores)")
    began = time.monotonic()
    plan = [RequestSpec(str(i), 0.1 * i, 20, 5) for i in range(4)]  # every function it calls
    simulate_fast(plan, EngineConfig())
    say(f"compiled the fast simulator core in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    warm(print)
