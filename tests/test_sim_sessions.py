"""Sessions in the simulator: think times, patience, closed users (checked against theory)."""

from __future__ import annotations

import numpy as np
import pytest

from scenarios.plan import RequestSpec, build_plan
from scenarios.spec import parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.replay.sim import Core, simulate
from tests.conftest import scenario_dict

ENGINE = EngineConfig(max_num_seqs=8, kv_cache_tokens=1 << 20, cost=StepCost(0.01, 0.001, 0.0))


def _plan(**overrides: object) -> list[RequestSpec]:
    return build_plan(parse_scenario(scenario_dict(**overrides)))


def test_follow_ups_leave_think_time_after_the_previous_answer() -> None:
    plan = _plan(
        traffic={"rate": 2, "duration_s": 30, "seed": 1},
        session={
            "turns": {"dist": "constant", "value": 3},
            "think_time": {"dist": "exponential", "mean": 1.0},
        },
    )
    result = simulate(plan, ENGINE)
    by_id = {r.id: r for r in result.records}
    follow_ups = [s for s in plan if s.after is not None]
    assert len(by_id) == len(plan) and len(follow_ups) > 20
    for spec in follow_ups:
        before, rec = by_id[spec.after], by_id[spec.id]  # type: ignore[index]
        assert before.end is not None
        assert rec.start == pytest.approx(before.end + spec.think_s)
        assert rec.status == "ok"


def test_impatient_users_abandon_and_end_their_sessions() -> None:
    """One slot, 0.2 s per request: a queue builds, and users who wait over 0.5 s for their
    first token give up, freeing the slot; their next turns are never sent."""
    slow = EngineConfig(max_num_seqs=1, kv_cache_tokens=1 << 20, cost=StepCost(0.02, 0, 0))
    plan = _plan(
        traffic={"rate": 8, "duration_s": 20, "seed": 2},
        workload={
            "prompt_tokens": {"dist": "constant", "value": 5},
            "output_tokens": {"dist": "constant", "value": 10},
        },
        session={
            "turns": {"dist": "constant", "value": 2},
            "patience": {"dist": "constant", "value": 0.5},
        },
    )
    result = simulate(plan, slow)
    by_id = {r.id: r for r in result.records}
    abandoned = [r for r in result.records if r.error_kind == "abandoned"]
    assert len(abandoned) > 20
    for rec in abandoned:
        assert rec.status == "cancelled" and rec.first_token is None
        assert rec.end == pytest.approx(rec.start + 0.5)
    for spec in plan:
        if spec.after is not None and by_id.get(spec.after) in abandoned:
            assert spec.id not in by_id  # the session ended with the abandoned turn
    served = [r for r in result.records if r.status == "ok"]
    assert all(r.ttft is not None and r.ttft <= 0.5 + 1e-9 for r in served)


@pytest.mark.parametrize("core", ["reference", "fast"])
def test_closed_users_obey_the_interactive_response_time_law(core: Core) -> None:
    """N users thinking Z on average: throughput X = N / (R + Z), whatever the server (and
    whichever core)."""
    users, think = 12, 2.0
    plan = _plan(
        traffic={
            "arrival": {
                "type": "closed-users",
                "users": users,
                "think_time": {"dist": "exponential", "mean": think},
            },
            "duration_s": 600,
            "seed": 3,
        },
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 200},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 120},
        },
    )
    slow = EngineConfig(max_num_seqs=4, kv_cache_tokens=1 << 20, cost=StepCost(0.01, 0.002, 0))
    result = simulate(plan, slow, timeout_s=600, core=core)
    assert result.core == core
    records = result.records
    done = [r for r in records if r.status == "ok"]
    assert len(done) > 1000
    response = float(np.mean([r.end - r.start for r in done if r.end is not None]))
    measured = len(done) / 600
    assert response > 0.5  # the server matters: a real queue, not an idle one
    assert measured == pytest.approx(users / (response + think), rel=0.03)


def test_a_closed_user_who_gives_up_comes_back_with_a_new_session() -> None:
    """Overloaded, users abandon often; each goes on with its next session, so every user
    keeps sending until the window closes (the population does not shrink under overload)."""
    slow = EngineConfig(max_num_seqs=1, kv_cache_tokens=1 << 20, cost=StepCost(0.02, 0, 0))
    plan = _plan(
        traffic={
            "arrival": {
                "type": "closed-users",
                "users": 6,
                "think_time": {"dist": "constant", "value": 0.5},
            },
            "duration_s": 60,
            "seed": 4,
        },
        workload={
            "prompt_tokens": {"dist": "constant", "value": 5},
            "output_tokens": {"dist": "constant", "value": 10},
        },
        session={
            "turns": {"dist": "constant", "value": 2},
            "patience": {"dist": "constant", "value": 0.4},
        },
    )
    records = simulate(plan, slow).records
    abandoned = [r for r in records if r.error_kind == "abandoned"]
    assert len(abandoned) > 30
    by_id = {s.id: s for s in plan}
    last_send: dict[str, float] = {}
    for rec in records:
        first = by_id[rec.id]
        while first.after is not None:
            first = by_id[first.after]
        last_send[first.id] = max(last_send.get(first.id, 0.0), rec.start)
    assert len(last_send) == 6 and min(last_send.values()) > 55
