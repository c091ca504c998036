"""Metric definitions, summaries and SLO checks on records with known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.metrics import (
    TokenReconciliation,
    metric_samples,
    output_count_warning,
    summarize,
    unplanned_cache_warning,
)
from scenarios.records import DROPPED, RecordWriter, RequestRecord, Status, read_records
from scenarios.slo import parse_threshold
from scenarios.table import RequestTable


def _rec(i: int, start: float, chunks: list[float], status: Status = "ok") -> RequestRecord:
    return RequestRecord(
        id=f"r{i}",
        intended_start=start - 0.001 * i,
        start=start,
        first_token=chunks[0] if chunks else None,
        end=(chunks[-1] + 0.01) if chunks else start + 1,
        chunk_times=chunks,
        output_tokens=len(chunks) or None,
        status=status,
    )


RECORDS = [
    _rec(0, 0.0, [0.1, 0.2, 0.3, 0.4]),  # ttft 100 ms, e2e 410, itl 100 x3, tpot 310/3
    _rec(1, 1.0, [1.5, 1.6]),  # ttft 500 ms, e2e 610, itl 100, tpot 110
    _rec(2, 2.0, [], status="error"),
]


def test_metric_definitions() -> None:
    assert metric_samples(RECORDS, "ttft") == pytest.approx([0.1, 0.5])
    assert metric_samples(RECORDS, "e2e") == pytest.approx([0.41, 0.61])
    assert metric_samples(RECORDS, "itl") == pytest.approx([0.1] * 4)
    assert metric_samples(RECORDS, "tpot") == pytest.approx([0.31 / 3, 0.11])
    assert metric_samples(RECORDS, "ttft_intended") == pytest.approx([0.1, 0.501])


def test_summary_and_slos() -> None:
    thresholds = [
        parse_threshold("ttft", "p(50) < 600"),
        parse_threshold("ttft", "max < 400"),
        parse_threshold("error_rate", "rate < 0.5"),
        parse_threshold("itl", "max < 101"),
        parse_threshold("e2e", "p(66) < 1000"),
        parse_threshold("e2e", "p(67) < 1000"),
    ]
    s = summarize(RECORDS, thresholds, duration_s=10.0)
    assert (s.requests, s.ok, s.statuses) == (3, 2, {"ok": 2, "error": 1})
    assert s.request_rate == pytest.approx(0.3)  # 3 sent in the 10 s window
    assert s.throughput == pytest.approx(2 / 3.0)  # 2 ok from t=0 to the last end at 3.0
    assert s.metrics["ttft"].percentiles[50] == pytest.approx(300.0)
    # the failed request counts as infinitely slow: 2 of 3 requests are within any e2e limit
    assert [r.passed for r in s.slos] == [True, False, True, True, True, False]
    assert s.slos[0].observed == pytest.approx(500.0)  # median of 100, 500, inf
    assert s.slos[1].observed == float("inf")
    assert s.goodput == pytest.approx(1 / 3.0)  # only r0 has ttft <= 400 ms
    assert s.lateness_p99_ms == pytest.approx(1.98, abs=0.01)


def test_records_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        writer = RecordWriter(f)
        for r in RECORDS:
            writer.write(r)
        f.write('{"id": "torn", "intended_')  # a writer killed mid-line
    back = read_records(path)
    assert [r.id for r in back] == ["r0", "r1", "r2"]
    assert back[0] == RECORDS[0]


def test_a_cache_hit_rate_beyond_the_plan_is_a_warning() -> None:
    def rec(i: int, cached: int | None) -> RequestRecord:
        return RequestRecord(
            id=str(i),
            intended_start=0,
            start=0,
            first_token=0.1,
            end=0.2,
            prompt_tokens=100,
            output_tokens=5,
            planned_prompt_tokens=100,
            cached_tokens=cached,
        )

    tokens = TokenReconciliation.of(RequestTable.of([rec(0, 60), rec(1, 40), rec(2, None)]))
    assert tokens is not None and tokens.cache_hit_rate == 0.5 and tokens.cache_reports == 2
    assert unplanned_cache_warning(tokens, planned=0.45) is None  # within the margin
    warning = unplanned_cache_warning(tokens, planned=0.0)
    assert warning is not None and "50%" in warning
    assert (
        unplanned_cache_warning(TokenReconciliation.of(RequestTable.of([rec(0, None)])), 0.0)
        is None
    )


def test_output_tokens_by_usage_are_reconciled_with_the_chunks_streamed() -> None:
    """Usage says 10 tokens per request; the stream carried 10, 10, 8 and 6 chunks. A stream
    with per-chunk usage (several tokens per chunk, said so) is left out: its chunk count is
    not meant to be a token count."""

    def rec(i: int, chunks: int, chunk_tokens: list[int] | None = None) -> RequestRecord:
        return RequestRecord(
            id=str(i),
            intended_start=0,
            start=0,
            first_token=0.1,
            end=1.0,
            chunk_times=[0.1 + 0.01 * k for k in range(chunks)],
            output_tokens=10,
            chunk_tokens=chunk_tokens,
        )

    several = rec(9, 5, [2] * 5)
    matching = TokenReconciliation.of(RequestTable.of([rec(0, 10), rec(1, 10), several]))
    assert matching is not None and matching.output_requests == 2
    assert matching.output_gap_pct == 0.0 and output_count_warning(matching) is None
    apart = TokenReconciliation.of(
        RequestTable.of([rec(0, 10), rec(1, 10), rec(2, 8), rec(3, 6), several])
    )
    assert apart is not None
    assert (apart.output_usage, apart.output_streamed, apart.output_disagreeing) == (40, 34, 2)
    assert apart.output_gap_pct == pytest.approx(-15.0)
    warning = output_count_warning(apart)
    assert warning is not None and "-15.0%" in warning and "2 of 4 requests" in warning
    # 1 chunk in 40 missing is within 5%
    assert (
        output_count_warning(
            TokenReconciliation.of(RequestTable.of([rec(0, 10)] * 3 + [rec(1, 9)]))
        )
        is None
    )


def test_dropped_requests_are_counted_apart_from_requests_and_lateness() -> None:
    """A request dropped at the in-flight cap was never sent: not a request, not an error, and
    its record (stamped when dropped) says nothing of the sender's lateness."""
    dropped = RequestRecord(
        id="d", intended_start=0.5, start=3.0, end=3.0, status="cancelled", error_kind=DROPPED
    )
    with_drop = summarize([*RECORDS, dropped], duration_s=3.0)
    without = summarize(RECORDS, duration_s=3.0)
    assert (with_drop.requests, with_drop.ok, with_drop.dropped) == (3, 2, 1)
    assert with_drop.lateness_p99_ms == pytest.approx(without.lateness_p99_ms)
    assert with_drop.error_rate == pytest.approx(without.error_rate)


def test_lateness_is_the_schedule_lag_where_measured() -> None:
    rec = RequestRecord(id="a", intended_start=1.0, start=1.3, schedule_lag_s=0.01)
    assert rec.lateness == pytest.approx(0.01)  # 0.29 s more went to connecting and sending
    assert summarize([rec]).lateness_p99_ms == pytest.approx(10.0)
