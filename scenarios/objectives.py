"""A scenario's objectives: SLOs per metric (k6-like thresholds) and regression budgets against
a baseline (`surgecast gate`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from scenarios.base import Strict
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
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of the bootstrap intervals.")
    resamples: int = Field(2000, ge=200, le=100000, description="Bootstrap resamples.")

    def budgets(self) -> list[Budget]:
        return [
            parse_budget(metric, expr)
            for metric in ("ttft", "itl", "tpot", "e2e", "error_rate", "throughput", "goodput")
            for expr in getattr(self, metric)
        ]
