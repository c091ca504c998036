"""Capacity forecast: the fewest replicas that meet every SLO at each scale of today's traffic.

Every configuration simulates the whole fleet: N replicas behind the router receive all of the
scaled traffic, with no slice standing in for them. Each configuration runs over several seeds,
each with its own arrivals and step costs drawn from the calibration's uncertainty, for
`forecast.duration_s` of simulated traffic (the first 10% discarded as warm-up); the seeds run on
a local Dask cluster across the machine's cores, or on a cluster by address
(`simulator.forecast.cluster`). The error bars are the range over seeds, and a configuration
passes only if every seed meets every SLO and the traffic stays under `forecast.max_load` (0.9
by default) of the fleet's saturation throughput: a simulated window is too short for a queue
near saturation to build up, and headroom absorbs bursts, calibration error and drift. A fleet
over that load is refused without being simulated.

The search starts each scale from the load per replica that passed at the scale below, so a
larger scale costs a few fleets, not a binary search from one replica; it stops when the passing
and failing fleets are within 1% of each other (one replica below 100).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from scenarios.plan import RequestSpec, build_plan
from scenarios.slo import Threshold
from scenarios.spec import FleetSpec, Scenario
from simulator.engine.stepcost import CostModel, scaled
from simulator.fit.calibrate import Calibration
from simulator.forecast import footprint
from simulator.forecast.capacity import saturation_throughput
from simulator.forecast.cluster import InProcess, Runner, runner
from simulator.forecast.seeds import Estimate, SeedJob, SeedOutcome, run_seed, seed_plan

HOURS_PER_MONTH = 730.0
SEARCH_TOLERANCE = 0.01  # stop when passing and failing fleets differ by at most 1%


ZERO = Estimate(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Evaluation:
    replicas: int
    passed: bool
    observed: dict[str, Estimate]  # per SLO expression ("ttft: p(95) < 800"), over seeds
    ttft_p95_ms: Estimate
    e2e_p95_ms: Estimate
    throughput: Estimate  # fleet requests/s completed
    utilisation: Estimate  # replicas' busy fraction (stepping, at any batch size)
    kv_peak: Estimate = ZERO  # fullest KV cache of any replica, fraction of its blocks
    kv_mean: Estimate = ZERO  # KV use averaged over replicas and the simulated span
    preemptions: Estimate = ZERO  # per simulated run, over the whole fleet
    slots_full: Estimate = ZERO  # share of time a replica had every batch slot taken
    ttft_p50_ms: Estimate = ZERO
    e2e_p50_ms: Estimate = ZERO
    output_tokens_per_s: Estimate = ZERO
    load: float = 0.0  # offered requests/s over the fleet's saturation throughput
    simulated: bool = True  # False: refused unsimulated, its load over forecast.max_load
    rejected: Estimate = ZERO
    mean_replicas: Estimate = ZERO  # differs from `replicas` for an autoscaled fleet
    peak_replicas: Estimate = ZERO
    cold_starts: Estimate = ZERO
    core: str = ""  # the simulator core its seeds ran on ("fast", "reference"; "": none ran)
    input_tokens_per_s: Estimate = ZERO  # prompt tokens of the requests answered
    sessions_per_s: Estimate = ZERO  # sessions (conversations) started

    @property
    def headroom(self) -> float:
        """Share of the fleet's saturation throughput left unused at this traffic."""
        return max(0.0, 1.0 - self.load)

    @property
    def binding(self) -> str:
        """Which limit binds first at this load: the admission queue when it sheds requests,
        cold starts when replicas were added, KV memory when a cache fills or preempts, batch
        slots when they are mostly all taken, else step time (compute)."""
        if self.rejected.high > 0.01:
            return "admission queue"
        if self.cold_starts.mean > 0:
            return "cold start"
        if self.preemptions.high > 0 or self.kv_peak.high >= 0.95:
            return "KV memory"
        if self.slots_full.mean >= 0.5:
            return "batch slots (max_num_seqs)"
        return "compute (step time)"


@dataclass(frozen=True)
class ForecastPoint:
    scale: float
    rate: float
    best: Evaluation | None  # None: not met within max_replicas
    cost_per_month_usd: float | None
    tried: list[Evaluation] = field(default_factory=list)
    # the scenario's autoscaler over the same traffic, beside the fixed fleet `best`
    autoscaled: Evaluation | None = None
    autoscaled_cost_per_month_usd: float | None = None
    # the fewest replicas at the edges of the step time's 90% band (the calibration's
    # uncertainty, its run-to-run drift, a transfer's error); high None: not met within the limit
    replicas_low: int | None = None
    replicas_high: int | None = None

    @property
    def cost_interval_usd(self) -> tuple[float | None, float | None] | None:
        """The monthly cost at replicas_low and replicas_high (None: not computed)."""
        if self.best is None or self.cost_per_month_usd is None or self.replicas_low is None:
            return None
        per_replica = self.cost_per_month_usd / self.best.replicas
        high = None if self.replicas_high is None else self.replicas_high * per_replica
        return self.replicas_low * per_replica, high

    @property
    def cost_per_million_tokens_usd(self) -> float | None:
        """The month's cost over the output tokens the fleet serves in it, per million."""
        if self.best is None or self.cost_per_month_usd is None:
            return None
        tokens_per_month = self.best.output_tokens_per_s.mean * 3600.0 * HOURS_PER_MONTH
        return self.cost_per_month_usd / tokens_per_month * 1e6 if tokens_per_month else None


@dataclass(frozen=True)
class ForecastConfig:
    seeds: int = 5
    duration_s: float = 120.0  # simulated traffic per configuration and seed
    max_replicas: int = 100000
    workers: int = 0  # local processes for the seeds; 0: one per core, 1: none (this process)
    scheduler: str | None = None  # a Dask scheduler's address: its workers run the seeds
    max_load: float = 0.9  # of the saturation throughput, beyond which a fixed fleet fails
    intervals: bool = False  # search again at the step time band's edges: replicas_low, _high

    @classmethod
    def of(cls, scenario: Scenario, scheduler: str | None = None) -> ForecastConfig:
        f = scenario.forecast
        duration = f.duration_s or max(120.0, scenario.traffic.duration_s)
        return cls(
            f.seeds, duration, workers=f.workers, scheduler=scheduler, max_load=f.max_load,
            intervals=f.intervals,
        )  # fmt: skip

    def runner(self) -> contextlib.AbstractContextManager[Runner]:
        """What runs the seeds: see `simulator.forecast.cluster.runner`."""
        return runner(self.workers, self.seeds, self.scheduler)


Progress = Callable[[float, Evaluation], None]  # (scale, a fleet just evaluated)


class Forecaster:
    def __init__(
        self,
        scenario: Scenario,
        calibration: Calibration,
        config: ForecastConfig | None = None,
        progress: Progress | None = None,
        transform: Callable[[CostModel], CostModel] | None = None,
        today: Today | None = None,
        transfer_error: float = 0.0,
    ):
        """`transform`: applied to each step cost drawn from the calibration (carrying it to
        another deployment), whose relative error `transfer_error` widens the step time's band;
        `today`: the x1 traffic, when another forecaster has built it."""
        self.scenario = scenario
        self.calibration = calibration
        self.config = config or ForecastConfig.of(scenario)
        self.duration_s = self.config.duration_s
        self.progress = progress
        self.thresholds = scenario.thresholds()
        self.persona_thresholds = scenario.persona_thresholds()
        # every objective a fleet must meet, by name: the scenario's, then each persona's own
        self.checks: dict[str, Threshold] = {str(t): t for t in self.thresholds}
        for persona, own in self.persona_thresholds.items():
            self.checks.update({f"{persona}: {t}": t for t in own})
        self.today = today or Today.of(scenario, calibration, self.config)
        self.base_plan, self.base_rate = self.today.plan, self.today.rate
        self.replica_capacity = replica_capacity(calibration, self.base_plan)
        # a request's token times are recorded where ITL is judged (memory: see footprint)
        itl = any(t.metric == "itl" for t in self.checks.values())
        tokens = [s.max_tokens for s in self.base_plan]
        self.tokens_judged = float(np.mean(tokens)) if itl and tokens else 0.0
        # the scenario's routing and admission; the replica count is what the search varies
        self.fleet = scenario.fleet.model_copy(update={"autoscaler": None})
        draw_rng = np.random.default_rng(scenario.traffic.seed + 7919)
        self.costs = calibration.fit.sample_costs(draw_rng, self.config.seeds)
        if transform is not None:
            self.costs = [(transform(cost), overhead) for cost, overhead in self.costs]
        band_rng = np.random.default_rng(scenario.traffic.seed + 104729)
        self.band = step_time_band(calibration, band_rng, transfer_error)
        self._runner: Runner = InProcess()

    def slower(self, factor: float) -> Forecaster:
        """This forecaster with every step `factor` times as long, sharing its traffic and
        runner (an edge of the step time's band)."""
        other = copy.copy(self)
        other.costs = [(scaled(cost, factor), overhead) for cost, overhead in self.costs]
        engine = self.calibration.engine
        other.calibration = replace(
            self.calibration, engine=engine.with_cost(scaled(engine.cost, factor))
        )
        other.replica_capacity = replica_capacity(other.calibration, self.base_plan, factor)
        other.progress = None
        return other

    def with_interval(self, p: ForecastPoint) -> ForecastPoint:
        """`p` with the fewest replicas at both edges of the step time's band."""
        if p.best is None:
            return p
        n = p.best.replicas

        def fewest(factor: float) -> int | None:
            if factor == 1.0:
                return n
            hint = next_hint(p)  # the loads per replica that passed and failed, scaled: a
            if hint is not None:  # fleet needs about `factor` times as many replicas
                hint = (hint[0] / factor, hint[1] / factor)
            best = self.slower(factor).point(p.scale, hint).best
            return None if best is None else best.replicas

        if self._runner.parallel > 1:  # both edges' seeds together: fewer idle workers
            edges = ThreadPoolExecutor(2, thread_name_prefix="band-edge")
            try:
                low, high = edges.map(fewest, self.band)
            finally:  # interrupted: not waiting for the other edge's search to end
                edges.shutdown(wait=False, cancel_futures=True)
        else:
            low, high = fewest(self.band[0]), fewest(self.band[1])
        return replace(
            p,
            replicas_low=n if low is None else min(low, n),
            replicas_high=None if high is None else max(high, n),
        )

    def attach(self, runner: Runner) -> None:
        """Run the seeds on `runner` until attached elsewhere."""
        self._runner = runner

    @property
    def replica_hour_usd(self) -> float:
        cost = self.scenario.cost
        return cost.gpus_per_replica * cost.gpu_hour_usd

    def fewest_replicas(self, scale: float) -> int:
        """The analytic bound: no fewer replicas can pass, their load over max_load."""
        rate = self.base_rate * scale
        return max(1, math.ceil(rate / (self.config.max_load * self.replica_capacity)))

    def evaluate(self, scale: float, replicas: int, fleet: FleetSpec | None = None) -> Evaluation:
        """`replicas` behind the scenario's routing and admission at `scale`, over the seeds;
        with an autoscaling `fleet`, `replicas` is its starting count."""
        fleet = fleet or self.fleet
        load = self.base_rate * scale / (replicas * self.replica_capacity)
        if fleet.autoscaler is None and load > self.config.max_load:
            return Evaluation(
                replicas, False, {}, ZERO, ZERO, ZERO, ZERO, load=load, simulated=False
            )
        requests = self.base_rate * scale * self.duration_s
        room, where = self._runner.room()
        plans = len(self.costs) * footprint.plan_bytes(requests)  # every seed's, on one worker
        keep = room is None or plans <= room // 4  # else each run builds its own again
        if keep and room is not None:
            room -= plans
        footprint.check(requests, replicas, requests * self.tokens_judged, room, where)
        jobs = [
            SeedJob(
                self.scenario,
                self.calibration.engine.with_cost(cost, overhead),
                self.scenario.traffic.seed + 1 + i,
                scale,
                replicas,
                self.duration_s,
                self.calibration.tokens,
                fleet,
            )
            for i, (cost, overhead) in enumerate(self.costs)
        ]
        kept = None
        if keep:  # a seed's traffic is the same for every fleet size: built once, kept
            kept = [self._runner.keep(seed_plan, j.traffic(), j.traffic().key()) for j in jobs]
        outcomes = self._runner.map(run_seed, jobs, kept)
        observed: dict[str, list[float]] = {name: [] for name in self.checks}
        for o in outcomes:
            for name, value in o.observed.items():
                observed[name].append(value)
        estimates = {name: Estimate.of(v) for name, v in observed.items() if v}
        mean_replicas = float(np.mean([o.mean_replicas for o in outcomes]))
        load = self.base_rate * scale / (max(mean_replicas, 1e-9) * self.replica_capacity)
        passed = all(
            _holds_for_every_seed(t, estimates[name])
            for name, t in self.checks.items()
            if name in estimates
        )

        def over_seeds(name: str) -> Estimate:
            return Estimate.of([getattr(o, name) for o in outcomes])

        per_seed: dict[str, Any] = {
            f.name: over_seeds(f.name)
            for f in fields(SeedOutcome)
            if f.name not in ("observed", "core")
        }
        core = " and ".join(sorted({o.core for o in outcomes}))
        return Evaluation(replicas, passed, estimates, **per_seed, load=load, core=core)

    def autoscaled(self, scale: float, fixed: int) -> Evaluation | None:
        """The scenario's autoscaler at `scale` (None without one): it starts from its initial
        count scaled with the traffic and may grow to its max_replicas or twice the fixed
        fleet that meets the SLOs, whichever is more."""
        spec = self.scenario.fleet
        a = spec.autoscaler
        if a is None:
            return None
        top = max(a.max_replicas, 2 * fixed)
        start = min(top, max(a.min_replicas, math.ceil(a.starting_replicas * scale)))
        scaler = a.model_copy(update={"max_replicas": top})
        return self.evaluate(scale, start, spec.model_copy(update={"autoscaler": scaler}))

    def _monthly(self, replicas: float) -> float:
        return replicas * self.replica_hour_usd * HOURS_PER_MONTH

    def _first_guess(self, rate: float) -> int:
        """Replicas that saturated replicas alone would need (a lower bound)."""
        return max(1, math.ceil(rate / self.replica_capacity))

    def point(self, scale: float, hint: tuple[float, float] | None = None) -> ForecastPoint:
        """The fewest replicas meeting every SLO at `scale`. `hint` is the load per replica
        (requests/s) that passed and the one that failed at a smaller scale: a bigger fleet
        balances at least as well, so it starts the search close to the answer."""
        rate = self.base_rate * scale
        limit = self.config.max_replicas
        tried: dict[int, Evaluation] = {}

        def passes(n: int) -> bool:
            if n not in tried:
                tried[n] = self.evaluate(scale, n)
                if self.progress:
                    self.progress(scale, tried[n])
            return tried[n].passed

        floor = self._first_guess(rate)
        if hint is None:
            hi = min(floor, limit)
            probe = 0
        else:
            hi = min(max(floor, math.ceil(rate / hint[0])), limit)
            probe = math.floor(rate / hint[1]) if hint[1] else 0  # likely to fail
        lo = floor - 1  # fewer replicas than saturation needs cannot pass
        while not passes(hi):
            if hi >= limit:
                return ForecastPoint(scale, rate, None, None, sorted_evals(tried))
            lo, hi = hi, min(max(hi + 1, math.ceil(hi * (1.5 if hint is None else 1.1))), limit)
        # below a passing fleet: try where the smaller scale's failing load per replica falls
        while lo < probe < hi:
            if passes(probe):
                hi, probe = probe, max(lo, math.floor(probe * 0.9))
            else:
                lo = probe
                break
        while hi - lo > max(1, math.floor(SEARCH_TOLERANCE * hi)):
            mid = (lo + hi) // 2
            if passes(mid):
                hi = mid
            else:
                lo = mid
        return ForecastPoint(scale, rate, tried[hi], self._monthly(hi), sorted_evals(tried))

    def run(self, scales: list[float]) -> list[ForecastPoint]:
        points: list[ForecastPoint] = []
        hint: tuple[float, float] | None = None
        with self.config.runner() as runner:
            self.attach(runner)
            try:
                for scale in sorted(scales):
                    p = self.point(scale, hint)
                    if self.config.intervals:
                        p = self.with_interval(p)
                    auto = self.autoscaled(scale, p.best.replicas) if p.best else None
                    if auto is not None:
                        cost = self._monthly(auto.mean_replicas.mean)
                        p = replace(p, autoscaled=auto, autoscaled_cost_per_month_usd=cost)
                    points.append(p)
                    hint = next_hint(p) or hint
                    runner.forget()  # this scale's traffic: the next scale has its own
            finally:
                self.attach(InProcess())
        by_scale = {p.scale: p for p in points}
        return [by_scale[s] for s in scales]


def replica_capacity(
    calibration: Calibration, plan: list[RequestSpec], slower: float = 1.0
) -> float:
    """Requests/s one replica completes at most: the model's saturation throughput, never more
    than a sweep measured the target serving (scaled as its steps are, `slower`)."""
    model = saturation_throughput(calibration.engine, plan)
    measured = calibration.measured_capacity
    return model if measured is None else min(model, measured / slower)


BAND_DRAWS = 4000


def step_time_band(
    calibration: Calibration, rng: np.random.Generator, transfer_error: float = 0.0
) -> tuple[float, float]:
    """The 90% band of a typical step's time relative to the calibrated one: the fit's parameter
    uncertainty, times the run-to-run drift, times a transfer's error (each a relative sd)."""
    fit = calibration.fit
    typical = tuple(map(round, fit.typical_step))
    central = fit.cost().duration(*typical)
    if central <= 0:
        return 1.0, 1.0
    draws = np.array([c.duration(*typical) for c, _ in fit.sample_costs(rng, BAND_DRAWS)])
    factor = draws / central
    for sd in (calibration.drift, transfer_error):
        factor = factor * np.maximum(0.5, 1.0 + sd * rng.standard_normal(BAND_DRAWS))
    low, high = np.percentile(factor, [5, 95])
    return min(float(low), 1.0), max(float(high), 1.0)


def next_hint(p: ForecastPoint) -> tuple[float, float] | None:
    """The load per replica that passed and the one that failed at this scale, for the next."""
    if p.best is None:
        return None
    failed = [e.replicas for e in p.tried if not e.passed]
    return (p.rate / p.best.replicas, p.rate / max(failed) if failed else 0.0)


@dataclass(frozen=True)
class Today:
    """Today's traffic as the seeds simulate it: their plans at x1 over the forecast window (not
    the measured run's own plan, whose count is one short sample), and its requests/s."""

    plan: list[RequestSpec]
    rate: float

    @classmethod
    def of(cls, scenario: Scenario, calibration: Calibration, config: ForecastConfig) -> Today:
        seeds = range(scenario.traffic.seed + 1, scenario.traffic.seed + 1 + config.seeds)
        plans = [
            calibration.tokens.apply(build_plan(scenario, seed=s, duration_s=config.duration_s), s)
            for s in seeds
        ]
        plan = [spec for p in plans for spec in p]
        return cls(plan, len(plan) / (len(plans) * config.duration_s))


def _holds_for_every_seed(threshold: Threshold, estimate: Estimate) -> bool:
    """The threshold holds for the worst seed (the highest value for a '<' threshold)."""
    bound = estimate.high if threshold.op in ("<", "<=") else estimate.low
    return bool(np.isfinite(bound) and threshold.holds(bound))


def sorted_evals(tried: dict[int, Evaluation]) -> list[Evaluation]:
    return [tried[n] for n in sorted(tried)]
