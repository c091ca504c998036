"""What a forecast's fleets cost at each scale, and the scenario's cost budgets judged on it.

At each scale the fleet that meets every SLO costs replicas x GPUs per replica x the GPU's price
x 730 hours a month. Spread over what it serves in that month (the seeds' mean rates over their
steady windows, as simulated), that is the cost per million tokens (input and output together, or
output alone), per request answered and per session started. A budget is a `Threshold` on one of
these figures (`scenarios.cost_budget`): it fails at the first scale whose figure misses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scenarios.cost_budget import COST_METRICS
from scenarios.slo import Threshold
from simulator.forecast.search import HOURS_PER_MONTH, ForecastPoint

SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600.0


@dataclass(frozen=True)
class Spend:
    """A scale's fleet's cost in US dollars: a month's, and per unit of what it serves (NaN
    where the forecast did not keep that rate)."""

    scale: float
    monthly_usd: float
    per_million_tokens_usd: float  # input (prompt) and output tokens together
    per_million_output_tokens_usd: float
    per_request_usd: float
    per_session_usd: float

    @classmethod
    def of(cls, p: ForecastPoint) -> Spend | None:
        """The spend of `p`'s fleet; None when no fleet met the SLOs at that scale."""
        if p.best is None or p.cost_per_month_usd is None:
            return None
        e, month = p.best, p.cost_per_month_usd
        tokens = e.input_tokens_per_s.mean + e.output_tokens_per_s.mean
        return cls(
            p.scale,
            month,
            per_unit(month, tokens, 1e6),
            per_unit(month, e.output_tokens_per_s.mean, 1e6),
            per_unit(month, e.throughput.mean),
            per_unit(month, e.sessions_per_s.mean),
        )

    def figure(self, metric: str) -> float:
        """The figure a budget on `metric` (a `COST_METRICS` name) bounds."""
        if metric not in COST_METRICS:
            raise KeyError(metric)
        value: float = getattr(self, metric)
        return value


def per_unit(monthly_usd: float, per_s: float, units: float = 1.0) -> float:
    """A month's spend over what arrives at `per_s` a second all month, per `units` of it."""
    if not (per_s > 0 and math.isfinite(per_s)):
        return math.nan
    return monthly_usd / (per_s * SECONDS_PER_MONTH) * units


@dataclass(frozen=True)
class BudgetVerdict:
    budget: Threshold  # metric: a COST_METRICS name
    passed: bool
    scale: float | None  # the first scale over budget; or, when it held, the largest judged
    figure: float  # the figure at `scale` (NaN: nothing judged)
    message: str

    @property
    def name(self) -> str:
        return f"cost.budgets.{self.budget.metric}: {self.budget.expr}"


def judge_budgets(
    budgets: Sequence[Threshold], points: Sequence[ForecastPoint]
) -> list[BudgetVerdict]:
    """Each budget at each scale with a fleet meeting the SLOs, smallest scale first: it fails
    at the first scale whose figure misses it (a scale with no such fleet is not judged)."""
    spends = sorted((s for p in points if (s := Spend.of(p)) is not None), key=lambda s: s.scale)
    unmet = sorted(p.scale for p in points if Spend.of(p) is None)
    return [_judge(b, spends, unmet) for b in budgets]


def _judge(budget: Threshold, spends: Sequence[Spend], unmet: Sequence[float]) -> BudgetVerdict:
    figures = [(s.scale, s.figure(budget.metric)) for s in spends]
    figures = [(scale, f) for scale, f in figures if math.isfinite(f)]
    what = COST_METRICS[budget.metric]
    name = f"cost.budgets.{budget.metric} {budget.expr!r}"
    skipped = f"; not judged at x{', x'.join(f'{s:g}' for s in unmet)} (no fleet met the SLOs)"
    skipped = skipped if unmet else ""
    if not figures:
        why = (
            "the forecast kept no rate it is spread over (a forecast.json from before budgets)"
            if spends
            else "no scale has a fleet meeting the SLOs"
        )
        return BudgetVerdict(budget, True, None, math.nan, f"{name}: not judged: {why}")
    over = next(((scale, f) for scale, f in figures if not budget.holds(f)), None)
    if over is None:
        scale, f = figures[-1]
        message = (
            f"{name} holds at every scale judged: {what} at most {usd(max(f for _, f in figures))}"
            f" (x{scale:g}: {usd(f)}), limit {budget.op} {usd(budget.value)}{skipped}"
        )
        return BudgetVerdict(budget, True, scale, f, message)
    scale, f = over
    below = [(s, v) for s, v in figures if s < scale]
    before = f"; x{below[-1][0]:g}: {usd(below[-1][1])}, within it" if below else ""
    message = (
        f"{name} crossed at x{scale:g}: forecast {what} {usd(f)}, limit "
        f"{budget.op} {usd(budget.value)}{before}{skipped}"
    )
    return BudgetVerdict(budget, False, scale, f, message)


def usd(value: float) -> str:
    """US dollars for people: whole dollars from $100, cents from $1, else 3 significant
    digits in decimals ($0.0000576)."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1 or value == 0:
        return f"${value:,.2f}"
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"${value:.{decimals}f}"
