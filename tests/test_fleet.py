"""The fleet: queueing theory through c replicas, routing policies, 429s, autoscaling with cold
starts, conservation and determinism.

With max_num_seqs = 1 each replica is one server. A request of k prompt tokens and one output
token is served in one prefill step of k x d seconds, so with k geometric (p = 0.001) service is
exponential to within 0.1% in its squared coefficient of variation.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from scenarios.deployment_spec import Deployment
from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RequestRecord, read_records
from scenarios.spec import (
    AutoscalerSpec,
    ColdStartSpec,
    FleetSpec,
    Retry,
    ScenarioError,
    parse_scenario,
)
from scenarios.traffic import PoissonArrival
from simulator.deploy.catalog import load_catalog
from simulator.deploy.memory import load_seconds
from simulator.engine.core import Engine, EngineConfig, EngineSequence, StepCost
from simulator.fit.calibrate import Calibration, Fit
from simulator.replay.coldstart import load_seconds as cold_load_seconds
from simulator.replay.routing import Router, Routing
from simulator.replay.sim import Core, SimResult, simulate
from surgecast.predict import simulate_scenario
from tests.conftest import run_cli, scenario_dict, write_scenario

SEEDS = range(12)
D = 4e-5  # seconds per prompt token
P = 0.001  # prompt tokens ~ Geometric(P): mean 1000, service mean 40 ms
ONE_SLOT = EngineConfig(
    max_num_seqs=1, kv_cache_tokens=10**9, max_batched_tokens=10**8, cost=StepCost(0.0, 0.0, D)
)


def _ci(x: np.ndarray, level: float = 0.99) -> tuple[float, float]:
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _poisson_plan(rng: np.random.Generator, lam: float, n: int) -> list[RequestSpec]:
    """About n Poisson arrivals, each with Geometric(P) prompt tokens and one output token."""
    arrivals = PoissonArrival(type="poisson", rate=lam).plan(rng, n / lam)
    tokens = rng.geometric(P, len(arrivals))
    return [
        RequestSpec(f"r{i}", float(t), int(k), 1)
        for i, (t, k) in enumerate(zip(arrivals, tokens, strict=True))
    ]


def erlang_c_wait(c: int, lam: float, mean_s: float) -> float:
    """M/M/c mean wait in queue (Erlang C)."""
    a = lam * mean_s
    top = a**c / math.factorial(c) * c / (c - a)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait * mean_s / (c - a)


def erlang_b(c: int, a: float) -> float:
    """M/G/c/c blocking probability (Erlang B), by its recurrence."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


@pytest.mark.parametrize("core", ["reference", "fast"])
def test_mmc_mean_wait_through_a_central_queue(core: Core) -> None:
    c, rho = 3, 0.7
    mean_s = D / P
    lam = c * rho / mean_s
    means = []
    for seed in SEEDS:
        plan = _poisson_plan(np.random.default_rng(seed), lam, 6000)
        fleet = FleetSpec(central_queue=True)
        result = simulate(
            plan, ONE_SLOT, replicas=c, timeout_s=1e6, record_chunks=False, fleet=fleet, core=core
        )
        assert result.core == core
        recs = result.records
        waits = [(r.first_token or np.nan) - r.start - (r.prompt_tokens or 0) * D for r in recs]
        means.append(np.mean(waits[len(waits) // 10 :]))
    theory = erlang_c_wait(c, lam, mean_s)  # 21.9 ms
    low, high = _ci(np.asarray(means))
    assert low <= theory <= high, (theory, low, high)
    assert high - low < 0.35 * theory  # tight enough to tell Erlang C from one queue each


def gi_m_1_wait(lam: float, k: int, mu: float) -> float:
    """Mean wait of a GI/M/1 queue whose gaps are Erlang-k of rate lam per phase (a replica
    of k behind round robin on a Poisson stream): sigma = A*(mu (1 - sigma)), W = sigma /
    (mu (1 - sigma)), with A*(s) = (lam / (lam + s))^k."""
    sigma = 0.5
    for _ in range(500):
        sigma = (lam / (lam + mu * (1 - sigma))) ** k
    return sigma / (mu * (1 - sigma))


@pytest.mark.parametrize("core", ["reference", "fast"])
def test_round_robin_makes_each_replica_a_gi_m_1_queue(core: Core) -> None:
    """Round robin deals every c-th Poisson arrival to a replica: Erlang-c gaps, GI/M/1."""
    c, rho = 3, 0.7
    mean_s = D / P
    lam = c * rho / mean_s
    means = []
    for seed in range(8):
        plan = _poisson_plan(np.random.default_rng(seed), lam, 5000)
        fleet = FleetSpec(routing="round_robin")
        result = simulate(
            plan, ONE_SLOT, replicas=c, timeout_s=1e6, record_chunks=False, fleet=fleet, core=core
        )
        assert result.core == core
        recs = result.records
        waits = [(r.first_token or np.nan) - r.start - (r.prompt_tokens or 0) * D for r in recs]
        means.append(np.mean(waits[len(waits) // 10 :]))
    theory = gi_m_1_wait(lam, c, 1 / mean_s)  # 54 ms, over twice Erlang C's 22 ms
    low, high = _ci(np.asarray(means))
    assert low <= theory <= high, (theory, low, high)
    assert high - low < 0.3 * theory


@pytest.mark.parametrize("core", ["reference", "fast"])
def test_erlang_b_blocking_with_no_room_to_wait(core: Core) -> None:
    """M/D/c/c: fixed 40 ms service, no waiting (admission_limit 0); blocking is insensitive
    to the service distribution, so Erlang B holds."""
    c, a = 3, 2.0
    service = 0.04
    lam = a / service
    config = EngineConfig(max_num_seqs=1, kv_cache_tokens=10**6, cost=StepCost(service, 0, 0))
    fractions = []
    for seed in SEEDS:
        arrivals = PoissonArrival(type="poisson", rate=lam).plan(
            np.random.default_rng(seed), 4000 / lam
        )
        plan = [RequestSpec(f"r{i}", float(t), 1, 1) for i, t in enumerate(arrivals)]
        fleet = FleetSpec(central_queue=True, admission_limit=0)
        result = simulate(plan, config, replicas=c, record_chunks=False, fleet=fleet, core=core)
        assert result.core == core
        steady = result.records[len(result.records) // 10 :]
        rejected = [r for r in steady if r.status == "rejected"]
        assert all(r.http_status == 429 and r.error_kind == "http_429" for r in rejected)
        assert all(r.status in ("ok", "rejected") for r in steady)
        fractions.append(len(rejected) / len(steady))
    theory = erlang_b(c, a)  # 0.21
    low, high = _ci(np.asarray(fractions))
    assert low <= theory <= high, (theory, low, high)
    assert high - low < 0.1 * theory


def test_a_full_admission_queue_answers_429() -> None:
    """One slot, room for two to wait: of ten sent at once, three are admitted."""
    config = EngineConfig(max_num_seqs=1, cost=StepCost(0.1, 0.0, 0.0))
    plan = [RequestSpec(f"r{i}", 0.0, 4, 2) for i in range(10)]
    result = simulate(plan, config, fleet=FleetSpec(admission_limit=2))
    statuses = [r.status for r in result.records]
    assert statuses == ["ok"] * 3 + ["rejected"] * 7
    assert result.rejected == 7
    assert all(r.end == 0.0 for r in result.records[3:])


@pytest.mark.parametrize(("retry_after_s", "starts"), [(None, [0.0, 0.5, 1.5]), (2.0, [0.0, 2.0])])
def test_clients_retry_a_429_with_backoff(retry_after_s: float | None, starts: list[float]) -> None:
    """One slot and no room to wait: r1 is refused while r0 runs (0 to 1 s) and retries after
    0.5 s, then 1 s (doubling), or after the fleet's Retry-After; each attempt is a record."""
    config = EngineConfig(max_num_seqs=1, cost=StepCost(0.125, 0.0, 0.0))
    retry = Retry(max_retries=3, backoff_s=0.5, jitter=0.0)
    plan = [RequestSpec("r0", 0.0, 4, 8), RequestSpec("r1", 0.0, 4, 2, retry=retry)]
    fleet = FleetSpec(central_queue=True, admission_limit=0, retry_after_s=retry_after_s)
    result = simulate(plan, config, fleet=fleet)
    r1 = [r for r in result.records if r.id == "r1"]
    assert [r.start for r in r1] == starts
    assert [r.attempt for r in r1] == list(range(len(starts)))
    assert all(r.retried and r.http_status == 429 for r in r1[:-1])
    last = r1[-1]
    assert last.status == "ok" and not last.retried and last.intended_start == 0.0
    assert last.first_token == starts[-1] + 0.125 and result.rejected == 0


def test_retries_stop_at_max_retries_and_patience() -> None:
    config = EngineConfig(max_num_seqs=1, cost=StepCost(0.125, 0.0, 0.0))
    retry = Retry(max_retries=2, backoff_s=0.25, jitter=0.0)
    plan = [
        RequestSpec("r0", 0.0, 4, 80),  # holds the slot for 10 s
        RequestSpec("r1", 0.0, 4, 2, retry=retry),
        RequestSpec("r2", 0.0, 4, 2, retry=retry, patience_s=0.5),
    ]
    fleet = FleetSpec(central_queue=True, admission_limit=0)
    result = simulate(plan, config, fleet=fleet)
    attempts = Counter(r.id for r in result.records)
    assert attempts == {"r0": 1, "r1": 3, "r2": 2}  # r2's second retry would come after 0.75 s
    assert result.rejected == 2


def _engines(n: int, slots: int = 4) -> list[Engine]:
    return [Engine(EngineConfig(max_num_seqs=slots, cost=StepCost(0.01, 0, 0))) for _ in range(n)]


def _router(policy: Routing, engines: list[Engine], seed: int = 0) -> Router:
    """A router over `engines` (their order breaks ties), as a fleet keeps one."""
    router = Router(policy, seed)
    for i, engine in enumerate(engines):
        router.add(engine, i)
    return router


def _load(router: Router, engine: Engine, n: int = 1) -> None:
    """Queue n sequences on `engine`, telling the router."""
    for _ in range(n):
        engine.add(EngineSequence("x", 10, 5))
    router.changed(engine)


def test_round_robin_spreads_exactly() -> None:
    engines = _engines(3)
    router = _router("round_robin", engines)
    picks = Counter(engines.index(router.choose()) for _ in range(30))
    assert picks == {0: 10, 1: 10, 2: 10}
    # end to end: identical requests one at a time keep each replica equally busy
    config = EngineConfig(max_num_seqs=1, cost=StepCost(0.05, 0.0, 0.0))
    plan = [RequestSpec(f"r{i}", float(i), 8, 3) for i in range(30)]
    result = simulate(plan, config, replicas=3, fleet=FleetSpec(routing="round_robin"))
    assert max(result.busy_fraction) == pytest.approx(min(result.busy_fraction))


def test_least_outstanding_is_join_shortest_queue_first_on_ties() -> None:
    """The heap the router keeps picks what min(engines, key=load) picks, as loads change."""
    engines = _engines(6)
    router = _router("least_outstanding", engines)
    rng = np.random.default_rng(1)
    queued: list[list[EngineSequence]] = [[] for _ in engines]
    for step in range(2000):
        i = int(rng.integers(len(engines)))
        if queued[i] and rng.random() < 0.5:
            engines[i].abort(queued[i].pop())
        else:
            queued[i].append(EngineSequence(f"s{step}", 10, 5))
            engines[i].add(queued[i][-1])
        router.changed(engines[i])
        assert router.choose() is min(engines, key=lambda e: e.load)
    assert router.choose(among=engines[3:]) is min(engines[3:], key=lambda e: e.load)


def test_least_kv_picks_the_emptiest_cache() -> None:
    engines = _engines(3)
    router = _router("least_kv", engines)
    for engine, prompt in zip(engines, (1000, 100, 500), strict=True):
        engine.add(EngineSequence(f"s{prompt}", prompt, 50))
        engine.complete_step(engine.plan_step())  # the prompt's KV blocks are taken
        router.changed(engine)
    assert [e.load for e in engines] == [1, 1, 1]
    assert router.choose() is engines[1]
    assert _router("least_outstanding", engines).choose() is engines[0]


def _cache(engine: Engine, prefix: tuple[tuple[int, int], ...]) -> None:
    """Run a request beginning with `prefix` through `engine`: its prefix cache holds it."""
    engine.add(EngineSequence("warm", sum(n for _, n in prefix) + 16, 1, prefix))
    while engine.has_work:
        engine.complete(engine.plan_step())


def test_prefix_affinity_follows_the_longest_cached_prefix_until_its_replica_is_full() -> None:
    """Three replicas with prefix caching, batches of 4: a prompt whose cached run covers half
    of it or more goes where it is cached, until that replica holds 4; a shorter run, or one
    every replica caches, decides nothing: the least loaded (then least cached) replica."""
    engines = [
        Engine(EngineConfig(max_num_seqs=4, enable_prefix_caching=True, cost=StepCost(0.01, 0, 0)))
        for _ in range(3)
    ]
    router = _router("prefix_affinity", engines)
    system = ((7, 64),)
    _cache(engines[1], system)
    for i in range(4):  # least outstanding would go to engines[0] (or [2]) from the start
        assert router.choose((*system, (100 + i, 32)), prompt_tokens=96) is engines[1]
        _load(router, engines[1])
    short = ((7, 64), (200, 192))  # 64 cached tokens of 256: too little to follow
    assert router.choose(short, prompt_tokens=256) is engines[0]
    assert router.choose((*system, (300, 32)), prompt_tokens=96) is engines[0]  # [1] is full
    assert router.choose(((8, 64),), prompt_tokens=80) is engines[0]  # cached nowhere
    _cache(engines[0], system)
    _cache(engines[2], system)
    picks = []
    for i in range(6):  # cached everywhere: by load
        picks.append(router.choose((*system, (400 + i, 32)), prompt_tokens=96))
        _load(router, picks[-1])
    assert picks == [engines[0], engines[2], engines[0], engines[2], engines[0], engines[2]]


def test_random_routing_is_seeded_and_uniform() -> None:
    engines = _engines(4)

    def picks(seed: int) -> list[int]:
        router = _router("random", engines, seed)
        return [engines.index(router.choose()) for _ in range(4000)]

    assert picks(3) == picks(3)
    assert picks(3) != picks(4)
    counts = np.bincount(picks(3), minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_prefix_affinity_helps_the_prefix_cache() -> None:
    """Four system prompts, four replicas with prefix caching: affinity finds each prompt's
    cached blocks, round robin mostly does not."""
    config = EngineConfig(
        max_num_seqs=8,
        enable_prefix_caching=True,
        cost=StepCost(0.005, 0.0005, 0.0002),
    )
    rng = np.random.default_rng(5)
    plan = [
        RequestSpec(f"r{i}", 0.05 * i, 2048 + 32, 4, prefix=((int(h), 2048), (10_000 + i, 32)))
        for i, h in enumerate(rng.integers(4, size=400))
    ]
    ttft = {}
    for routing in ("prefix_affinity", "round_robin"):
        result = simulate(plan, config, replicas=4, fleet=FleetSpec(routing=routing))
        assert all(r.status == "ok" for r in result.records)
        ttft[routing] = float(np.mean([r.ttft for r in result.records]))
    assert ttft["prefix_affinity"] < 0.5 * ttft["round_robin"]


SCALE_FROM_ZERO = AutoscalerSpec(
    metric="in_flight",
    target=4,
    interval_s=1.0,
    stabilisation_s=5.0,
    min_replicas=0,
    max_replicas=4,
    keep_alive_s=10.0,
)


def test_a_burst_on_a_fleet_at_zero_waits_for_the_cold_start() -> None:
    cold = ColdStartSpec(model="Llama-3-8B", gpu="H100-80GB", provisioning_s=2.0, init_s=1.0)
    llama_on_h100 = Deployment(model="Llama-3-8B", gpu="H100-80GB")
    boot = 2.0 + load_seconds(llama_on_h100, load_catalog()) + 1.0  # 3.5 s
    config = EngineConfig(max_num_seqs=4, cost=StepCost(0.02, 0.001, 0.0001))
    burst = [RequestSpec(f"a{i}", 10.0 + 0.01 * i, 50, 20) for i in range(16)]
    later = [RequestSpec(f"b{i}", 100.0 + 0.01 * i, 50, 20) for i in range(4)]
    fleet = FleetSpec(autoscaler=SCALE_FROM_ZERO, cold_start=cold)
    result = simulate(burst + later, config, replicas=0, fleet=fleet)
    recs = {r.id: r for r in result.records}
    assert all(r.status == "ok" for r in result.records)
    first = recs["a0"]
    assert first.ttft is not None and boot <= first.ttft < boot + 0.1
    # no request of either burst is served before the first replica it woke is up
    assert all((recs[f"a{i}"].first_token or 0) >= 10.0 + boot for i in range(16))
    assert all((recs[f"b{i}"].first_token or 0) >= 100.0 + boot for i in range(4))
    # after the keep-alive the fleet went back to zero, so the later burst pays again
    assert recs["b0"].ttft is not None and recs["b0"].ttft >= boot
    timeline = result.fleet.timeline
    assert timeline[0] == (0.0, 0)
    assert any(n == 0 and 20 < t < 100 for t, n in timeline)
    assert result.fleet.cold_starts >= 2 and result.fleet.peak_replicas == 4
    assert result.fleet.min_replicas == 0
    # replica-seconds: at least the boot and service of each replica that was started
    assert result.fleet.replica_seconds >= result.fleet.cold_starts * boot


@pytest.mark.parametrize(("stabilisation_s", "keep_alive_s"), [(20.0, 0.0), (5.0, 30.0)])
def test_scale_down_waits_out_the_window_and_the_keep_alive(
    stabilisation_s: float, keep_alive_s: float
) -> None:
    """Eight 5 s requests on one replica: at the first evaluation (t = 1) the autoscaler wants
    ceil(8 / 2) = 4 replicas. Once they end (at E), it wants 1, but removes the idle three only
    when no evaluation of the last `stabilisation_s` wanted more (the last one that did ran at
    floor(E)) and they have been idle `keep_alive_s` (since t = 1: they never served)."""
    config = EngineConfig(max_num_seqs=8, cost=StepCost(0.05, 0.0, 0.0))
    plan = [RequestSpec(f"r{i}", 0.0, 10, 100) for i in range(8)]
    plan.append(RequestSpec("late", 60.0, 10, 2))  # keeps the autoscaler running until then
    scaler = AutoscalerSpec(
        target=2,
        interval_s=1.0,
        stabilisation_s=stabilisation_s,
        min_replicas=1,
        max_replicas=4,
        keep_alive_s=keep_alive_s,
    )
    fleet = FleetSpec(autoscaler=scaler, cold_start=ColdStartSpec(load_s=0.5))
    result = simulate(plan, config, fleet=fleet)
    end = max(r.end or 0 for r in result.records[:8])
    assert 4.9 < end < 5.2
    assert result.fleet.timeline[:2] == ((0.0, 1), (1.0, 4))
    (t_down, n_down) = result.fleet.timeline[2]
    assert n_down == 1
    earliest = max(math.floor(end) + stabilisation_s, 1.0 + keep_alive_s)
    assert earliest <= t_down <= earliest + 1.0
    assert result.fleet.cold_starts == 3
    # replica-seconds: one replica throughout, three from t = 1 to their removal
    span = result.records[-1].end or 0
    assert result.fleet.replica_seconds == pytest.approx(span + 3 * (t_down - 1.0))


def _random_case(seed: int) -> tuple[list[RequestSpec], EngineConfig, FleetSpec, int, float]:
    rng = np.random.default_rng(seed)
    session: dict[str, object] = {
        "turns": {"dist": "constant", "value": int(rng.integers(1, 4))},
        "think_time": {"dist": "exponential", "mean": 1.0},
        "retry": {"max_retries": int(rng.integers(0, 4)), "backoff_s": 0.2},
    }
    if rng.integers(2):
        session["patience"] = {"dist": "exponential", "mean": float(rng.uniform(0.5, 5))}
    traffic = {"rate": float(rng.uniform(2, 12)), "duration_s": 30, "seed": seed}
    plan = build_plan(parse_scenario(scenario_dict(traffic=traffic, session=session)))
    config = EngineConfig(
        max_num_seqs=int(rng.integers(1, 6)),
        kv_cache_tokens=int(rng.choice([2048, 8192, 65536])),
        cost=StepCost(0.01, 0.002, 0.0001),
        enable_prefix_caching=bool(rng.integers(2)),
    )
    routing = ["random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"]
    scaler = None
    replicas = int(rng.integers(1, 4))
    if rng.integers(2):
        low = int(rng.integers(0, 2))
        scaler = AutoscalerSpec(
            metric=str(rng.choice(["in_flight", "queue", "kv"])),
            target=float(rng.uniform(0.2, 2)),
            interval_s=float(rng.uniform(0.2, 3)),
            stabilisation_s=float(rng.uniform(0, 10)),
            min_replicas=low,
            max_replicas=int(rng.integers(max(low, 1), 5)),
            keep_alive_s=float(rng.uniform(0, 5)),
        )
        replicas = low  # it must scale up
    fleet = FleetSpec(
        routing=routing[int(rng.integers(5))],
        admission_limit=None if rng.integers(2) else int(rng.integers(0, 6)),
        central_queue=bool(rng.integers(2)),
        autoscaler=scaler,
        cold_start=ColdStartSpec(provisioning_s=float(rng.uniform(0, 2)), load_s=1.0, jitter=0.3),
        seed=seed,
    )
    return plan, config, fleet, replicas, float(rng.uniform(0.5, 8))


def _check_conservation(plan: list[RequestSpec], result: SimResult, timeout_s: float) -> None:
    tries: dict[str, list[RequestRecord]] = {}
    for r in result.records:
        tries.setdefault(r.id, []).append(r)
    for attempts in tries.values():  # retried 429s, then the attempt that ended the request
        assert [a.attempt for a in attempts] == list(range(len(attempts)))
        assert all(a.retried and a.http_status == 429 for a in attempts[:-1])
        assert not attempts[-1].retried
    by_id = {i: attempts[-1] for i, attempts in tries.items()}
    assert all(s.id in by_id for s in plan if s.after is None)  # every first turn was sent
    for spec in plan:  # a follow-up is sent only after its turn ended well
        if spec.after is not None and spec.id in by_id:
            assert by_id[spec.after].status == "ok"
    kinds = Counter((r.status, r.error_kind) for r in by_id.values())
    assert set(kinds) <= {
        ("ok", None),
        ("rejected", "http_429"),
        ("rejected", "context_length"),
        ("timeout", "timeout"),
        ("cancelled", "abandoned"),
    }
    assert result.rejected == kinds["rejected", "http_429"] + kinds["rejected", "context_length"]
    assert result.timeouts == kinds["timeout", "timeout"]
    assert result.abandoned == kinds["cancelled", "abandoned"]
    spec_of = {s.id: s for s in plan}
    for r in result.records:
        assert r.end is not None and r.start <= r.end <= r.start + timeout_s + 1e-9
        assert all(t <= r.end for t in r.chunk_times)
        if r.status == "ok":
            assert r.output_tokens == spec_of[r.id].max_tokens
        if r.status == "cancelled":
            assert r.first_token is None


@pytest.mark.parametrize("seed", range(10))
def test_every_request_ends_once_and_the_fleet_stays_in_bounds(seed: int) -> None:
    plan, config, fleet, replicas, timeout_s = _random_case(seed)
    result = simulate(plan, config, replicas=replicas, timeout_s=timeout_s, fleet=fleet)
    _check_conservation(plan, result, timeout_s)
    scaler = fleet.autoscaler
    low, high = (replicas, replicas) if scaler is None else (0, scaler.max_replicas)
    counts = [n for _, n in result.fleet.timeline]
    assert counts and low <= min(counts) and max(counts) <= high
    if scaler is not None and scaler.min_replicas > 0:
        assert min(counts) >= min(scaler.min_replicas, replicas)
    assert result.fleet.peak_replicas == max(counts)
    again = simulate(plan, config, replicas=replicas, timeout_s=timeout_s, fleet=fleet)
    assert [r.to_json() for r in again.records] == [r.to_json() for r in result.records]
    assert again.fleet == result.fleet


def test_timeouts_abort_free_their_kv_and_are_counted() -> None:
    """KV for one 200-token prompt at a time: r0 holds it until it times out at 1 s, and only
    then can r1 (which would otherwise wait for ever) be admitted."""
    config = EngineConfig(max_num_seqs=4, kv_cache_tokens=256, cost=StepCost(0.125, 0.0, 0.0))
    plan = [RequestSpec("r0", 0.0, 200, 50), RequestSpec("r1", 0.5, 200, 3)]
    result = simulate(plan, config, timeout_s=1.0)
    r0, r1 = result.records
    assert result.timeouts == 1 and r0.status == "timeout" and r0.end == 1.0
    assert r1.status == "ok" and r1.first_token == 1.125 and r1.end == 1.375


def test_defaults_are_a_fixed_join_shortest_queue_fleet() -> None:
    plan, config, _, _, _ = _random_case(3)
    result = simulate(plan, config, replicas=2)
    explicit = simulate(plan, config, replicas=2, fleet=FleetSpec())
    assert [r.to_json() for r in explicit.records] == [r.to_json() for r in result.records]
    span = max(r.end or r.start for r in result.records) - min(r.start for r in result.records)
    assert result.fleet.replica_seconds == pytest.approx(2 * span)
    assert result.fleet.cold_starts == 0 and result.fleet.timeline == ((0.0, 2),)


def test_replica_count_outside_the_autoscalers_bounds_is_refused() -> None:
    with pytest.raises(ValueError, match=r"replicas must be in \[1, 4\], got 0"):
        scaler = AutoscalerSpec(target=1, min_replicas=1, max_replicas=4)
        simulate([], ONE_SLOT, replicas=0, fleet=FleetSpec(autoscaler=scaler))
    with pytest.raises(ValueError, match=r"min_replicas: must be <= max_replicas \(2\), got 3"):
        AutoscalerSpec(target=1, min_replicas=3, max_replicas=2)


def test_scenario_fleet_section() -> None:
    scenario = parse_scenario(
        scenario_dict(
            fleet={
                "routing": "prefix_affinity",
                "admission_limit": 64,
                "autoscaler": {"target": 8, "min_replicas": 0, "max_replicas": 6},
                "cold_start": {"provisioning_s": 30, "model": "Llama-3-8B", "gpu": "H100-80GB"},
            }
        )
    )
    fleet = scenario.fleet
    assert fleet.routing == "prefix_affinity"
    assert fleet.autoscaler is not None and fleet.autoscaler.max_replicas == 6
    assert fleet.autoscaler.starting_replicas == 0
    assert cold_load_seconds(fleet.cold_start) == pytest.approx(8.03e9 * 2 / 32e9)
    # over the replica's GPUs (cost.gpus_per_replica), each loading its shard at once
    assert cold_load_seconds(fleet.cold_start, 2) == pytest.approx(8.03e9 / 32e9)
    three = r"3 x H100-80GB \(cost\.gpus_per_replica\): tensor_parallel 3 does not divide"
    with pytest.raises(ValueError, match=three):
        cold_load_seconds(fleet.cold_start, 3)
    # a scenario without the section keeps today's fleet
    assert parse_scenario(scenario_dict()).fleet == FleetSpec()


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        (
            {"autoscaler": {"target": 4, "min_replicas": 5, "max_replicas": 2}},
            "fleet.autoscaler: min_replicas: must be <= max_replicas (2), got 5",
        ),
        ({"routing": "fastest"}, "fleet.routing: Input should be"),
        ({"admission_limit": -1}, "fleet.admission_limit: Input should be greater than"),
        ({"cold_start": {"model": "Llama-3-8B"}}, "fleet.cold_start: gpu: required"),
        ({"autoscaler": {"target": 0, "max_replicas": 2}}, "fleet.autoscaler.target"),
        (
            {"cold_start": {"tensor_parallel": 2}},  # 1, the default, reads as before
            "fleet.cold_start: tensor_parallel: a replica's GPUs are set once, as "
            "cost.gpus_per_replica",
        ),
    ],
)
def test_bad_fleet_sections_name_the_field(fleet: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(scenario_dict(fleet=fleet))
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_a_model_too_large_for_its_gpus_is_refused_by_name() -> None:
    scenario = parse_scenario(
        scenario_dict(fleet={"cold_start": {"model": "Llama-3-70B", "gpu": "L40S-48GB"}})
    )
    one = r"fleet\.cold_start: Llama-3-70B on 1 x L40S-48GB \(cost\.gpus_per_replica\): does not"
    with pytest.raises(ValueError, match=one):
        cold_load_seconds(scenario.fleet.cold_start)
    unknown = parse_scenario(
        scenario_dict(fleet={"cold_start": {"model": "x", "gpu": "H100-80GB"}})
    )
    with pytest.raises(ValueError, match=r"fleet\.cold_start\.model: unknown model 'x'"):
        cold_load_seconds(unknown.fleet.cold_start)


def _calibration(engine: EngineConfig) -> Calibration:
    c = engine.cost
    assert isinstance(c, StepCost)
    values = np.array([0.0, c.base_s, c.per_decode_seq_s, c.per_prefill_token_s])
    return Calibration(engine, Fit(values, np.zeros((4, 4)), 100, 100, 1.0, 0.0))


def test_a_scenarios_fleet_section_drives_simulate(tmp_path: Path) -> None:
    scenario = parse_scenario(
        scenario_dict(
            traffic={"rate": 20, "duration_s": 20, "seed": 4},
            fleet={
                "admission_limit": 4,
                "autoscaler": {"target": 4, "min_replicas": 0, "max_replicas": 3, "interval_s": 1},
                "cold_start": {"provisioning_s": 5, "load_s": 2},
            },
        )
    )
    engine = EngineConfig(max_num_seqs=4, cost=StepCost(0.02, 0.001, 0.0001))
    outcome = simulate_scenario(scenario, "s.yaml", _calibration(engine), out=tmp_path / "sim")
    fleet = outcome.folder.meta().target.fleet
    assert fleet is not None
    assert fleet["cold_starts"] >= 1 and fleet["timeline"][0] == [0.0, 0]
    assert 1 <= fleet["peak_replicas"] <= 3 and fleet["rejected"] > 0
    records = read_records(outcome.folder.requests)
    first = min(records, key=lambda r: r.start)
    assert first.ttft is not None and first.ttft >= 7.0  # the fleet woke from zero for it
    bad = parse_scenario(scenario_dict(fleet={"cold_start": {"model": "x", "gpu": "L40S-48GB"}}))
    with pytest.raises(ScenarioError, match=r"fleet\.cold_start\.model: unknown model"):
        simulate_scenario(bad, "s.yaml", _calibration(engine), out=tmp_path / "bad")


def test_the_cli_refuses_a_fleet_model_that_cannot_fit(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path / "s.yaml",
        scenario_dict(fleet={"cold_start": {"model": "Llama-3-70B", "gpu": "L40S-48GB"}}),
    )
    result = run_cli("plan", str(path), timeout=60)
    assert result.returncode == 2
    assert f"{path}: fleet.cold_start: Llama-3-70B on 1 x L40S-48GB" in result.stderr
    assert "does not fit: weights 131.4 + activations 1.7" in result.stderr
