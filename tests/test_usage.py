"""What the simulator reports about memory and batch slots, against hand-computed values."""

from __future__ import annotations

import pytest

from scenarios.plan import RequestSpec
from simulator.engine.core import EngineConfig, StepCost
from simulator.replay.sim import simulate

STEP = StepCost(0.01, 0.0, 0.0)  # every step 10 ms, whatever it holds


def test_kv_use_of_one_request_grows_as_it_generates() -> None:
    """160 prompt tokens, then 160 generated, in 16-token blocks of a 100-block cache: 10
    blocks for the prompt, one more every 16 tokens, 20 at the last step."""
    config = EngineConfig(max_num_seqs=1, kv_cache_tokens=1600, cost=STEP)
    result = simulate([RequestSpec("r", 0.0, 160, 160)], config)
    assert result.kv_peak == pytest.approx(0.20)
    # during step i (0 prefills, then decodes) the cache holds blocks for about 160 + i tokens
    blocks = [-(-(160 + i) // 16) for i in range(160)]
    assert result.kv_mean == pytest.approx(sum(blocks) / len(blocks) / 100, abs=0.006)
    assert result.slots_full == pytest.approx(1.0)  # its one slot, taken every step
    assert result.preemptions == 0


def test_a_cache_too_small_for_the_batch_fills_and_preempts() -> None:
    plan = [RequestSpec(f"r{i}", 0.001 * i, 100, 200) for i in range(8)]
    tight = EngineConfig(max_num_seqs=8, kv_cache_tokens=16 * 60, cost=STEP)  # 60 blocks
    roomy = EngineConfig(max_num_seqs=8, kv_cache_tokens=16 * 1000, cost=STEP)
    squeezed, easy = simulate(plan, tight), simulate(plan, roomy)
    assert squeezed.kv_peak >= 0.95 and squeezed.preemptions > 0
    assert easy.kv_peak == pytest.approx(8 * -(-300 // 16) / 1000, abs=0.01)  # 8 x 19 blocks
    assert easy.preemptions == 0
    assert all(r.output_tokens == 200 for r in squeezed.records)  # preempted, then finished
