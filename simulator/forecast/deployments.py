"""The cheapest deployment and fleet that meets every SLO, at each scale of today's traffic.

Each option (model x GPU x formats x tensor parallelism) gets its memory plan (KV blocks, batch
limit) and the calibration's step cost carried to it from the deployment measured
(`simulator.deploy.steptime.carry`); one that does not fit is rejected with its numbers. At each
scale the options are tried cheapest lower bound first: a fleet passes only under
`forecast.max_load` of its saturation throughput, so no fleet of an option is cheaper than that
many replicas, and an option whose bound already costs more than the best fleet found is
rejected unsimulated. The choice is
the one brute force over every option would make (the lowest monthly cost, ties to the first
label in alphabetical order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from scenarios.deployment_spec import Deployment
from scenarios.spec import Scenario
from simulator.deploy.catalog import Catalog
from simulator.deploy.memory import MemoryPlan, engine_config, memory_plan
from simulator.deploy.steptime import carry, deployment_cost
from simulator.engine.stepcost import CostModel
from simulator.fit.calibrate import Calibration
from simulator.forecast.capacity import saturation_throughput
from simulator.forecast.cluster import InProcess
from simulator.forecast.search import (
    HOURS_PER_MONTH,
    ForecastConfig,
    Forecaster,
    ForecastPoint,
    Progress,
    Today,
    next_hint,
)


@dataclass(frozen=True)
class Option:
    deployment: Deployment
    memory: MemoryPlan
    replica_hour_usd: float  # its GPUs' price

    @property
    def label(self) -> str:
        return self.deployment.label()


@dataclass(frozen=True)
class Outcome:
    """One option at one scale: its search (None: not simulated) and why it was not chosen."""

    option: Option
    fewest_replicas: int  # the analytic bound (0: does not fit)
    point: ForecastPoint | None
    why: str = ""  # empty: it met every SLO

    @property
    def cost_per_month_usd(self) -> float | None:
        return self.point.cost_per_month_usd if self.point and self.point.best else None

    @property
    def floor_per_month_usd(self) -> float:
        return self.fewest_replicas * self.option.replica_hour_usd * HOURS_PER_MONTH


@dataclass(frozen=True)
class Choice:
    scale: float
    rate: float  # requests/s
    outcomes: list[Outcome]  # those that met the SLOs, cheapest first, then the rejected

    @property
    def best(self) -> Outcome | None:
        first = self.outcomes[0] if self.outcomes else None
        return first if first is not None and first.cost_per_month_usd is not None else None


def options(deployments: Sequence[Deployment], catalog: Catalog) -> list[Option]:
    out = []
    for d in deployments:
        price = catalog.gpu(d.gpu).price_per_hour_usd * d.tensor_parallel
        out.append(Option(d, memory_plan(d, catalog), price))
    return out


def carried(
    measured: Deployment, to: Deployment, catalog: Catalog
) -> Callable[[CostModel], CostModel]:
    """Carries a cost measured on `measured` to `to` (by their first-principles rates)."""
    source, target = deployment_cost(measured, catalog), deployment_cost(to, catalog)
    return lambda cost: carry(cost, source, target)


class DeploymentSearch:
    def __init__(
        self,
        scenario: Scenario,
        calibration: Calibration,
        measured: Deployment,
        candidates: Sequence[Option],
        catalog: Catalog,
        config: ForecastConfig | None = None,
        progress: Callable[[Option], Progress] | None = None,
        transfer_error: float = 0.0,
    ):
        """`transfer_error`: the relative error of a step time carried to a deployment other
        than the measured one, widening its interval."""
        self.config = config or ForecastConfig.of(scenario)
        self.options = list(candidates)
        self.forecasters: dict[str, Forecaster] = {}
        today = Today.of(scenario, calibration, self.config)
        measured_model_capacity = saturation_throughput(calibration.engine, today.plan)
        for o in self.options:
            if not o.memory.fits:
                continue
            d = o.deployment
            cost = scenario.cost.model_copy(
                update={
                    "gpus_per_replica": d.tensor_parallel,
                    "gpu_hour_usd": o.replica_hour_usd / d.tensor_parallel,
                }
            )
            carry = carried(measured, d, catalog)
            engine = engine_config(o.memory, calibration.engine)
            engine = engine.with_cost(carry(calibration.engine.cost))
            capacity = calibration.measured_capacity  # carried as the model's capacity is
            if capacity is not None:
                capacity *= saturation_throughput(engine, today.plan) / measured_model_capacity
            self.forecasters[o.label] = Forecaster(
                scenario.model_copy(update={"cost": cost}),
                replace(calibration, engine=engine, measured_capacity=capacity),
                self.config,
                progress(o) if progress else None,
                transform=carry,
                today=today,
                transfer_error=0.0 if d == measured else transfer_error,
            )
        self.rate_x1 = today.rate

    def run(self, scales: Sequence[float], exhaustive: bool = False) -> list[Choice]:
        """The choice at each scale; `exhaustive` simulates every option that fits (the brute
        force the pruned search must agree with)."""
        hints: dict[str, tuple[float, float] | None] = {label: None for label in self.forecasters}
        choices = []
        with self.config.runner() as runner:
            for f in self.forecasters.values():
                f.attach(runner)
            try:
                for scale in sorted(scales):
                    choices.append(self._with_interval(self._choose(scale, hints, exhaustive)))
                    runner.forget()  # this scale's traffic: the next scale has its own
            finally:
                for f in self.forecasters.values():
                    f.attach(InProcess())
        by_scale = {c.scale: c for c in choices}
        return [by_scale[s] for s in scales]

    def _choose(
        self, scale: float, hints: dict[str, tuple[float, float] | None], exhaustive: bool
    ) -> Choice:
        outcomes: list[Outcome] = []
        fitting: list[tuple[float, str, Option, int]] = []
        for o in self.options:
            if not o.memory.fits:
                outcomes.append(Outcome(o, 0, None, o.memory.why))
                continue
            fewest = self.forecasters[o.label].fewest_replicas(scale)
            floor = fewest * o.replica_hour_usd * HOURS_PER_MONTH
            fitting.append((floor, o.label, o, fewest))
        best: tuple[float, str] | None = None
        for floor, label, o, fewest in sorted(fitting, key=lambda t: (t[0], t[1])):
            if best is not None and not exhaustive and (floor, label) > best:
                why = (
                    f"not simulated: at least {fewest:,} replicas (its load bound), "
                    f"${floor:,.0f}/month, over the chosen ${best[0]:,.0f}"
                )
                outcomes.append(Outcome(o, fewest, None, why))
                continue
            point = self.forecasters[label].point(scale, hints[label])
            hints[label] = next_hint(point) or hints[label]
            cost = point.cost_per_month_usd
            if cost is None:
                limit = self.config.max_replicas
                why = f"no fleet of up to {limit:,} replicas meets every SLO"
                outcomes.append(Outcome(o, fewest, point, why))
                continue
            outcomes.append(Outcome(o, fewest, point))
            if best is None or (cost, label) < best:
                best = (cost, label)
        return Choice(scale, self.rate_x1 * scale, _ranked(outcomes))

    def _with_interval(self, c: Choice) -> Choice:
        """The chosen fleet's replicas at the edges of its step time's band."""
        best = c.best
        if not self.config.intervals or best is None or best.point is None:
            return c
        point = self.forecasters[best.option.label].with_interval(best.point)
        chosen = replace(best, point=point)
        return replace(c, outcomes=[chosen if o is best else o for o in c.outcomes])


def _ranked(outcomes: list[Outcome]) -> list[Outcome]:
    """Those that met the SLOs by cost (then label), then the rejected by label."""

    def key(o: Outcome) -> tuple[int, float, str]:
        cost = o.cost_per_month_usd
        return (0, cost, o.option.label) if cost is not None else (1, math.inf, o.option.label)

    return sorted(outcomes, key=key)
