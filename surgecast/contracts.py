"""The run folder's documents as strict, versioned contracts other tools can read.

Each document has one pydantic model, one writer and one reader here, and a JSON Schema
(`surgecast schema --out DIR` exports them). A document carries `schema`, its name and major
version: a reader refuses a version it does not know rather than guess at its fields.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from scenarios.metrics import Stats, Summary
from simulator.backtest import BacktestRow

M = TypeVar("M", bound=BaseModel)
SUMMARY_SCHEMA = "surgecast.summary/1"
BACKTEST_SCHEMA = "surgecast.backtest/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class LatencyStats(_Strict):
    """One metric's distribution in milliseconds (null where there were no samples)."""

    count: int = Field(ge=0)
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class SloVerdict(_Strict):
    slo: str = Field(description="as the scenario wrote it, e.g. 'ttft: p(95) < 800'")
    observed: float | None
    passed: bool


class Rates(_Strict):
    """Every rate with the span it is measured over."""

    send_window_s: float = Field(
        ge=0, description="the planned duration, or the sends' own span if longer"
    )
    sent_per_s: float = Field(ge=0, description="requests sent over send_window_s")
    completion_span_s: float = Field(ge=0, description="first send to last response")
    throughput_per_s: float = Field(ge=0, description="successes over completion_span_s")
    goodput_per_s: float = Field(
        ge=0, description="successes meeting every per-request SLO, over completion_span_s"
    )
    output_tokens_per_s: float = Field(ge=0, description="over completion_span_s")


class Tokens(_Strict):
    """Planned against served prompt tokens; the server's output count against the stream's."""

    requests: int
    planned: int
    served: int
    median_error_pct: float
    p90_error_pct: float
    cache_hit_rate: float | None
    output_usage: int
    output_streamed: int
    output_disagreeing: int


class SummaryDoc(_Strict):
    """summary.json: what a report or a gate needs about one run, measured or simulated."""

    schema_: Literal["surgecast.summary/1"] = Field("surgecast.summary/1", alias="schema")
    requests: int = Field(ge=0, description="last attempts sent (retries and drops apart)")
    ok: int = Field(ge=0)
    dropped: int = Field(ge=0, description="planned requests never sent (in-flight cap)")
    retries: int = Field(ge=0, description="attempts that failed and were sent again")
    error_rate: float = Field(ge=0, le=1)
    statuses: dict[str, int]
    error_kinds: dict[str, int]
    rates: Rates
    lateness_p99_ms: float
    latency: dict[str, LatencyStats] = Field(
        description="ttft, itl, tpot, e2e and the *_intended variants"
    )
    slos: list[SloVerdict]
    slos_passed: bool
    tokens: Tokens | None
    by_persona: dict[str, SummaryDoc]

    @classmethod
    def of(cls, s: Summary) -> SummaryDoc:
        return cls(
            requests=s.requests,
            ok=s.ok,
            dropped=s.dropped,
            retries=s.retries,
            error_rate=s.error_rate,
            statuses=s.statuses,
            error_kinds=s.error_kinds,
            rates=Rates(
                send_window_s=s.duration_s,
                sent_per_s=s.request_rate,
                completion_span_s=s.span_s,
                throughput_per_s=s.throughput,
                goodput_per_s=s.goodput,
                output_tokens_per_s=s.output_tokens_per_s,
            ),
            lateness_p99_ms=s.lateness_p99_ms,
            latency={name: _stats(st) for name, st in s.metrics.items()},
            slos=[
                SloVerdict(slo=str(r.threshold), observed=_finite(r.observed), passed=r.passed)
                for r in s.slos
            ],
            slos_passed=s.slos_passed,
            tokens=None if s.tokens is None else _tokens(s),
            by_persona={name: cls.of(p) for name, p in s.by_persona.items()},
        )


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _stats(st: Stats) -> LatencyStats:
    p = st.percentiles
    return LatencyStats(
        count=st.count,
        mean_ms=_finite(st.mean),
        min_ms=_finite(st.min),
        max_ms=_finite(st.max),
        p50_ms=_finite(p[50]),
        p90_ms=_finite(p[90]),
        p95_ms=_finite(p[95]),
        p99_ms=_finite(p[99]),
    )


def _tokens(s: Summary) -> Tokens:
    """The reconciliation's counts, field by field (the model names a subset of them)."""
    return Tokens(**{name: getattr(s.tokens, name) for name in Tokens.model_fields})


class BacktestRowDoc(_Strict):
    """One predicted quantity beside the measured one (null: not a finite number)."""

    metric: Literal["ttft", "itl", "e2e", "throughput"]
    quantile: int = Field(ge=0, le=100, description="0 for throughput")
    unit: Literal["ms", "req/s"]
    basis: Literal["replay", "plan"] = Field(
        description="replay: the run's own send times; plan: the scenario's plan"
    )
    measured: float | None
    predicted: float | None
    low: float | None = Field(description="the 90% interval the measured value should fall in")
    high: float | None
    error_pct: float | None
    inside: bool

    @classmethod
    def of(cls, r: BacktestRow) -> BacktestRowDoc:
        """The row; a metric, unit or basis outside the contract is a validation error."""
        return cls.model_validate(
            {
                "metric": r.metric,
                "quantile": r.quantile,
                "unit": r.unit,
                "basis": r.basis,
                "measured": _finite(r.measured),
                "predicted": _finite(r.predicted),
                "low": _finite(r.low),
                "high": _finite(r.high),
                "error_pct": _finite(r.error_pct),
                "inside": r.inside,
            }
        )

    def row(self) -> BacktestRow:
        nan = math.nan
        return BacktestRow(
            self.metric,
            self.quantile,
            nan if self.measured is None else self.measured,
            nan if self.predicted is None else self.predicted,
            nan if self.low is None else self.low,
            nan if self.high is None else self.high,
            self.basis,
        )


class BacktestDoc(_Strict):
    """backtest.json: a calibration's predictions of one run, with their intervals."""

    schema_: Literal["surgecast.backtest/1"] = Field("surgecast.backtest/1", alias="schema")
    rows: list[BacktestRowDoc]
    warnings: list[str]
    in_sample: bool = Field(description="the calibration was fitted on this very run")


class ContractError(ValueError):
    """A document that does not meet its contract: names the file and what is wrong."""


def _write(path: Path, doc: BaseModel) -> None:
    """A document, written whole or not at all."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(doc.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read(path: Path, model: type[M], schema: str) -> M:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ContractError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ContractError(f"{path}: a JSON object expected, got {type(data).__name__}")
    if "schema" not in data:
        raise ContractError(
            f"{path}: no `schema`: written by an older surgecast; run the command that wrote "
            "it again"
        )
    if data["schema"] != schema:
        raise ContractError(f"{path}: schema {data['schema']!r}, this surgecast reads {schema!r}")
    try:  # JSON has no tuples or sets: strict mode still checks every type
        return model.model_validate_json(json.dumps(data))
    except ValueError as e:
        raise ContractError(f"{path}: {e}") from None


def write_summary(path: Path, summary: Summary) -> None:
    _write(path, SummaryDoc.of(summary))


def read_summary(path: Path) -> SummaryDoc:
    return _read(path, SummaryDoc, SUMMARY_SCHEMA)


def write_backtest(
    path: Path, rows: list[BacktestRow], warnings: list[str], in_sample: bool
) -> None:
    doc = BacktestDoc(
        rows=[BacktestRowDoc.of(r) for r in rows], warnings=warnings, in_sample=in_sample
    )
    _write(path, doc)


def read_backtest(path: Path) -> BacktestDoc:
    return _read(path, BacktestDoc, BACKTEST_SCHEMA)


SCHEMAS: dict[str, type[BaseModel]] = {"summary": SummaryDoc, "backtest": BacktestDoc}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each document's JSON Schema, by file stem."""
    return {name: model.model_json_schema(by_alias=True) for name, model in SCHEMAS.items()}
