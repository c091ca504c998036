"""Jumping over steady runs of decode steps changes nothing: every request's times and counts are
those of stepping the engine one step at a time, chunked prefill, preemption, prefix caching,
timeouts, patience and sessions included."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest
import simpy

from scenarios.plan import RequestSpec, build_plan
from scenarios.spec import AutoscalerSpec, FleetSpec, parse_scenario
from simulator.engine.core import EngineConfig, EngineSequence, StepCost
from simulator.engine.drive import EngineEvents
from simulator.engine.stepcost import CostModel, DecodeTableCost, RooflineCost
from simulator.replay.sim import Replica, SimResult, simulate
from tests.conftest import scenario_dict

TIGHT = EngineConfig(  # few blocks and a small budget: chunked prefills and preemptions
    max_num_seqs=12,
    kv_cache_tokens=16 * 120,
    max_batched_tokens=96,
    cost=StepCost(0.01, 0.0005, 0.00004, 0.0000013),
)


def _random_plan(seed: int, n: int = 300) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(0.08, n))
    plan = []
    for i, t in enumerate(arrivals):
        patience = float(rng.uniform(0.2, 3.0)) if rng.random() < 0.2 else None
        prefix = ((int(rng.integers(3)), 48),) if rng.random() < 0.5 else ()
        plan.append(
            RequestSpec(
                f"r{i}",
                float(t),
                int(rng.integers(49, 300)),
                int(rng.integers(1, 250)),
                prefix=prefix,
                patience_s=patience,
            )
        )
    return plan


def _assert_same(a: SimResult, b: SimResult) -> None:
    assert len(a.records) == len(b.records)
    for x, y in zip(a.records, b.records, strict=True):
        assert dataclasses.astuple(x) == dataclasses.astuple(y), x.id  # times bit for bit
    assert a.preemptions == b.preemptions
    assert a.busy_fraction == pytest.approx(b.busy_fraction, rel=1e-9)
    assert a.kv_peak == b.kv_peak
    assert a.kv_mean == pytest.approx(b.kv_mean, rel=1e-9)
    assert a.slots_full == pytest.approx(b.slots_full, rel=1e-9)


# the bending models: a concave table, and a roofline whose decode runs cross from compute-bound
# to memory-bound as their context grows
TABLE = DecodeTableCost((1.0, 4.0, 12.0), (0.010, 0.0125, 0.016), 0.00004, 0.0000013)
ROOFLINE = RooflineCost(0.012, 0.00008, 0.0004, 0.0000003)
COSTS: list[CostModel] = [StepCost(0.012, 0.0004, 0.00005), TIGHT.cost, TABLE, ROOFLINE]
IDS = ["linear", "context", "table", "roofline"]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cost", COSTS, ids=IDS)
@pytest.mark.parametrize("prefix_caching", [False, True], ids=["", "prefix"])
def test_jumps_match_stepping_on_random_plans(
    seed: int, cost: CostModel, prefix_caching: bool
) -> None:
    config = dataclasses.replace(TIGHT, cost=cost, enable_prefix_caching=prefix_caching)
    plan = _random_plan(seed)
    kw = {"replicas": 2, "timeout_s": 8.0}
    stepped = simulate(plan, config, jumps=False, **kw)  # type: ignore[arg-type]
    jumped = simulate(plan, config, jumps=True, **kw)  # type: ignore[arg-type]
    statuses = {r.status for r in stepped.records}
    assert {"ok", "cancelled"} <= statuses and stepped.preemptions > 0
    assert prefix_caching or "timeout" in statuses  # the shared prefixes relieve the load
    assert sum(len(r.chunk_times) for r in stepped.records) > 10_000
    _assert_same(stepped, jumped)


def test_jumps_match_stepping_without_chunks_and_whole_prompts() -> None:
    config = dataclasses.replace(TIGHT, enable_chunked_prefill=False, max_batched_tokens=512)
    plan = _random_plan(4)
    kw = {"replicas": 3, "timeout_s": 8.0, "record_chunks": False}
    _assert_same(
        simulate(plan, config, jumps=False, **kw),  # type: ignore[arg-type]
        simulate(plan, config, jumps=True, **kw),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("fleet", ["least_kv", "prefix_affinity", "kv autoscaler"])
def test_jumps_match_stepping_where_the_fleet_reads_the_kv_caches(fleet: str) -> None:
    """A replica in a jump applies its steps' blocks when the jump ends; the router and the
    autoscaler read each replica's KV cache as stepping has it at that moment (least_kv's
    emptiest cache, prefix_affinity's cached blocks, which a decode's new block can evict).
    Read unapplied, least_kv sent a request routed mid-jump elsewhere than stepping did (this
    plan catches it; the other two agree with and without the catch-up on it)."""
    config = dataclasses.replace(TIGHT, enable_prefix_caching=fleet != "least_kv")
    spec = FleetSpec(routing="least_kv" if fleet == "least_kv" else "prefix_affinity")
    if fleet == "kv autoscaler":
        scaler = AutoscalerSpec(metric="kv", target=0.3, interval_s=0.5, stabilisation_s=2,
                                max_replicas=4, keep_alive_s=1)  # fmt: skip
        spec = FleetSpec(routing="least_outstanding", autoscaler=scaler)
    kw = {"replicas": 3 if fleet != "kv autoscaler" else 1, "timeout_s": 8.0, "fleet": spec}
    plan = _random_plan(5, 600)
    stepped = simulate(plan, config, jumps=False, core="reference", **kw)  # type: ignore[arg-type]
    jumped = simulate(plan, config, jumps=True, core="reference", **kw)  # type: ignore[arg-type]
    _assert_same(stepped, jumped)
    assert fleet != "kv autoscaler" or stepped.fleet.peak_replicas > 1
    fast = simulate(plan, config, core="fast", **kw)  # type: ignore[arg-type]
    _assert_same(jumped, fast)


def test_jumps_match_stepping_with_sessions() -> None:
    plan = build_plan(
        parse_scenario(
            scenario_dict(
                traffic={"rate": 6, "duration_s": 30, "seed": 3},
                session={
                    "turns": {"dist": "constant", "value": 3},
                    "think_time": {"dist": "exponential", "mean": 0.5},
                    "patience": {"dist": "constant", "value": 1.5},
                },
            )
        )
    )
    config = EngineConfig(max_num_seqs=8, cost=StepCost(0.01, 0.001, 0.0, 0.000002))
    _assert_same(simulate(plan, config, jumps=False), simulate(plan, config, jumps=True))


def test_a_replica_jumps_and_arrivals_cut_its_jumps() -> None:
    """The same requests, stepped and jumped, side by side on one clock."""
    env = simpy.Environment()
    stepped_events, jumped_events = EngineEvents(), EngineEvents()
    times: dict[str, list[tuple[str, float]]] = {"step": [], "jump": []}
    stepped_events.token.add_listener(lambda s, now: times["step"].append((s.id, now)))
    jumped_events.token.add_listener(lambda s, now: times["jump"].append((s.id, now)))
    stepped = Replica(env, TIGHT, stepped_events, jumps=False)
    jumped = Replica(env, TIGHT, jumped_events, jumps=True)

    seqs: dict[Replica, list[EngineSequence]] = {stepped: [], jumped: []}

    def arrivals() -> Generator[simpy.Event, Any, None]:
        for i, (gap, out) in enumerate([(0.0, 200), (0.013, 150), (0.5, 100), (0.777, 50)]):
            yield env.timeout(gap)
            for replica in (stepped, jumped):
                seqs[replica].append(EngineSequence(f"r{i}", 60, out))
                replica.submit(seqs[replica][-1])
        yield env.timeout(0.25)  # r1 leaves mid-jump, while decoding
        for replica in (stepped, jumped):
            replica.loop.abort(seqs[replica][1])

    env.process(arrivals())
    env.run()
    assert times["step"] == sorted(times["jump"], key=lambda t: t[1])
    assert 300 < len(times["step"]) < 500
    assert [s.generated for s in seqs[stepped]] == [s.generated for s in seqs[jumped]]
    assert jumped.loop.jumps >= 4 and jumped.loop.cuts >= 2
    assert jumped.loop.steps == stepped.loop.steps
    assert jumped.usage == stepped.usage


@pytest.mark.parametrize(
    "cost",
    [
        StepCost(0.012, 0.0004, 0.00005),
        StepCost(0.01, 0.0005, 0.00004, 0.0000013),
        TABLE,
        RooflineCost(0.002, 0.0026, 0.004, 0.00001),  # memory-bound from the 27th step
        # attention's compute grows faster than its reads: compute-bound from the 47th step
        RooflineCost(0.002, 0.0001, 0.0038, 1e-6, 3e-6, 2e-5),
        RooflineCost(0.002, 0.003, 0.001, 1e-6, 2e-6, 2e-5),  # compute-bound throughout
    ],
    ids=[*IDS, "attention-bound", "compute-bound"],
)
def test_cost_models_price_a_decode_run_in_closed_form(cost: CostModel) -> None:
    decode, context = 7, 1234
    run = cost.decode_run(decode, context, 50)
    assert run == [cost.duration(decode, 0, context + i * decode) for i in range(50)]
    for n in (0, 1, 2, 17, 50):
        assert cost.run_s(decode, context, n) == pytest.approx(sum(run[:n]), rel=1e-12)
    for seconds in (0.0, run[0] * 0.999, run[0], sum(run[:17]) * 1.0000001, 0.3, 0.61):
        n = cost.steps_within(decode, context, seconds)
        assert cost.run_s(decode, context, n) <= seconds < cost.run_s(decode, context, n + 1)


def test_a_cold_replica_jumps_after_its_cold_start() -> None:
    env = simpy.Environment()
    events = EngineEvents()
    first: list[float] = []
    events.first_token.add_listener(lambda seq, now: first.append(now))
    replica = Replica(env, dataclasses.replace(TIGHT, cold_start_s=2.0), events, cold=True)
    replica.submit(EngineSequence("r0", 60, 100))
    env.run()
    assert first and first[0] > 2.0 and replica.loop.jumps > 0


def test_the_roofline_run_crosses_from_compute_to_memory_bound() -> None:
    """The closed-form test above is only worth something if its run changes regime."""
    cost = RooflineCost(0.002, 0.0026, 0.004, 0.00001)
    run = cost.decode_run(7, 1234, 50)
    assert run[0] == run[26] < run[27] < run[49]
    memory_first = RooflineCost(0.002, 0.0001, 0.0038, 1e-6, 3e-6, 2e-5)
    run = memory_first.decode_run(7, 1234, 50)
    growth = [b - a for a, b in itertools.pairwise(run)]
    assert growth[0] == pytest.approx(7e-6) and growth[-1] == pytest.approx(21e-6)


def test_the_table_interpolates_and_extrapolates_without_falling() -> None:
    table = DecodeTableCost((2.0, 4.0, 8.0), (0.010, 0.014, 0.012), 0.0, 0.0)
    assert table.decode_s(3) == pytest.approx(0.012)
    assert table.decode_s(6) == pytest.approx(0.013)
    assert table.decode_s(1) == pytest.approx(0.008)  # the first segment's slope
    assert table.decode_s(16) == pytest.approx(0.012)  # the last one falls: held flat
