"""A scenario's objectives: SLOs per metric (k6-like thresholds) and regression budgets against
a baseline (`surgecast gate`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from scenarios.base import Strict
from scenarios.cost_budget import COST_METRICS, as_expression, parse_cost_budget
from scenarios.regress import Budget, parse_budget
from scenarios.slo import Threshold, parse_threshold


def _latency_slo(expr: str) -> str:
    parse_threshold("ttft", expr)  # any latency metric: rejects 'rate'
    return expr


def _rate_slo(expr: str) -> str:
    parse_threshold("error_rate", expr)
    return expr


class _PerMetric(Strict):
    """Expressions per metric, each a list; a single expression stands for a list of one."""

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: [e] if isinstance(e, str) else e for k, e in v.items()}
        return v


LatencySlo = Annotated[str, AfterValidator(_latency_slo)]
RateSlo = Annotated[str, AfterValidator(_rate_slo)]


class Slos(_PerMetric):
    """Objectives per metric, k6-style: latencies in milliseconds, error_rate a fraction."""

    ttft: list[LatencySlo] = Field(default_factory=list)
    itl: list[LatencySlo] = Field(default_factory=list)
    tpot: list[LatencySlo] = Field(default_factory=list)
    e2e: list[LatencySlo] = Field(default_factory=list)
    error_rate: list[RateSlo] = Field(default_factory=list)

    def thresholds(self) -> list[Threshold]:
        return [
            parse_threshold(metric, expr)
            for metric in type(self).model_fields
            for expr in getattr(self, metric)
        ]


def _budget(metric: str) -> AfterValidator:
    def check(expr: str) -> str:
        parse_budget(metric, expr)
        return expr

    return AfterValidator(check)


REGRESSION_METRICS = (
    "ttft", "itl", "tpot", "e2e", "error_rate", "throughput", "goodput", "cost_per_million_tokens",
)  # fmt: skip


class Regressions(_PerMetric):
    """Regression budgets against a baseline run (`surgecast gate`), k6-style: `p(95) regress
    < 10%` (relative) or `< 50` (absolute: ms, a fraction for error_rate, req/s for throughput
    and goodput, which regress when they fall). A metric fails only when its regression is
    significant (its bootstrap interval excludes 0) and over budget."""

    ttft: list[Annotated[str, _budget("ttft")]] = Field(default_factory=list)
    itl: list[Annotated[str, _budget("itl")]] = Field(default_factory=list)
    tpot: list[Annotated[str, _budget("tpot")]] = Field(default_factory=list)
    e2e: list[Annotated[str, _budget("e2e")]] = Field(default_factory=list)
    error_rate: list[Annotated[str, _budget("error_rate")]] = Field(default_factory=list)
    throughput: list[Annotated[str, _budget("throughput")]] = Field(default_factory=list)
    goodput: list[Annotated[str, _budget("goodput")]] = Field(default_factory=list)
    cost_per_million_tokens: list[Annotated[str, _budget("cost_per_million_tokens")]] = Field(
        default_factory=list,
        description="`rate regress < 10%`: the run's cost per million tokens (input and output "
        "served; each run priced by its own run.json's cost section, over its span) may rise "
        "by at most this share (or this many USD without %).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of the bootstrap intervals.")
    resamples: int = Field(2000, ge=200, le=100000, description="Bootstrap resamples.")

    def budgets(self) -> list[Budget]:
        return [
            parse_budget(metric, expr)
            for metric in REGRESSION_METRICS
            for expr in getattr(self, metric)
        ]


class CostBudgets(Strict):
    """Spend budgets `forecast` (and the report) judge at every scale like SLOs, in US dollars:
    `< 12000`, `<= $3.5`, `12000 USD`; a bare number is `<=` it. A budget missed at some scale
    fails the forecast (exit 99), naming the budget, the figure and the first scale over it."""

    monthly_usd: str | None = Field(
        None, description="The fleet's monthly spend: replicas x GPUs x gpu_hour_usd x 730 h."
    )
    per_million_tokens_usd: str | None = Field(
        None,
        description="The month's spend over the tokens the fleet serves in it, input (prompt) "
        "and output together, per million.",
    )
    per_million_output_tokens_usd: str | None = Field(
        None, description="The month's spend per million output tokens alone."
    )
    per_request_usd: str | None = Field(
        None, description="The month's spend over the requests the fleet answers in it."
    )
    per_session_usd: str | None = Field(
        None, description="The month's spend over the sessions (conversations) started in it."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _number_as_expression(cls, value: Any) -> Any:
        return as_expression(value)

    @field_validator("*")
    @classmethod
    def _parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            assert info.field_name is not None
            parse_cost_budget(info.field_name, value)
        return value

    def thresholds(self) -> list[Threshold]:
        """Each budget set, as a threshold its figure must hold (`Threshold.holds`)."""
        return [
            parse_cost_budget(metric, expr)
            for metric in COST_METRICS
            if (expr := getattr(self, metric)) is not None
        ]
