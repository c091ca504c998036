"""The clock-free engine model: admission, KV capacity, step cost, completion."""

from __future__ import annotations

import pytest

from simulator.engine.core import Engine, EngineConfig, EngineSequence, StepCost


def test_step_cost_is_linear() -> None:
    cost = StepCost(0.01, 0.001, 0.0001)
    assert cost.duration(0, 0) == pytest.approx(0.01)
    assert cost.duration(4, 100) == pytest.approx(0.01 + 0.004 + 0.01)


def test_admission_limited_by_max_num_seqs_and_fifo() -> None:
    eng = Engine(EngineConfig(max_num_seqs=2, cost=StepCost(0.01, 0.0, 0.0)))
    seqs = [EngineSequence(f"s{i}", 10, 3) for i in range(3)]
    for s in seqs:
        eng.add(s)
    step = eng.plan_step()
    assert step.prefill == (seqs[0], seqs[1]) and step.decode == ()
    assert list(eng.waiting) == [seqs[2]]
    eng.complete(step)
    step = eng.plan_step()  # full: s2 still waits, s0 and s1 decode
    assert step.decode == (seqs[0], seqs[1]) and step.prefill == ()


def test_kv_blocks_block_head_of_line_and_free_on_finish() -> None:
    # 100 tokens of KV in blocks of 16: 6 blocks (96 tokens)
    eng = Engine(EngineConfig(max_num_seqs=8, kv_cache_tokens=100, cost=StepCost(0.01, 0, 0)))
    a, b = EngineSequence("a", 50, 2), EngineSequence("b", 40, 20)
    eng.add(a)
    eng.add(b)
    step = eng.plan_step()  # a takes ceil(50/16) = 4 blocks; b's 3 do not fit in the other 2
    assert step.prefill == (a,) and eng.kv_used == 64 and a.num_blocks == 4
    assert eng.complete(step) == []
    step = eng.plan_step()
    assert step.prefill == () and step.decode == (a,)
    assert eng.complete(step) == [a] and eng.kv_used == 0
    assert eng.plan_step().prefill == (b,) and b.num_blocks == 3


def test_request_larger_than_cache_is_refused() -> None:
    eng = Engine(EngineConfig(kv_cache_tokens=100))
    with pytest.raises(ValueError, match="capacity is 100"):
        eng.add(EngineSequence("x", 90, 20))


def test_without_chunked_prefill_the_token_budget_splits_admissions() -> None:
    cfg = EngineConfig(
        max_batched_tokens=100, enable_chunked_prefill=False, cost=StepCost(0.0, 0.0, 0.001)
    )
    eng = Engine(cfg)
    for i in range(3):
        eng.add(EngineSequence(f"s{i}", 60, 1))
    step = eng.plan_step()
    assert len(step.prefill) == 1 and step.duration == pytest.approx(0.06)


def test_with_chunked_prefill_the_budget_is_filled_by_a_chunk() -> None:
    eng = Engine(EngineConfig(max_batched_tokens=100, cost=StepCost(0.0, 0.0, 0.001)))
    seqs = [EngineSequence(f"s{i}", 60, 1) for i in range(3)]
    for s in seqs:
        eng.add(s)
    step = eng.plan_step()  # s0 whole (60), then 40 of s1's 60
    assert step.prefill == (seqs[0], seqs[1]) and step.duration == pytest.approx(0.1)
    assert eng.complete_step(step) == ([seqs[0]], [seqs[0]])  # s1 has no token yet
    step = eng.plan_step()  # s1's last 20, then s2's whole 60
    assert step.prefill == (seqs[1], seqs[2]) and step.prefill_tokens == 80


def test_abort_frees_reservation() -> None:
    eng = Engine(EngineConfig(kv_cache_tokens=1000))
    s = EngineSequence("s", 100, 100)
    eng.add(s)
    eng.plan_step()
    eng.abort(s)
    assert eng.kv_used == 0 and not eng.has_work


def test_context_cost_prices_the_kv_tokens_attended() -> None:
    cost = StepCost(0.01, 0.001, 0.0001, per_context_token_s=1e-5)
    eng = Engine(EngineConfig(cost=cost))
    a, b = EngineSequence("a", 100, 3), EngineSequence("b", 50, 3)
    eng.add(a)
    step = eng.plan_step()  # prefill a: 100 prompt tokens, 100 in context
    assert step.context_tokens == 100
    assert step.duration == pytest.approx(0.01 + 0.01 + 0.001)
    eng.complete(step)
    eng.add(b)
    step = eng.plan_step()  # a decodes its 101st KV token; b prefills 50
    assert step.context_tokens == 151
    assert step.duration == pytest.approx(0.01 + 0.001 + 0.005 + 0.00151)


def test_config_round_trips_and_old_files_load() -> None:
    cfg = EngineConfig(block_size=32, enable_prefix_caching=True, cost=StepCost())
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    old = {  # a calibration file written before paged KV and chunked prefill
        "max_num_seqs": 16,
        "kv_cache_tokens": 4096,
        "max_batched_tokens": 2048,
        "cold_start_s": 0.0,
        "overhead_s": 0.001,
        "cost": {"base_s": 0.01, "per_decode_seq_s": 0.001, "per_prefill_token_s": 1e-5},
    }
    loaded = EngineConfig.from_dict(old)
    assert loaded.cost == StepCost(0.01, 0.001, 1e-5) and loaded.num_blocks == 256
    assert loaded.enable_chunked_prefill and not loaded.enable_prefix_caching
