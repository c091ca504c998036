"""Capacity forecast: the fewest replicas that meet every SLO at each scale of today's traffic.

A fleet of N replicas behind a router is simulated as a slice of min(N, slice_replicas) replicas
that receives its share of the traffic (and of the `fleet:` admission queue) and balances it by
the scenario's routing, join-shortest-queue by default: routing across the whole fleet balances at
least as well, so the slice is slightly conservative. Each configuration
runs over several seeds, each with its own arrivals and step costs drawn from the calibration's
uncertainty, for `forecast.duration_s` of simulated traffic (the first 10% discarded as warm-up).
The error bars are the range over seeds, and a configuration passes only if every seed meets every
SLO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from scenarios.metrics import summarize
from scenarios.plan import build_plan
from scenarios.slo import Threshold
from scenarios.spec import Scenario
from simulator.calibrate import Calibration
from simulator.fleet import FleetConfig
from simulator.fleet_spec import fleet_from_spec
from simulator.sim import simulate

HOURS_PER_MONTH = 730.0
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


ZERO = Estimate(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Evaluation:
    replicas: int
    passed: bool
    observed: dict[str, Estimate]  # per SLO expression ("ttft: p(95) < 800"), mean over seeds
    ttft_p95_ms: Estimate
    e2e_p95_ms: Estimate
    throughput: Estimate  # fleet requests/s completed
    utilisation: Estimate
    kv_peak: Estimate = ZERO  # fullest KV cache of any replica, fraction of its blocks
    kv_mean: Estimate = ZERO  # KV use averaged over replicas and the simulated span
    preemptions: Estimate = ZERO  # per simulated run (a slice's share of the fleet)
    slots_full: Estimate = ZERO  # share of time a replica had every batch slot taken

    @property
    def binding(self) -> str:
        """Which limit a replica meets first at this load: KV memory when its cache fills or
        it preempts, batch slots when they are mostly all taken, else step time (compute)."""
        if self.preemptions.high > 0 or self.kv_peak.high >= 0.95:
            return "KV cache"
        if self.slots_full.mean >= 0.5:
            return "max_num_seqs"
        return "step time"


@dataclass(frozen=True)
class ForecastPoint:
    scale: float
    rate: float
    best: Evaluation | None  # None: not met within max_replicas
    cost_per_month_usd: float | None
    tried: list[Evaluation] = field(default_factory=list)


@dataclass(frozen=True)
class ForecastConfig:
    seeds: int = 5
    slice_replicas: int = 8
    duration_s: float = 120.0  # simulated traffic per configuration and seed
    max_replicas: int = 100000

    @classmethod
    def of(cls, scenario: Scenario) -> ForecastConfig:
        f = scenario.forecast
        return cls(
            f.seeds, f.slice_replicas, f.duration_s or max(120.0, scenario.traffic.duration_s)
        )


class Forecaster:
    def __init__(
        self,
        scenario: Scenario,
        calibration: Calibration,
        config: ForecastConfig | None = None,
        progress: Callable[[str], None] | None = None,
    ):
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
        self.base_plan = build_plan(scenario, seed=scenario.traffic.seed)
        self.base_rate = len(self.base_plan) / scenario.traffic.duration_s  # requests/s at x1
        # the scenario's routing and admission; the replica count is what the search varies
        self.fleet = replace(fleet_from_spec(scenario.fleet).config, autoscaler=None)
        draw_rng = np.random.default_rng(scenario.traffic.seed + 7919)
        self.costs = calibration.fit.sample_costs(draw_rng, self.config.seeds)

    def evaluate(self, scale: float, replicas: int) -> Evaluation:
        k = min(replicas, self.config.slice_replicas)
        share = k / replicas
        observed: dict[str, list[float]] = {name: [] for name in self.checks}
        ttft, e2e, tput, util = [], [], [], []
        kv_peak, kv_mean, preempted, full = [], [], [], []
        warmup = WARMUP_FRACTION * self.duration_s
        for i, (cost, overhead) in enumerate(self.costs):
            plan = build_plan(
                self.scenario,
                seed=self.scenario.traffic.seed + 1 + i,
                rate_scale=scale * share,
                duration_s=self.duration_s,
            )
            engine = self.calibration.engine.with_cost(cost, overhead)
            result = simulate(
                plan,
                engine,
                replicas=k,
                timeout_s=self.scenario.target.timeout_s,
                record_chunks="itl" in {t.metric for t in self.thresholds},
                fleet=self._slice_fleet(share),
            )
            steady = [r for r in result.records if r.intended_start >= warmup]
            summary = summarize(
                steady, self.thresholds, self.duration_s - warmup, self.persona_thresholds
            )
            for slo in summary.slos:
                observed[str(slo.threshold)].append(slo.observed)
            for persona, own in self.persona_thresholds.items():
                if persona not in summary.by_persona:  # no request of it in the window
                    continue
                by_name = {str(r.threshold): r for r in summary.by_persona[persona].slos}
                for t in own:
                    observed[f"{persona}: {t}"].append(by_name[str(t)].observed)
            ttft.append(summary.metrics["ttft"].percentiles[95])
            e2e.append(summary.metrics["e2e"].percentiles[95])
            tput.append(summary.throughput / share)
            util.append(float(np.mean(result.busy_fraction)))
            kv_peak.append(result.kv_peak)
            kv_mean.append(result.kv_mean)
            preempted.append(float(result.preemptions))
            full.append(result.slots_full)
        estimates = {name: Estimate.of(v) for name, v in observed.items() if v}
        passed = all(
            _holds_for_every_seed(t, estimates[name])
            for name, t in self.checks.items()
            if name in estimates
        )
        return Evaluation(
            replicas,
            passed,
            estimates,
            Estimate.of(ttft),
            Estimate.of(e2e),
            Estimate.of(tput),
            Estimate.of(util),
            Estimate.of(kv_peak),
            Estimate.of(kv_mean),
            Estimate.of(preempted),
            Estimate.of(full),
        )

    def _slice_fleet(self, share: float) -> FleetConfig:
        """The fleet's config for a slice with `share` of its replicas: its share of the
        admission queue."""
        limit = self.fleet.admission_limit
        if limit is None or share >= 1:
            return self.fleet
        return replace(self.fleet, admission_limit=math.ceil(limit * share))

    def _first_guess(self, rate: float) -> int:
        """Replicas that the throughput of a full batch alone would need (a lower-ish bound)."""
        eng = self.calibration.engine
        plan = self.base_plan
        mean_out = float(np.mean([s.max_tokens for s in plan])) if plan else 1.0
        step = eng.cost.duration(eng.max_num_seqs, 0)
        per_replica = eng.max_num_seqs / (mean_out * step) if step > 0 else rate
        return max(1, math.ceil(rate / per_replica))

    def point(self, scale: float) -> ForecastPoint:
        rate = self.base_rate * scale
        tried: dict[int, Evaluation] = {}

        def passes(n: int) -> bool:
            if n not in tried:
                tried[n] = self.evaluate(scale, n)
                if self.progress:
                    e = tried[n]
                    self.progress(
                        f"  x{scale:g}: {n} replicas -> "
                        f"{'meets SLOs' if e.passed else 'misses SLOs'} "
                        f"(p95 ttft {e.ttft_p95_ms.mean:.0f} ms)"
                    )
            return tried[n].passed

        hi = min(self._first_guess(rate), self.config.max_replicas)
        lo = 0
        while not passes(hi):
            if hi >= self.config.max_replicas:
                return ForecastPoint(scale, rate, None, None, sorted_evals(tried))
            lo, hi = hi, min(hi * 2, self.config.max_replicas)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if passes(mid):
                hi = mid
            else:
                lo = mid
        cost = self.scenario.cost
        monthly = hi * cost.gpus_per_replica * cost.gpu_hour_usd * HOURS_PER_MONTH
        return ForecastPoint(scale, rate, tried[hi], monthly, sorted_evals(tried))

    def run(self, scales: list[float]) -> list[ForecastPoint]:
        return [self.point(s) for s in scales]


def _holds_for_every_seed(threshold: Threshold, estimate: Estimate) -> bool:
    """The threshold holds for the worst seed (the highest value for a '<' threshold)."""
    bound = estimate.high if threshold.op in ("<", "<=") else estimate.low
    return bool(np.isfinite(bound) and threshold.holds(bound))


def sorted_evals(tried: dict[int, Evaluation]) -> list[Evaluation]:
    return [tried[n] for n in sorted(tried)]


def _estimate(d: dict[str, float]) -> Estimate:
    return Estimate(d["mean"], d["low"], d["high"])


def _evaluation(d: dict[str, Any]) -> Evaluation:
    return Evaluation(
        int(d["replicas"]),
        bool(d["passed"]),
        {k: _estimate(v) for k, v in d["observed"].items()},
        *(_estimate(d[k]) for k in ("ttft_p95_ms", "e2e_p95_ms", "throughput", "utilisation")),
        *(  # forecasts written before these existed read as zero
            _estimate(d[k]) if k in d else ZERO
            for k in ("kv_peak", "kv_mean", "preemptions", "slots_full")
        ),
    )


def points_to_dict(points: Sequence[ForecastPoint]) -> dict[str, Any]:
    """forecast.json's content; `points_from_dicts(d["points"])` reads it back."""
    return {"points": [asdict(p) for p in points]}


def points_from_dicts(items: list[dict[str, Any]]) -> list[ForecastPoint]:
    """Inverse of `dataclasses.asdict` on a list of ForecastPoints (read from forecast.json)."""
    return [
        ForecastPoint(
            float(d["scale"]),
            float(d["rate"]),
            None if d["best"] is None else _evaluation(d["best"]),
            None if d["cost_per_month_usd"] is None else float(d["cost_per_month_usd"]),
            [_evaluation(t) for t in d.get("tried") or []],
        )
        for d in items
    ]
