"""Which replica a request goes to: one `Router` with a policy, as a load balancer picks one.

- `random`: uniformly, from a seeded generator.
- `round_robin`: each replica in turn.
- `least_outstanding`: fewest requests running or queued (join-shortest-queue; the first on ties).
- `least_kv`: the emptiest KV cache (then fewest outstanding).
- `prefix_affinity`: cache-aware, as SGLang's router and llm-d's precise prefix-cache scorer
  route: the replica whose prefix cache holds the longest run of the request's prompt (the
  engines' own caches, as their KV events tell such a router, and the prompts of the requests
  in flight there, as SGLang's router records a prefix when it routes it), if that run covers
  at least `min_match` of the prompt (the least loaded of those holding it); else, or when
  that replica holds `overload` x max_num_seqs requests or more and another holds fewer, the
  least outstanding one (of those, the one caching the fewest blocks: the most room for a new
  prefix). A prefix every replica caches (a common system prompt) then decides nothing: new
  conversations spread by load, a conversation's next turns follow its history. Without
  prefix caching in the engines nothing is cached: least outstanding.

The router chooses among the engines `add`ed to it (the fleet's ready replicas), or among those
it is given. Join-shortest-queue over the added ones costs O(log n) a load change (`changed`):
(load, order, version) entries in a heap, stale ones dropped when they surface.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from simulator.engine.core import Engine, EngineSequence
from simulator.engine.kvcache import BlockKey, prefix_block_keys

Routing = Literal["random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"]
ROUTINGS: tuple[str, ...] = get_args(Routing)
Prefix = tuple[tuple[int, int], ...]


def _least_outstanding(engines: Sequence[Engine]) -> Engine:
    return min(engines, key=lambda e: e.load)


class Router:
    def __init__(
        self, policy: Routing, seed: int = 0, overload: float = 1.0, min_match: float = 0.5
    ):
        if policy not in ROUTINGS:
            raise ValueError(f"routing: must be one of {', '.join(ROUTINGS)}, got {policy!r}")
        if not overload > 0:
            raise ValueError(f"affinity_overload: must be > 0, got {overload!r}")
        if not 0 <= min_match <= 1:
            raise ValueError(f"affinity_min_match: must be in [0, 1], got {min_match!r}")
        self.policy = policy
        self._rng = np.random.default_rng(seed)
        self._turn = 0
        self._overload = overload
        self._min_match = min_match
        self.engines: list[Engine] = []  # added, in order
        self._order: dict[Engine, int] = {}
        self._version: dict[Engine, int] = {}
        self._heap: list[tuple[int, int, int, Engine]] = []  # (load, order, version, engine)
        # prefix_affinity: per replica, the prefix blocks of the requests in flight there
        self._flying: dict[Engine, dict[BlockKey, int]] = {}
        self._keys: tuple[Prefix, int, tuple[BlockKey, ...]] = ((), 0, ())  # the last computed

    def add(self, engine: Engine, order: int) -> None:
        """Route to `engine` from now on; `order` breaks ties (lowest first)."""
        self._order[engine] = order
        self._version[engine] = 0
        bisect.insort(self.engines, engine, key=self._order.__getitem__)
        self.changed(engine)

    def remove(self, engine: Engine) -> None:
        self.engines.remove(engine)
        del self._order[engine], self._version[engine]

    def placed(self, engine: Engine, seq: EngineSequence) -> None:
        """`seq` went to `engine` (prefix_affinity counts its prefix blocks there as cached)."""
        if self.policy == "prefix_affinity" and seq.prefix and engine.kv.enable_prefix_caching:
            flying = self._flying.setdefault(engine, {})
            for key in self._prefix_keys(engine, seq):
                flying[key] = flying.get(key, 0) + 1

    def released(self, engine: Engine, seq: EngineSequence) -> None:
        """`seq`, which went to `engine`, left it (finished or aborted)."""
        flying = self._flying.get(engine)
        if flying is not None and seq.prefix:
            for key in self._prefix_keys(engine, seq):
                if flying[key] == 1:
                    del flying[key]
                else:
                    flying[key] -= 1

    def _prefix_keys(self, engine: Engine, seq: EngineSequence) -> tuple[BlockKey, ...]:
        """`seq`'s full prefix blocks' keys (kept on it, as the engine's scheduler keeps them)."""
        if seq.prefix_keys is None:
            prefix, tokens, keys = self._keys
            if prefix is not seq.prefix or tokens != seq.prompt_tokens:
                keys = prefix_block_keys(seq.prefix, engine.kv.block_size, seq.prompt_tokens)
            seq.prefix_keys = keys
        return seq.prefix_keys

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

    def choose(
        self,
        prefix: Prefix = (),
        among: Sequence[Engine] | None = None,
        prompt_tokens: int | None = None,
    ) -> Engine:
        """The engine a request of `prompt_tokens` (default: its prefix's) beginning with
        `prefix` goes to, of `among` (in fleet order) or else of those added (at least one)."""
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
        return self._affine(engines, prefix, prompt_tokens)

    def _affine(self, engines: Sequence[Engine], prefix: Prefix, tokens: int | None) -> Engine:
        least = min(engines, key=lambda e: (e.load, e.kv.num_cached))
        if not prefix:
            return least
        if tokens is None:
            tokens = sum(n for _, n in prefix)
        block = engines[0].kv.block_size  # a fleet's replicas share their engine's settings
        keys = prefix_block_keys(prefix, block, tokens)
        self._keys = (prefix, tokens, keys)
        best, most = least, 0  # the longest cached run, the least loaded holding it
        for e in engines:
            held = self._held(e, keys)
            if held > most or (held == most and held and e.load < best.load):
                best, most = e, held
        if most * block < self._min_match * tokens:
            return least
        full = best.load >= self._overload * best.config.max_num_seqs
        return least if full and least.load < best.load else best

    def _held(self, engine: Engine, keys: tuple[BlockKey, ...]) -> int:
        """How many leading blocks of `keys` `engine` caches or has in flight."""
        if not engine.kv.enable_prefix_caching:
            return 0
        return engine.kv.cached_run_length(keys, self._flying.get(engine, {}))
