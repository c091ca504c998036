"""One simulated run of a forecast's configuration (a seed): the job a worker process gets,
what the run measured over its steady window, and quantities over the seeds."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field

import numpy as np

from scenarios.metrics import summarize_table
from scenarios.plan import RequestSpec, build_plan
from scenarios.spec import FleetSpec, Scenario
from simulator.engine.core import EngineConfig
from simulator.fit.tokenmap import TokenMap
from simulator.replay.sim import simulate

WARMUP_FRACTION = 0.1  # requests sent in the first 10% of the window start an empty fleet


@dataclass(frozen=True)
class Estimate:
    """A quantity over the seeds: their mean, and the lowest and highest seed."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        x = np.asarray(values, dtype=float)
        return cls(float(np.mean(x)), float(np.min(x)), float(np.max(x)))


@dataclass(frozen=True)
class SeedOutcome:
    """What one simulated run of a configuration measured (one seed)."""

    observed: dict[str, float]  # per objective name, the run's value
    ttft_p50_ms: float
    ttft_p95_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    throughput: float  # fleet requests/s completed
    output_tokens_per_s: float
    utilisation: float  # replicas' busy fraction, mean
    kv_peak: float
    kv_mean: float
    preemptions: float
    slots_full: float
    rejected: float  # share of the requests refused (429 from the admission queue)
    mean_replicas: float  # replica-seconds over the simulated window
    peak_replicas: float
    cold_starts: float
    core: str = "reference"  # the simulator core that ran it (simulate's `core`)
    input_tokens_per_s: float = 0.0  # prompt tokens of the requests answered, per second
    sessions_per_s: float = 0.0  # sessions (conversations) started, per second


@dataclass(frozen=True)
class SeedJob:
    """One simulated run: everything a worker process needs, picklable."""

    scenario: Scenario
    engine: EngineConfig
    seed: int
    rate_scale: float
    replicas: int
    duration_s: float
    tokens: TokenMap = field(default_factory=TokenMap)
    fleet: FleetSpec = field(default_factory=FleetSpec)  # routing and admission

    def traffic(self) -> PlanJob:
        return PlanJob(self.scenario, self.seed, self.rate_scale, self.duration_s, self.tokens)


@dataclass(frozen=True)
class PlanJob:
    """A seed's traffic at a scale: the same for every fleet size a search tries."""

    scenario: Scenario
    seed: int
    rate_scale: float
    duration_s: float
    tokens: TokenMap

    def key(self) -> str:
        """Names this traffic: equal for jobs that send the same requests, whatever their
        scenario's cost section says (a deployment search's options differ only there, and
        share their seeds' plans)."""
        traffic = self.scenario.model_dump(exclude={"cost"})
        made = (traffic, self.seed, self.rate_scale, self.duration_s, self.tokens)
        return "plan-" + hashlib.sha256(pickle.dumps(made)).hexdigest()[:32]


def seed_plan(job: PlanJob) -> list[RequestSpec]:
    """The requests one seed sends at one scale, as the calibrated server would serve them."""
    return build_plan(
        job.scenario,
        seed=job.seed,
        rate_scale=job.rate_scale,
        duration_s=job.duration_s,
        served=job.tokens,
    )


def run_seed(job: SeedJob, plan: list[RequestSpec] | None = None) -> SeedOutcome:
    """Simulate one seed of one configuration and measure it over the steady window (its
    traffic built here unless given: `plan`, kept from another fleet size's run)."""
    scenario = job.scenario
    thresholds = scenario.thresholds()
    personas = scenario.persona_thresholds()
    plan = seed_plan(job.traffic()) if plan is None else plan
    result = simulate(
        plan,
        job.engine,
        replicas=job.replicas,
        timeout_s=scenario.target.timeout_s,
        record_chunks="itl" in {t.metric for t in thresholds},
        fleet=job.fleet,
        gpus_per_replica=scenario.cost.gpus_per_replica,
    )
    warmup = WARMUP_FRACTION * job.duration_s
    table = result.table
    steady = table.select(table.intended_start >= warmup)
    summary = summarize_table(steady, thresholds, job.duration_s - warmup, personas)
    observed = {str(slo.threshold): slo.observed for slo in summary.slos}
    for persona, own in personas.items():
        if persona in summary.by_persona:  # no request of it in the window: nothing to judge
            by_name = {str(r.threshold): r.observed for r in summary.by_persona[persona].slos}
            observed.update({f"{persona}: {t}": by_name[str(t)] for t in own})
    ttft, e2e = summary.metrics["ttft"].percentiles, summary.metrics["e2e"].percentiles
    window = job.duration_s - warmup
    tokens = int(steady.output_tokens[steady.ok].sum())
    prompts = steady.tokens.prompt[steady.ok] if steady.tokens is not None else np.zeros(0)
    sessions = sum(1 for spec in plan if spec.turn == 0 and warmup <= spec.arrival < job.duration_s)
    lives = result.fleet.replica_seconds  # over the records' span, first send to last end
    span = float(np.fmax(table.end, table.start).max() - table.start.min()) if len(table) else 0.0
    return SeedOutcome(
        observed,
        ttft[50],
        ttft[95],
        e2e[50],
        e2e[95],
        summary.throughput,
        tokens / window if window > 0 else 0.0,
        float(np.mean(result.busy_fraction)),
        result.kv_peak,
        result.kv_mean,
        float(result.preemptions),
        result.slots_full,
        result.rejected / max(len(table), 1),
        lives / span if lives and span > 0 else float(job.replicas),
        float(result.fleet.peak_replicas or job.replicas),
        float(result.fleet.cold_starts),
        result.core,
        float(np.maximum(prompts, 0).sum()) / window if window > 0 else 0.0,
        sessions / window if window > 0 else 0.0,
    )
