"""One drive loop, two clocks: the simulator and the live reference target agree request by request.

The plan keeps every arrival half a step away from a step boundary (constant-cost steps, and an
engine kept busy by a long first request), so a few ms of wall-clock jitter cannot move a request
into another step: both executors must then produce the same schedule, chunked prefills and
preemptions included, and the same per-request TTFT and E2E up to that jitter.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np

from scenarios.plan import RequestSpec
from scenarios.text import count_tokens, make_prompt
from simulator.engine.core import Engine, EngineConfig, EngineSequence, StepCost
from simulator.engine.drive import WAIT_FOR_WORK, DriveLoop, EngineEvents, Sleep
from simulator.replay.sim import simulate
from targets.reference_launch import ReferenceTargetProcess

STEP_S = 0.03
ENGINE = EngineConfig(
    max_num_seqs=6,
    kv_cache_tokens=16 * 20,  # 20 blocks: small enough to preempt
    max_batched_tokens=64,  # prompts up to 100 tokens: long ones prefill in two chunks
    cost=StepCost(STEP_S, 0.0, 0.0),
    overhead_s=0.002,  # loopback HTTP and parsing, client to engine and back
)


def _plan() -> list[RequestSpec]:
    rng = np.random.default_rng(5)
    steps = np.sort(rng.choice(np.arange(1, 70), 29, replace=False))
    plan = [RequestSpec("r00", 0.0, 10, 75, prompt=make_prompt(rng, 10))]
    for i, k in enumerate(steps):
        n = int(rng.integers(10, 100))
        plan.append(
            RequestSpec(
                f"r{i + 1:02d}",
                (k + 0.5) * STEP_S,
                n,
                int(rng.integers(5, 16)),
                prompt=make_prompt(rng, n),
            )
        )
    return plan


async def _send(base_url: str, plan: list[RequestSpec]) -> dict[str, tuple[float, float, float]]:
    """Streams each request at its planned time: id -> (send, first token, end) from the start."""
    loop = asyncio.get_running_loop()
    out: dict[str, tuple[float, float, float]] = {}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        warm_up = {"model": "surgecast-reference", "prompt": "hello", "max_tokens": 1}
        async with session.post(base_url + "/completions", json=warm_up) as resp:
            assert resp.status == 200  # the first request pays for connecting and first calls
            await resp.read()
        t0 = loop.time() + 0.1

        async def one(spec: RequestSpec) -> None:
            await asyncio.sleep(t0 + spec.arrival - loop.time())
            body = {
                "model": "surgecast-reference",
                "prompt": spec.prompt,
                "max_tokens": spec.max_tokens,
                "stream": True,
            }
            sent = loop.time() - t0
            first = None
            async with session.post(base_url + "/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line == "data: [DONE]":
                        break
                    chunk = json.loads(line[6:]) if line.startswith("data: ") else None
                    if first is None and chunk and chunk["choices"][0]["text"]:
                        first = loop.time() - t0
            assert first is not None
            out[spec.id] = (sent, first, loop.time() - t0)

        await asyncio.gather(*(one(s) for s in plan))
    return out


def test_live_target_and_simulator_agree_per_request() -> None:
    plan = _plan()
    assert all(count_tokens(s.prompt or "") == s.prompt_tokens for s in plan)
    assert any(s.prompt_tokens > ENGINE.max_batched_tokens for s in plan)  # chunked prefills
    with ReferenceTargetProcess(ENGINE) as url:
        live = asyncio.run(asyncio.wait_for(_send(url, plan), timeout=30))
    # replay the actual send times, as a back-test does
    replay = [RequestSpec(s.id, live[s.id][0], s.prompt_tokens, s.max_tokens) for s in plan]
    result = simulate(replay, ENGINE)
    assert result.preemptions > 0
    worst = 0.0
    for rec in result.records:
        sent, first, end = live[rec.id]
        assert rec.status == "ok" and rec.first_token is not None and rec.end is not None
        pairs = ((first - sent, rec.first_token - rec.start), (end - sent, rec.end - rec.start))
        for measured, simulated in pairs:
            worst = max(worst, abs(measured - simulated) - 0.03 * simulated)
    assert worst < 0.010, f"worst excess over 3%: {worst * 1000:.1f} ms"


def test_the_loop_yields_commands_a_driver_interprets() -> None:
    clock = [0.0]
    events = EngineEvents()
    tokens: list[tuple[str, float]] = []
    events.token.add_listener(lambda seq, now: tokens.append((seq.id, now)))
    engine = Engine(EngineConfig(cold_start_s=2.0, cost=StepCost(0.5, 0.0, 0.0)))
    loop = DriveLoop(engine, lambda: clock[0], events, cold=True)
    commands = loop.run()
    assert next(commands) == Sleep(2.0) and not loop.ready
    clock[0] = 2.0
    assert next(commands) is WAIT_FOR_WORK and loop.ready
    loop.submit(EngineSequence("a", 10, 2))
    assert next(commands) == Sleep(0.5)
    clock[0] = 2.5
    assert next(commands) == Sleep(0.5) and tokens == [("a", 2.5)]
    clock[0] = 3.0
    assert next(commands) is WAIT_FOR_WORK and tokens[-1] == ("a", 3.0)
    assert loop.steps == 2 and loop.busy_s == 1.0


def test_a_simulated_timeout_aborts_and_frees_the_slot() -> None:
    """One slot, 0.125 s steps: r0 (80 tokens) times out at 1 s and r1 gets the slot then."""
    config = EngineConfig(max_num_seqs=1, cost=StepCost(0.125, 0.0, 0.0))
    plan = [RequestSpec("r0", 0.0, 10, 80), RequestSpec("r1", 0.5, 10, 2)]
    r0, r1 = simulate(plan, config, timeout_s=1.0).records
    assert r0.status == "timeout" and r0.end == 1.0
    assert r1.status == "ok" and r1.first_token == 1.125 and r1.end == 1.25
