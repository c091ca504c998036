"""Which replica a request goes to: one `Router` with a policy, as a load balancer picks one.

- `random`: uniformly, from a seeded generator.
- `round_robin`: each replica in turn.
- `least_outstanding`: fewest requests running or queued (join-shortest-queue; the first on ties).
- `least_kv`: the emptiest KV cache (then fewest outstanding).
- `prefix_affinity`: the replica that last served the longest run of the request's prefix
  segments, so requests sharing a prefix meet its cached blocks; when that replica holds
  `overload` x max_num_seqs requests or more and another holds fewer, or no replica has seen the
  prefix, the least outstanding one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from simulator.engine import Engine

Routing = Literal["random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"]
ROUTINGS: tuple[str, ...] = get_args(Routing)
Prefix = tuple[tuple[int, int], ...]


def _least_outstanding(engines: Sequence[Engine]) -> int:
    return min(range(len(engines)), key=lambda i: engines[i].load)


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

    def choose(self, engines: Sequence[Engine], prefix: Prefix = ()) -> int:
        """The index in `engines` (not empty) the request goes to."""
        policy = self.policy
        if policy == "least_outstanding":
            return _least_outstanding(engines)
        if policy == "round_robin":
            self._turn += 1
            return (self._turn - 1) % len(engines)
        if policy == "random":
            return int(self._rng.integers(len(engines)))
        if policy == "least_kv":
            return min(range(len(engines)), key=lambda i: (engines[i].kv.num_used, engines[i].load))
        return self._affine(engines, prefix)

    def _affine(self, engines: Sequence[Engine], prefix: Prefix) -> int:
        chains = _chains(prefix)
        index = {id(e): i for i, e in enumerate(engines)}
        least = _least_outstanding(engines)
        chosen = least
        for chain in reversed(chains):  # the longest run a present replica served
            owner = self._owner.get(chain)
            if owner is not None and id(owner) in index:
                i = index[id(owner)]
                full = engines[i].load >= self._overload * engines[i].config.max_num_seqs
                if not (full and engines[least].load < engines[i].load):
                    chosen = i
                break
        for chain in chains:
            self._owner[chain] = engines[chosen]
        return chosen
