"""The fast core against the reference, request by request (issue 23).

Random fleets and scenarios (seeded: 60 of them, each feature the fast core covers switched on
in some) run through both cores and must give equal records, every field of every attempt
(status, error kind, times, token gaps), and the same fleet figures up to rounding. Where the
fast core does not cover a simulation yet, `core="auto"` runs the reference and says so.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RequestRecord
from scenarios.spec import AutoscalerSpec, ColdStartSpec, FleetSpec, TargetFaults, parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.engine.stepcost import CostModel, DecodeTableCost, RooflineCost
from simulator.replay.sim import Core, SimResult, simulate
from tests.conftest import ROOT

CASES = 60
CORES: tuple[Core, ...] = ("reference", "fast")


def _cost(r: random.Random) -> CostModel:
    kind = r.choice(["linear", "context", "table", "roofline"])
    if kind == "linear":
        return StepCost(r.uniform(0.002, 0.02), r.uniform(0, 0.002), r.uniform(0, 1e-4))
    if kind == "context":
        return StepCost(r.uniform(0.002, 0.02), r.uniform(0, 2e-3), r.uniform(0, 1e-4), 1e-6)
    if kind == "table":
        xs = sorted(r.sample(range(1, 80), r.randint(1, 4)))
        ys = sorted(r.uniform(0.005, 0.05) for _ in xs)
        return DecodeTableCost(tuple(map(float, xs)), tuple(ys), r.uniform(0, 1e-4), 1e-7)
    return RooflineCost(
        r.uniform(0.001, 0.005), r.uniform(1e-5, 4e-4), r.uniform(0.005, 0.02),
        r.choice([0.0, 1e-6]), r.choice([0.0, 1e-7]), r.choice([0.0, 1e-5]),
    )  # fmt: skip


def random_case(seed: int) -> tuple[list[RequestSpec], EngineConfig, dict[str, Any]]:
    """A plan (open or closed users, sessions of 1-4 turns with think times, users who give
    up, retries, prompts up to 6,000 tokens), an engine (1-64 slots, caches small
    enough to preempt and to refuse, block sizes 1-16, chunked prefill or not, each cost
    model) and a fleet (1-8 replicas, each routing, a central queue or not, an admission limit
    or not, timeouts from 0.5 s, the target's faults or not); prefix caching in some, with
    system prompts the conversations share."""
    r = random.Random(seed)
    replicas = r.choice([1, 1, 2, 3, 5, 8])
    duration = r.uniform(3, 15)
    if r.random() < 0.25:
        think = {"dist": "exponential", "mean": r.uniform(0.1, 2)}
        arrival = {"type": "closed-users", "users": r.randint(2, 30), "think_time": think}
        traffic = {"arrival": arrival, "duration_s": duration, "seed": seed}
    else:
        traffic = {"rate": r.uniform(1, 30) * replicas, "duration_s": duration, "seed": seed}
    turns = r.choice([1, 1, 2, 4])
    session: dict[str, Any] = {"turns": {"dist": "constant", "value": turns}}
    if turns > 1 and r.random() < 0.7:
        session["think_time"] = {"dist": "exponential", "mean": r.uniform(0.1, 3)}
    if r.random() < 0.3:  # users who give up waiting for a first token
        session["patience"] = {"dist": "lognormal", "median": r.uniform(0.05, 3), "sigma": 0.5}
    if r.random() < 0.4:  # retries of 429s and 5xx, after a jittered backoff
        session["retry"] = {"max_retries": r.randint(1, 3), "backoff_s": r.uniform(0, 1)}
    low = r.randint(1, 60)
    prompt = {"dist": "lognormal", "median": r.uniform(20, 800), "sigma": 0.7, "max": 6000}
    scenario = {
        "name": "fast",
        "traffic": traffic,
        "session": session,
        "workload": {
            "prompt_tokens": prompt,
            "output_tokens": {"dist": "uniform", "low": low, "high": low + r.randint(0, 300)},
        },
    }
    plan = build_plan(parse_scenario(scenario))
    slots = r.choice([1, 2, 4, 16, 32, 64])
    engine = EngineConfig(
        max_num_seqs=slots,
        kv_cache_tokens=r.choice([256, 1024, 4096, 16384, 65536]),
        max_batched_tokens=max(slots, r.choice([16, 64, 512, 2048, 8192])),
        block_size=r.choice([1, 4, 16]),
        enable_chunked_prefill=r.random() < 0.8,
        overhead_s=r.choice([0.0, 0.0, r.uniform(0, 0.01)]),
        cost=_cost(r),
    )
    fleet = FleetSpec(
        routing=r.choice(["least_outstanding", "round_robin", "random", "least_kv"]),
        seed=r.randrange(1000),
        central_queue=r.random() < 0.25,
        admission_limit=r.choice([None, None, 0, 3, 20]),
    )
    timeout = r.choice([0.5, 2.0, 10.0, 60.0])
    kw: dict[str, Any] = {"replicas": replicas, "timeout_s": timeout, "fleet": fleet}
    if r.random() < 0.3:  # the reference target's injected 429s and 500s
        kw["faults"] = TargetFaults(reject_429=0.1, error_500=0.05, retry_after_s=0.3, seed=seed)
    if r.random() < 0.4:
        plan, engine = _prefix_cached(r, plan, engine)
        if r.random() < 0.5:  # cache-aware routing
            overload, match = r.choice([0.5, 1.0, 2.0]), r.choice([0.0, 0.5, 0.9])
            update = {"affinity_overload": overload, "affinity_min_match": match}
            kw["fleet"] = kw["fleet"].model_copy(update={"routing": "prefix_affinity", **update})
    if r.random() < 0.3:
        kw["fleet"], kw["replicas"] = _autoscaled(r, kw["fleet"])
    return plan, engine, kw


def _autoscaled(r: random.Random, fleet: FleetSpec) -> tuple[FleetSpec, int]:
    """An autoscaler on each metric (from zero replicas in some), whose replicas pay cold
    starts (drawn with jitter in some), and the starting count."""
    low = r.choice([0, 0, 1, 2])
    high = max(low, 1) + r.randint(0, 6)
    scaler = AutoscalerSpec(
        metric=r.choice(["in_flight", "queue", "kv"]),
        target=r.choice([0.5, 1.0, 4.0, 16.0]),
        interval_s=r.uniform(0.2, 3),
        stabilisation_s=r.choice([0.0, 2.0, 10.0]),
        min_replicas=low,
        max_replicas=high,
        keep_alive_s=r.choice([0.0, 1.0, 5.0]),
    )
    cold = ColdStartSpec(
        provisioning_s=r.choice([0.0, 0.5]), load_s=r.choice([0.0, 0.3, 2.0]),
        jitter=r.choice([0.0, 0.5]),
    )  # fmt: skip
    update = {"autoscaler": scaler, "cold_start": cold}
    return fleet.model_copy(update=update), r.randint(low, high)


def _prefix_cached(
    r: random.Random, plan: list[RequestSpec], engine: EngineConfig
) -> tuple[list[RequestSpec], EngineConfig]:
    """Prefix caching on, and each conversation opening with one of 1-3 system prompts."""
    heads = [(r.randrange(1 << 60), r.choice([16, 64, 300, 1000])) for _ in range(r.randint(1, 3))]
    plan = [
        replace(s, prefix=(head, *s.prefix), prompt_tokens=s.prompt_tokens + head[1])
        for s in plan
        for head in [heads[r.randrange(len(heads))]]
    ]
    cache = r.choice([engine.kv_cache_tokens, 8192, 65536])
    return plan, replace(engine, enable_prefix_caching=True, kv_cache_tokens=cache)


def _figures(result: SimResult) -> list[float]:
    """The fleet's figures, as numbers."""
    fleet = result.fleet
    counts = [result.preemptions, result.recomputed_tokens, result.rejected, result.timeouts]
    shares = [result.kv_peak, result.kv_mean, result.slots_full, *result.busy_fraction]
    sizes = [fleet.replica_seconds, fleet.peak_replicas, fleet.min_replicas, fleet.cold_starts]
    return [*counts, *shares, *sizes, *(x for point in fleet.timeline for x in point)]


def same_records(a: list[RequestRecord], b: list[RequestRecord]) -> bool:
    """Equal records, each time to 1e-12 (rounding: the reference's jumps over steady decode
    steps sum a run's step times as stepping does, to within a last bit at times)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        for f in fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if f.name == "chunk_times":
                if len(u) != len(v) or not all(map(_close, u, v)):
                    return False
            elif isinstance(u, float) and isinstance(v, float):
                if not _close(u, v):
                    return False
            elif u != v:
                return False
    return True


def _close(u: float, v: float) -> bool:
    return math.isclose(u, v, rel_tol=1e-12, abs_tol=1e-12)


def test_both_cores_give_equal_records_over_random_fleets() -> None:
    """Every record equal (times to rounding, prompt tokens served from the prefix cache);
    the fleet's figures to 1e-9. Over the cases each feature shows up: preemptions, refusals,
    timeouts, sessions, every routing, prefix-cache hits (with preemptions: evictions)."""
    seen = {"preempted": 0, "rejected": 0, "timed out": 0, "abandoned": 0, "follow-ups": 0}
    seen["round robin"] = seen["random"] = seen["least kv"] = seen["central queue"] = 0
    seen["429"] = 0
    seen["retried"] = seen["random, central queue"] = seen["prefix hits"] = 0
    seen["prefix hits, preempted"] = seen["prefix affinity"] = 0
    seen["autoscaled"] = seen["cold starts"] = seen["fleet size changed"] = 0
    for seed in range(CASES):
        plan, engine, kw = random_case(seed)
        reference = simulate(plan, engine, core="reference", **kw)
        fast = simulate(plan, engine, core="fast", **kw)
        assert (reference.core, fast.core) == ("reference", "fast")
        assert same_records(fast.records, reference.records), seed
        want, got = _figures(reference), _figures(fast)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), seed
        seen["preempted"] += reference.preemptions > 0
        seen["rejected"] += reference.rejected > 0
        seen["timed out"] += reference.timeouts > 0
        seen["abandoned"] += reference.abandoned > 0
        seen["follow-ups"] += any(s.after is not None for s in plan)
        seen["round robin"] += kw["fleet"].routing == "round_robin"
        seen["random"] += kw["fleet"].routing == "random"
        seen["least kv"] += kw["fleet"].routing == "least_kv"
        seen["central queue"] += kw["fleet"].central_queue
        seen["random, central queue"] += (
            kw["fleet"].routing == "random" and kw["fleet"].central_queue
        )
        seen["429"] += any(r.http_status == 429 for r in reference.records)
        seen["retried"] += any(r.retried for r in reference.records)
        hits = any(r.cached_tokens for r in reference.records)
        seen["prefix hits"] += hits
        seen["prefix hits, preempted"] += hits and reference.preemptions > 0
        seen["prefix affinity"] += kw["fleet"].routing == "prefix_affinity" and kw["replicas"] > 1
        seen["autoscaled"] += kw["fleet"].autoscaler is not None
        seen["cold starts"] += reference.fleet.cold_starts > 0
        seen["fleet size changed"] += reference.fleet.min_replicas < reference.fleet.peak_replicas
    assert seen.pop("random, central queue") >= 2, seen  # (500 cases by hand: 29)
    assert seen.pop("prefix hits, preempted") >= 3, seen  # (these 60: 4)
    assert min(seen.values()) >= 5, seen


def test_token_times_are_kept_alike_or_not_at_all() -> None:
    plan, engine, kw = random_case(3)
    reference = simulate(plan, engine, core="reference", record_chunks=False, **kw)
    fast = simulate(plan, engine, core="fast", record_chunks=False, **kw)
    assert same_records(fast.records, reference.records)
    assert not any(r.chunk_times for r in fast.records)
    tokens = fast.table.tokens
    assert tokens is not None and not tokens.chunks.any() and len(fast.table.gaps) == 0


def test_what_the_fast_core_does_not_cover_runs_on_the_reference() -> None:
    """Auto picks the reference and says so; asking for the fast core says why not."""
    plan, engine, _ = random_case(1)
    cases: list[tuple[list[RequestSpec], EngineConfig, dict[str, Any], str]] = [
        (plan, EngineConfig(max_batched_tokens=1 << 63), {}, "a KV cache or token budget over"),
        (plan, EngineConfig(max_num_seqs=1 << 40), {}, "over 65,536 batch slots"),
        ([RequestSpec("a", 0.0, 1 << 40, 5)], engine, {}, "a request of over"),
    ]
    for p, e, kw, why in cases:
        assert simulate(p, e, **kw).core == "reference"
        with pytest.raises(ValueError, match=f"does not run this simulation yet: {why}"):
            simulate(p, e, core="fast", **kw)
    assert simulate(plan, engine).core == "fast"
    assert simulate(plan, engine, jumps=False).core == "fast"  # stepping, on either core


def test_a_plan_that_repeats_an_id_is_refused_by_both() -> None:
    plan = [RequestSpec("a", 0.0, 10, 5), RequestSpec("a", 1.0, 10, 5)]
    for core in CORES:
        with pytest.raises(ValueError, match="repeats request id 'a'"):
            simulate(plan, EngineConfig(), core=core)


def test_a_fleet_that_scales_to_zero_and_back_many_times() -> None:
    """Bursts 3 s apart: the autoscaler scales to zero between them and a burst's first
    request wakes the fleet (the activator), 160 cold starts in all, far more replicas over
    the run than the fast core's tables first hold (10 rows: they grow while it pauses)."""
    plan = [
        RequestSpec(f"r{b}-{k}", 3.0 * b + 0.01 * k, 100, 20) for b in range(40) for k in range(12)
    ]
    scaler = AutoscalerSpec(
        target=2, interval_s=0.25, stabilisation_s=0, min_replicas=0, max_replicas=4,
        keep_alive_s=0.5,
    )  # fmt: skip
    fleet = FleetSpec(autoscaler=scaler, cold_start=ColdStartSpec(load_s=0.4, jitter=0.3))
    engine = EngineConfig(max_num_seqs=4, cost=StepCost(0.01, 0.001, 0.0001))
    reference = simulate(plan, engine, replicas=0, fleet=fleet, core="reference")
    fast = simulate(plan, engine, replicas=0, fleet=fleet, core="fast")
    assert reference.fleet.cold_starts == 160 and reference.fleet.min_replicas == 0
    assert same_records(fast.records, reference.records)
    assert _figures(fast) == pytest.approx(_figures(reference), rel=1e-9, abs=1e-12)


def test_a_target_set_to_die_is_simulated_alike_by_both() -> None:
    """The reference target's `die_after` crashes it (a live run then voids itself); neither
    core models the crash, and the fast core runs such a twin as the reference does."""
    plan, engine, kw = random_case(3)
    faults = TargetFaults(reject_429=0.1, die_after=5, seed=3)
    fast = simulate(plan, engine, **kw, faults=faults)
    assert fast.core == "fast"
    assert same_records(
        fast.records, simulate(plan, engine, core="reference", **kw, faults=faults).records
    )


def test_no_request_and_one_request() -> None:
    for core in CORES:
        empty = simulate([], EngineConfig(), core=core)
        assert empty.records == [] and empty.fleet.peak_replicas == 1
        one = simulate([RequestSpec("a", 0.5, 40, 3)], EngineConfig(), core=core)
        (record,) = one.records
        assert record.status == "ok" and record.output_tokens == 3
        assert record.first_token is not None and math.isclose(record.start, 0.5)


def test_the_kernel_read_as_python_gives_the_same_records() -> None:
    """The kernel's source run by the interpreter (numba off, in a child) agrees with the
    reference too: numba compiles what the source says, and coverage can follow it there."""
    code = (
        "from tests.test_fast_core import random_case, same_records\n"
        "from simulator.replay.sim import simulate\n"
        "from simulator.fast import kernel\n"
        "assert not hasattr(kernel.run, 'py_func')  # plain Python: not compiled\n"
        "for seed in (0, 5, 12, 17, 29, 44):\n"
        "    plan, engine, kw = random_case(seed)\n"
        "    plan = plan[:150]\n"
        "    fast = simulate(plan, engine, core='fast', **kw)\n"
        "    reference = simulate(plan, engine, core='reference', **kw)\n"
        "    assert same_records(fast.records, reference.records), seed\n"
        "print('equal')\n"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == "equal", result.stderr[-3000:]


STALE_INDEX = """
import pickle, sys
from pathlib import Path
import numba
import simulator.fast.kernel as kernel
import simulator.fast.layout as layout
layout.Gone = type("Gone", (), {"__module__": "simulator.fast.layout"})
folder = Path(kernel.run._cache._cache_path)
for index in folder.glob("*.nbi"):  # each names a type the source does not have
    with open(index, "wb") as f:
        pickle.dump(numba.__version__, f)
        f.write(pickle.dumps(((0, 0), {"key": layout.Gone})))
(folder / "fast.source-sha256").write_text("another version of the fast core")
"""
SIMULATE = """
from simulator.replay.sim import simulate
from simulator.engine.core import EngineConfig
from scenarios.plan import RequestSpec
print(simulate([RequestSpec("a", 0.0, 10, 5)], EngineConfig(), core="fast").records[0].status)
"""


def test_a_cache_left_by_another_version_of_the_kernel_is_cleared(tmp_path: Path) -> None:
    """numba's cache index pickles argument types, and an index naming a type the kernel no
    longer has (a checkout updated over its cache) raised AttributeError on load: the cache
    is kept for one version of the source only. `warm` compiles it, saying so, when none is
    cached, and says nothing when one is."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def child(code: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", code]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)

    warm = "from simulator.fast.warm import warm; warm(print)"
    assert "compiling the fast simulator core" in child(warm).stdout  # cached under tmp_path
    assert list(tmp_path.rglob("*.nbi"))
    assert child(warm).stdout == ""  # compiled: nothing to say
    assert child(SIMULATE).stdout.strip() == "ok"
    made = child(STALE_INDEX)
    assert made.returncode == 0, made.stderr[-2000:]
    again = child(SIMULATE)
    assert again.returncode == 0 and again.stdout.strip() == "ok", again.stderr[-3000:]
