"""Which replica a request goes to: one `Router` with a policy, as a load balancer picks one.

- `random`: uniformly, from a seeded generator.
- `round_robin`: each replica in turn.
- `least_outstanding`: fewest requests running or queued (join-shortest-queue; the first on ties).
- `least_kv`: the emptiest KV cache (then fewest outstanding).
- `prefix_affinity`: the replica that last served the longest run of the request's prefix
  segments, so requests sharing a prefix meet its cached blocks; when that replica holds
  `overload` x max_num_seqs requests or more and another holds fewer, or no replica has seen the
  prefix, the least outstanding one.

The router chooses among the engines `add`ed to it (the fleet's ready replicas), or among those
it is given. Join-shortest-queue over the added ones costs O(log n) a load change (`changed`):
(load, order, version) entries in a heap, stale ones dropped when they surface.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Container, Sequence
from typing import Literal, get_args

import numpy as np

from simulator.engine.core import Engine

Routing = Literal["random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"]
ROUTINGS: tuple[str, ...] = get_args(Routing)
Prefix = tuple[tuple[int, int], ...]


def _least_outstanding(engines: Sequence[Engine]) -> Engine:
    return min(engines, key=lambda e: e.load)


def _chains(prefix: Prefix) -> list[tuple[int, ...]]:
    """The request's prefix runs, shortest first: (h1,), (h1, h2), ..."""
    hashes = tuple(h for h, _ in prefix)
    return [hashes[: k + 1] for k in range(len(hashes))]


class Router:
    def __init__(self, policy: Routing, seed: int = 0, overload: float = 1.0):
        if policy not in ROUTINGS:
            raise ValueError(f"routing: must be one of {', '.join(ROUTINGS)}, got {policy!r}")
        if not overload > 0:
            raise ValueError(f"affinity_overload: must be > 0, got {overload!r}")
        self.policy = policy
        self._rng = np.random.default_rng(seed)
        self._turn = 0
        self._overload = overload
        self._owner: dict[tuple[int, ...], Engine] = {}  # prefix run -> the replica that had it
        self.engines: list[Engine] = []  # added, in order
        self._order: dict[Engine, int] = {}
        self._version: dict[Engine, int] = {}
        self._heap: list[tuple[int, int, int, Engine]] = []  # (load, order, version, engine)

    def add(self, engine: Engine, order: int) -> None:
        """Route to `engine` from now on; `order` breaks ties (lowest first)."""
        self._order[engine] = order
        self._version[engine] = 0
        bisect.insort(self.engines, engine, key=self._order.__getitem__)
        self.changed(engine)

    def remove(self, engine: Engine) -> None:
        self.engines.remove(engine)
        del self._order[engine], self._version[engine]

    def changed(self, engine: Engine) -> None:
        """`engine`'s load may have changed."""
        if engine in self._version:
            self._version[engine] += 1
            entry = (engine.load, self._order[engine], self._version[engine], engine)
            heapq.heappush(self._heap, entry)

    def _shortest(self) -> Engine:
        heap, version = self._heap, self._version
        if len(heap) > 4 * len(version) + 64:  # mostly stale entries
            heap[:] = [(e.load, self._order[e], version[e], e) for e in self.engines]
            heapq.heapify(heap)
        while True:
            _, _, v, engine = heap[0]
            if version.get(engine) == v:
                return engine
            heapq.heappop(heap)

    def choose(self, prefix: Prefix = (), among: Sequence[Engine] | None = None) -> Engine:
        """The engine a request goes to, of `among` (in fleet order) or else of those added
        (at least one)."""
        engines = self.engines if among is None else among
        policy = self.policy
        if policy == "least_outstanding":
            return self._shortest() if among is None else _least_outstanding(engines)
        if policy == "round_robin":
            self._turn += 1
            return engines[(self._turn - 1) % len(engines)]
        if policy == "random":
            return engines[int(self._rng.integers(len(engines)))]
        if policy == "least_kv":
            return min(engines, key=lambda e: (e.kv.num_used / e.kv.num_blocks, e.load))
        if among is None:
            return self._affine(self._version, prefix, self._shortest())
        return self._affine(set(among), prefix, _least_outstanding(among))

    def _affine(self, present: Container[Engine], prefix: Prefix, least: Engine) -> Engine:
        chains = _chains(prefix)
        chosen = least
        for chain in reversed(chains):  # the longest run a present replica served
            owner = self._owner.get(chain)
            if owner is not None and owner in present:
                full = owner.load >= self._overload * owner.config.max_num_seqs
                if not (full and least.load < owner.load):
                    chosen = owner
                break
        for chain in chains:
            self._owner[chain] = chosen
        return chosen
