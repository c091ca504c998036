"""Join-shortest-queue over a fleet in O(log n) a change, not O(n) a request.

The fleet's replicas say when their load may have changed (`watch`); the router keeps (load,
index, version) entries in a heap, the stale ones dropped when they surface. It picks what
`min(fleet, key=load)` picks: the least-loaded replica, the first in fleet order on ties.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar


class Loaded(Protocol):
    @property
    def load(self) -> int:
        """Sequences queued or running."""
        ...

    watch: Callable[[], None] | None  # called after the load may have changed


R = TypeVar("R", bound=Loaded)


class LeastLoaded(Generic[R]):
    def __init__(self, fleet: Sequence[R]):
        self._fleet = list(fleet)
        self._version = [0] * len(self._fleet)
        self._heap: list[tuple[int, int, int]] = []
        self._rebuild()
        for i, replica in enumerate(self._fleet):
            replica.watch = self._watcher(i)

    def _watcher(self, i: int) -> Callable[[], None]:
        replica, version, heap = self._fleet[i], self._version, self._heap

        def changed() -> None:
            version[i] += 1
            heapq.heappush(heap, (replica.load, i, version[i]))

        return changed

    def _rebuild(self) -> None:
        self._heap[:] = [(r.load, i, self._version[i]) for i, r in enumerate(self._fleet)]
        heapq.heapify(self._heap)

    def pick(self) -> R:
        heap, version = self._heap, self._version
        if len(heap) > 4 * len(version) + 64:  # mostly stale entries
            self._rebuild()
        while True:
            _, i, v = heap[0]
            if v == version[i]:
                return self._fleet[i]
            heapq.heappop(heap)
