"""How late the generator's event loop wakes up: the delay any time it stamps may carry.

`LoopLag.watch()` runs on its own greenlet: it sleeps `interval_s` again and again and counts how
late each wake-up was in a fixed histogram of log-spaced bins (10 us to 10 s, about 3% wide), so
its memory stays flat however long the run. The streaming client adds, with `read`, how long each
receive's bytes waited in the kernel before the loop read them (where the kernel stamps arrivals):
a probe every 10 ms misses short stalls; every read sees them. A chunk's own time comes from the
kernel, but a loop 20 ms late reads chunks sent 10 ms apart in one receive, stamped with the last
one's arrival, and their gap is lost: `read` also counts the content chunks that came in one
receive with the chunk before them (merged), and the reads the kernel did not stamp.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import numpy as np

EDGES = np.geomspace(1e-5, 10.0, 481)  # seconds; a bin below the first edge and one above the last
_EDGES = EDGES.tolist()  # for `add`, once per receive: bisect on a list, not a numpy call


class LoopLag:
    def __init__(self, clock: Callable[[], float], interval_s: float = 0.01):
        self.clock = clock
        self.interval_s = interval_s
        self.counts = [0] * (len(EDGES) + 1)
        self.max_s = 0.0
        self.chunks = 0  # content chunks read
        self.merged = 0  # of them, read in one receive with the chunk before them
        self.unstamped = 0  # reads without the kernel's arrival time

    def add(self, lag_s: float) -> None:
        self.counts[bisect_left(_EDGES, lag_s)] += 1
        if lag_s > self.max_s:
            self.max_s = lag_s

    def read(self, waited_s: float | None, chunks: int, closed: bool = False) -> None:
        """One receive: how long its bytes waited unread (None: not stamped), and how many
        content chunks it completed. A close (a receive of no bytes) has no arrival to stamp."""
        if waited_s is not None:
            self.add(waited_s)
        elif not closed:
            self.unstamped += 1
        self.chunks += chunks
        if chunks > 1:
            self.merged += chunks - 1

    def watch(self) -> None:
        """Measure forever (kill the greenlet to stop)."""
        import gevent  # only where the generator runs (it patches the standard library)

        while True:
            before = self.clock()
            gevent.sleep(self.interval_s)
            self.add(max(0.0, self.clock() - before - self.interval_s))

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """The `q` quantile (0-1) in seconds: the upper edge of its bin (never below the truth),
        at most the largest lag seen."""
        n = self.samples
        if n == 0:
            return 0.0
        i = bisect_left(list(accumulate(self.counts)), q * n)
        return min(float(EDGES[min(i, len(EDGES) - 1)]), self.max_s)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "interval_ms": self.interval_s * 1000.0,
            "p50_ms": self.quantile(0.5) * 1000.0,
            "p99_ms": self.quantile(0.99) * 1000.0,
            "max_ms": self.max_s * 1000.0,
            "chunks": self.chunks,
            "merged": self.merged,
            "unstamped_reads": self.unstamped,
        }
