"""summary.json: what a report or a gate needs about one run, measured or simulated."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from scenarios.metrics import Stats, Summary
from surgecast.contracts.base import Strict, finite, read_doc, write_doc

SUMMARY_SCHEMA = "surgecast.summary/1"


class LatencyStats(Strict):
    """One metric's distribution in milliseconds (null where there were no samples)."""

    count: int = Field(ge=0)
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class SloVerdict(Strict):
    slo: str = Field(description="as the scenario wrote it, e.g. 'ttft: p(95) < 800'")
    observed: float | None
    passed: bool


class Rates(Strict):
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


class Tokens(Strict):
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


class SummaryDoc(Strict):
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
                SloVerdict(slo=str(r.threshold), observed=finite(r.observed), passed=r.passed)
                for r in s.slos
            ],
            slos_passed=s.slos_passed,
            tokens=None if s.tokens is None else _tokens(s),
            by_persona={name: cls.of(p) for name, p in s.by_persona.items()},
        )


def _stats(st: Stats) -> LatencyStats:
    p = st.percentiles
    return LatencyStats(
        count=st.count,
        mean_ms=finite(st.mean),
        min_ms=finite(st.min),
        max_ms=finite(st.max),
        p50_ms=finite(p[50]),
        p90_ms=finite(p[90]),
        p95_ms=finite(p[95]),
        p99_ms=finite(p[99]),
    )


def _tokens(s: Summary) -> Tokens:
    """The reconciliation's counts, field by field (the model names a subset of them)."""
    return Tokens(**{name: getattr(s.tokens, name) for name in Tokens.model_fields})


def write_summary(path: Path, summary: Summary) -> None:
    write_doc(path, SummaryDoc.of(summary))


def read_summary(path: Path) -> SummaryDoc:
    return read_doc(path, SummaryDoc, SUMMARY_SCHEMA)
