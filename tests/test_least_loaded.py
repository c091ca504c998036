"""The O(log n) join-shortest-queue router picks what min() over the fleet picks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simulator.least_loaded import LeastLoaded


class _Replica:
    def __init__(self) -> None:
        self.load = 0
        self.watch: Callable[[], None] | None = None

    def change(self, delta: int) -> None:
        self.load += delta
        assert self.watch is not None
        self.watch()


def test_picks_the_least_loaded_first_in_fleet_order() -> None:
    rng = np.random.default_rng(1)
    fleet = [_Replica() for _ in range(13)]
    router = LeastLoaded(fleet)
    for _ in range(5000):
        assert router.pick() is min(fleet, key=lambda r: r.load)
        if rng.random() < 0.55:
            router.pick().change(+1)
        else:
            busy = [r for r in fleet if r.load > 0]
            if busy:
                busy[int(rng.integers(len(busy)))].change(-1)
