"""The paged KV cache: blocks grow with tokens, prefix blocks are shared, freed ones evicted LRU."""

from __future__ import annotations

import pytest

from scenarios.plan import RequestSpec
from simulator.engine.core import Engine, EngineConfig, EngineSequence, StepCost
from simulator.engine.kvcache import BlockManager, prefix_block_keys
from simulator.replay.sim import simulate


def test_blocks_grow_as_tokens_are_computed_and_are_freed_at_the_end() -> None:
    eng = Engine(EngineConfig(kv_cache_tokens=160, block_size=16))  # 10 blocks
    seq = EngineSequence("a", 10, 30)
    eng.add(seq)
    k = 0
    while eng.has_work:
        step = eng.plan_step()
        k += 1
        # after step k the KV holds the prompt and k - 1 generated tokens: 9 + k
        assert seq.num_blocks == -(-(9 + k) // 16) and eng.kv.num_used == seq.num_blocks
        eng.complete(step)
    assert k == 30 and eng.kv.num_free == 10 and seq.num_blocks == 0


def test_prefix_keys_cover_full_blocks_of_a_chain() -> None:
    keys = prefix_block_keys(((1, 40), (2, 40)), 16, 1000)  # 80 tokens: 5 full blocks
    other = prefix_block_keys(((1, 40), (3, 40)), 16, 1000)
    assert len(keys) == 5
    # blocks 0 and 1 (tokens 0-31) lie in segment 1; block 2 (32-47) reaches into segment 2
    assert keys[:2] == other[:2] and set(keys[2:]).isdisjoint(other)
    assert prefix_block_keys(((1, 40), (2, 40)), 16, 50) == keys[:3]  # cut at the prompt's end


def _prefill_tokens_of(eng: Engine, seq: EngineSequence) -> int:
    """Adds `seq` and runs it to its first token; the prompt tokens it computed."""
    eng.add(seq)
    total = 0
    while seq.generated == 0:
        step = eng.plan_step()
        if seq in step.prefill:
            total += seq.num_scheduled
        eng.complete(step)
    return total


def test_a_shared_prefix_is_prefilled_once() -> None:
    eng = Engine(EngineConfig(block_size=16, enable_prefix_caching=True))
    system = ((111, 64),)  # a 64-token system prompt: 4 full blocks
    a = EngineSequence("a", 100, 50, system)
    assert _prefill_tokens_of(eng, a) == 100
    b = EngineSequence("b", 80, 50, system)
    assert _prefill_tokens_of(eng, b) == 16 and b.cached_prompt_tokens == 64
    # b holds a's 4 prefix blocks, ref-counted, one of its own for tokens 64-79, and (its
    # blocks being full) one for its next token's KV
    assert len(a.cached_keys) == 4 and b.cached_keys == a.cached_keys and b.num_blocks == 6
    c = EngineSequence("c", 100, 50, ((222, 64),))  # another chain shares nothing
    assert _prefill_tokens_of(eng, c) == 100 and c.cached_prompt_tokens == 0
    assert set(c.cached_keys).isdisjoint(a.cached_keys) and c.num_blocks == 7
    assert _prefill_tokens_of(eng, EngineSequence("d", 100, 50, ((5, 40), (333, 24)))) == 100
    e = EngineSequence(
        "e", 100, 50, ((5, 40), (444, 24))
    )  # shares d's blocks 0-1 (tokens 0-31) only
    assert _prefill_tokens_of(eng, e) == 100 - 32


def test_without_prefix_caching_nothing_is_shared() -> None:
    eng = Engine(EngineConfig(block_size=16))
    system = ((111, 64),)
    assert _prefill_tokens_of(eng, EngineSequence("a", 100, 50, system)) == 100
    assert _prefill_tokens_of(eng, EngineSequence("b", 100, 50, system)) == 100


def test_freed_prefix_blocks_stay_cached_until_evicted_lru() -> None:
    eng = Engine(EngineConfig(kv_cache_tokens=160, block_size=16, enable_prefix_caching=True))
    system = ((7, 64),)
    a = EngineSequence("a", 64 + 8, 1, system)
    assert _prefill_tokens_of(eng, a) == 72 and not eng.has_work
    assert eng.kv.num_free == 10 and eng.kv.num_cached == 4  # free, but still cached
    b = EngineSequence("b", 64 + 8, 1, system)
    assert _prefill_tokens_of(eng, b) == 8  # reused after a finished
    # a request needing 7 fresh blocks evicts one of the 4 cached: the chain's tail first
    assert _prefill_tokens_of(eng, EngineSequence("x", 7 * 16, 1)) == 112
    assert eng.kv.num_cached == 3
    assert _prefill_tokens_of(eng, EngineSequence("c", 64 + 8, 1, system)) == 72 - 48


def test_a_shared_block_is_free_once_its_last_holder_frees_it() -> None:
    """Blocks conserve: free + the distinct blocks held = the cache, however sharers leave."""
    kv = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    a, b = EngineSequence("a", 8, 1), EngineSequence("b", 12, 1)
    assert kv.allocate(a, 8)
    kv.register(a, ("k0", "k1"), 8)
    assert kv.allocate(b, 12, kv.cached_run(("k0", "k1")))  # 2 shared, 1 its own
    assert kv.num_free == 7 and b.num_blocks == 3
    kv.free(a)  # b still holds both shared blocks
    assert kv.num_free == 7 and kv.num_cached == 2
    kv.free(b)
    assert kv.num_free == 10 and kv.num_cached == 2  # free, still cached until evicted


def test_block_manager_is_all_or_nothing() -> None:
    kv = BlockManager(num_blocks=3, block_size=4)
    s, t = EngineSequence("s", 8, 1), EngineSequence("t", 8, 1)
    assert kv.allocate(s, 8) and s.num_blocks == 2
    assert not kv.allocate(t, 8) and t.num_blocks == 0 and kv.num_free == 1
    kv.free(s)
    assert kv.num_free == 3 and kv.allocate(t, 12) and kv.num_free == 0


def test_the_simulator_skips_cached_prefill_of_a_plans_shared_prefix() -> None:
    """10 ms a step + 1 ms a prefilled token; b finds a's 64-token prefix cached after a ended."""
    config = EngineConfig(enable_prefix_caching=True, cost=StepCost(0.01, 0.0, 0.001))
    system = ((42, 64),)
    plan = [
        RequestSpec("a", 0.0, 100, 1, prefix=system),
        RequestSpec("b", 1.0, 100, 1, prefix=system),
    ]
    a, b = simulate(plan, config).records
    assert a.first_token == pytest.approx(0.01 + 0.100)
    assert b.first_token == pytest.approx(1.0 + 0.01 + 0.036)
    off = simulate(plan, EngineConfig(cost=StepCost(0.01, 0.0, 0.001))).records[1]
    assert off.first_token == pytest.approx(1.0 + 0.01 + 0.100)
