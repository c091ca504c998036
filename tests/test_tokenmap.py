"""The planned-to-served token map: learned from usage, applied to plans."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RequestRecord
from scenarios.spec import parse_scenario
from simulator.fit.tokenmap import TokenMap
from tests.conftest import ROOT, scenario_dict


def _served(planned_prompt: int, planned_output: int, rng: np.random.Generator) -> RequestRecord:
    """A server counting 1.5 tokens per planned token plus a 13-token template, and ending
    answers early: a uniform share between half and all of max_tokens."""
    return RequestRecord(
        id=str(planned_prompt),
        intended_start=0,
        start=0,
        first_token=0.1,
        end=0.2,
        prompt_tokens=round(13 + 1.5 * planned_prompt),
        output_tokens=max(1, round(planned_output * rng.uniform(0.5, 1.0))),
        planned_prompt_tokens=planned_prompt,
        planned_output_tokens=planned_output,
    )


def test_the_map_learns_the_server_and_maps_a_plan_within_five_percent() -> None:
    rng = np.random.default_rng(0)
    records = [_served(int(p), 200, rng) for p in rng.integers(20, 800, size=400)]
    tokens = TokenMap.learn(records)
    assert tokens.prompt_slope == pytest.approx(1.5, rel=0.01)
    assert tokens.prompt_intercept == pytest.approx(13, abs=1.0)
    plan = [
        RequestSpec(id=str(i), arrival=0, prompt_tokens=int(p), max_tokens=300, prefix=((1, 50),))
        for i, p in enumerate(rng.integers(20, 800, size=2000))
    ]
    mapped = tokens.apply(plan, seed=1)
    truth = np.array([13 + 1.5 * s.prompt_tokens for s in plan])
    served = np.array([s.prompt_tokens for s in mapped])
    assert np.abs(served - truth).max() / truth.min() < 0.05
    assert mapped[0].prefix == ((1, 75),)
    # answers end early as measured: three quarters of max_tokens on average
    assert np.mean([s.max_tokens for s in mapped]) == pytest.approx(225, rel=0.05)
    assert tokens.apply(plan, seed=1) == mapped  # one seed, one plan


def test_without_enough_usage_the_map_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    tokens = TokenMap.learn([_served(100, 50, rng) for _ in range(3)])
    plan = [RequestSpec(id="a", arrival=0, prompt_tokens=100, max_tokens=50)]
    assert tokens.identity and tokens.apply(plan) == plan
    assert TokenMap.learn([]) == TokenMap()


@pytest.mark.parametrize("kind", ["single requests", "sessions", "rag"])
def test_a_plan_built_as_served_is_the_plan_mapped_afterwards(kind: str) -> None:
    """`build_plan(served=)` maps each arrival's lengths before its request is made (one
    request per arrival: the forecast's common case, built once instead of twice); it gives
    what mapping the built plan gives, request for request, shared prefixes included."""
    rng = np.random.default_rng(0)
    tokens = TokenMap.learn([_served(int(p), 200, rng) for p in rng.integers(20, 800, size=400)])
    if kind == "rag":  # single questions opening with shared system prompts
        data = yaml.safe_load((ROOT / "scenarios" / "rag-assistant.yaml").read_text())
        data["session"] = {}
        scenario = parse_scenario(data, base_dir=ROOT / "scenarios")
    else:
        turns = 3 if kind == "sessions" else 1
        session = {"turns": {"dist": "constant", "value": turns}}
        traffic = {"rate": 20, "duration_s": 30, "seed": 2}
        scenario = parse_scenario(scenario_dict(traffic=traffic, session=session))
    built = build_plan(scenario, seed=5, rate_scale=3.0, served=tokens)
    assert built == tokens.apply(build_plan(scenario, seed=5, rate_scale=3.0), seed=5)
    assert kind != "rag" or all(s.prefix for s in built)
    assert build_plan(scenario, served=TokenMap()) == build_plan(scenario)  # the identity
