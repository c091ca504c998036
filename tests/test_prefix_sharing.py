"""Conversations that share a system prompt, as the Mooncake conversation trace has them: the
prefix cache's hit share (recorded, counted once), cache-aware routing that spreads load, and
scaled traces whose extra copies are other users.

Every prompt starts with the same 512-token block (block 0); conversation c's turn t adds two
512-token blocks of its own to the turn before, so a turn shares all but its two new blocks with
the conversation's previous turn, and its first block with every other request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scenarios.metrics import summarize_table
from scenarios.plan import RequestSpec, build_plan
from scenarios.plan_tokens import shareable_prompt_share
from scenarios.spec import FleetSpec, load_scenario
from scenarios.trace_types import shared_prefix_lengths
from simulator.engine.core import EngineConfig, StepCost
from simulator.replay.sim import SimResult, simulate
from tests.conftest import scenario_dict, write_scenario

BLOCK = 512
COST = StepCost(0.005, 0.0005, 0.00005)  # 5 ms a step, 0.5 ms a sequence, 0.05 ms a token


def _conversation(c: int, turns: int, start: float, gap_s: float, output: int) -> list[RequestSpec]:
    """Conversation c: turn t (from 1) has 1 + 2t blocks, sent gap_s after the turn before."""
    own = [(1 + 1000 * c + k, BLOCK) for k in range(2 * turns)]
    return [
        RequestSpec(
            f"c{c}t{t}",
            start + (t - 1) * gap_s,
            BLOCK * (1 + 2 * t),
            output,
            prefix=((0, BLOCK), *own[: 2 * t]),
        )
        for t in range(1, turns + 1)
    ]


def _plan(starts: list[float], turns: int, gap_s: float, output: int = 8) -> list[RequestSpec]:
    specs = [
        spec
        for c, start in enumerate(starts)
        for spec in _conversation(c, turns, start, gap_s, output)
    ]
    return sorted(specs, key=lambda s: s.arrival)


def _hit_share(result: SimResult) -> float:
    tokens = summarize_table(result.table).tokens
    assert tokens is not None and tokens.cache_hit_rate is not None
    return tokens.cache_hit_rate


# ------------------------------------------------------------------ the hit share (item 2)


def test_the_hit_share_of_a_simulated_run_is_recorded_and_hand_computed() -> None:
    """Four conversations of three turns, each request alone on one replica with room for
    everything: a turn hits block 0 (but the very first request) and its previous turn's
    blocks. Prompt blocks 4 x (3 + 5 + 7) = 60, hits 4 x (1 + 3 + 5) - 1 = 35."""
    plan = _plan([0.0, 1.0, 2.0, 3.0], turns=3, gap_s=10.0)
    config = EngineConfig(enable_prefix_caching=True, kv_cache_tokens=1 << 20, cost=COST)
    result = simulate(plan, config)
    by_id = {r.id: r for r in result.records}
    assert {r.status for r in by_id.values()} == {"ok"}
    for spec in plan:
        c, t = int(spec.id[1]), int(spec.id[3])
        expected = BLOCK * (2 * t - 1) - (BLOCK if (c, t) == (0, 1) else 0)
        assert by_id[spec.id].cached_tokens == expected, spec.id
    assert _hit_share(result) == pytest.approx(35 / 60, abs=1e-12)
    assert shareable_prompt_share(plan) == pytest.approx(35 / 60, abs=1e-12)
    off = simulate(plan, EngineConfig(kv_cache_tokens=1 << 20, cost=COST))
    assert _hit_share(off) == 0.0  # prefix caching off: recorded as none from the cache


def test_a_preempted_request_counts_its_hits_once() -> None:
    """A cache too small for the bursts: requests are preempted and find their own blocks
    cached when they come back; the hits are counted at their first admission only, so the
    share cannot exceed what an ideal cache could serve."""
    plan = _plan([0.01 * c for c in range(12)], turns=4, gap_s=4.0, output=400)
    config = EngineConfig(
        max_num_seqs=12,
        enable_prefix_caching=True,
        kv_cache_tokens=6 * 9 * BLOCK,
        max_batched_tokens=2048,
        cost=COST,
    )
    result = simulate(plan, config, timeout_s=600.0)
    assert result.preemptions > 0
    assert {r.status for r in result.records} == {"ok"}
    assert 0.0 < _hit_share(result) <= shareable_prompt_share(plan)


# ------------------------------------------------------------------ routing (item 1)


def test_prefix_affinity_spreads_conversations_and_keeps_their_hits() -> None:
    """24 conversations over 4 replicas: block 0, which every replica soon caches, decides
    nothing; a conversation's next turns follow its cached history. The load spreads (no
    replica busier than 1.5 x the mean) and the hit share stays within 2 points of sending
    each conversation to a replica of its own (c mod 4: four one-replica runs)."""
    rng = np.random.default_rng(7)
    starts = sorted(rng.uniform(0, 60, 24).tolist())
    plan = _plan(starts, turns=4, gap_s=20.0, output=32)
    config = EngineConfig(
        max_num_seqs=8, enable_prefix_caching=True, kv_cache_tokens=1 << 20, cost=COST
    )
    fleet = FleetSpec(routing="prefix_affinity")
    result = simulate(plan, config, replicas=4, fleet=fleet)
    assert {r.status for r in result.records} == {"ok"}
    busy = np.array(result.busy_fraction)
    assert busy.max() <= 1.5 * busy.mean(), busy
    cached = prompt = 0
    for r in range(4):
        mine = [s for s in plan if int(s.id[1 : s.id.index("t")]) % 4 == r]
        alone = simulate(mine, config).table.tokens
        assert alone is not None
        cached += int(alone.cached.sum())
        prompt += int(alone.prompt.sum())
    sticky = cached / prompt
    assert _hit_share(result) == pytest.approx(sticky, abs=0.02)
    assert sticky > 0.5  # the history is most of every later turn


# ------------------------------------------------------------------ scaled traces (item 4)


def _conversation_rows(n: int, turns: int) -> list[dict[str, Any]]:
    """Mooncake rows: block 0 shared by all; a turn repeats its conversation's full blocks and
    cuts its last block short (an id of its own: the next turn fills it, another block)."""
    rows = []
    for c in range(n):
        for t in range(1, turns + 1):
            own = 700 * t + 13 * c  # tokens after block 0
            full = own // BLOCK
            ids = [0] + [10 + 1000 * c + k for k in range(full)]
            if own % BLOCK:
                ids.append(10 + 1000 * c + 500 + t)
            rows.append(
                {
                    "timestamp": 7000 * c + 30000 * (t - 1),
                    "input_length": BLOCK + own,
                    "output_length": 20,
                    "hash_ids": ids,
                }
            )
    return sorted(rows, key=lambda r: r["timestamp"])


def test_only_the_common_block_is_shared_across_conversations() -> None:
    rows = _conversation_rows(30, 4)
    assert shared_prefix_lengths([r["hash_ids"] for r in rows]).tolist() == [1] * len(rows)
    # a second system prompt, shared by two conversations that go on past it
    two = [[7, 8, 1, 2], [7, 8, 3, 4], [7, 8, 1, 2, 5, 6], [9]]
    assert shared_prefix_lengths(two).tolist() == [2, 2, 2, 0]


def _share(tmp_path: Path, rows: list[dict[str, Any]], periods: float, scale: float) -> float:
    trace = tmp_path / "conv.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    span = (rows[-1]["timestamp"] - rows[0]["timestamp"]) / 1000
    period = span + span / (len(rows) - 1)
    data = scenario_dict(
        traffic={
            "arrival": {"type": "trace", "path": trace.name, "format": "mooncake"},
            "duration_s": periods * period,
        }
    )
    data.pop("workload")
    scenario = load_scenario(write_scenario(tmp_path / "s.yaml", data))
    plan = build_plan(scenario, rate_scale=scale)
    assert len(plan) == round(len(rows) * periods * scale)
    return shareable_prompt_share(plan)


def test_scaled_copies_of_a_trace_are_other_users(tmp_path: Path) -> None:
    """Twice the rate over the whole trace, or a window of two laps: every conversation is
    sent twice, by other users that share block 0 only, so the share of prompt tokens an ideal
    prefix cache could serve stays the trace's (sent as is, it nearly doubled)."""
    rows = _conversation_rows(30, 4)
    once = _share(tmp_path, rows, 1, 1.0)
    assert 0.3 < once < 0.7
    assert _share(tmp_path, rows, 1, 2.0) == pytest.approx(once, abs=0.01)
    assert _share(tmp_path, rows, 2, 1.0) == pytest.approx(once, abs=0.01)
