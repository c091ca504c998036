"""Per-request columns: a simulated run's table summarises exactly as its records do."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scenarios.metrics import Summary, summarize, summarize_table
from scenarios.records import RequestRecord, iter_records, write_records
from scenarios.slo import parse_threshold
from scenarios.table import RequestTable
from simulator.replay.sim import simulate
from tests.test_fleet import _random_case

THRESHOLDS = [
    parse_threshold("ttft", "p(95) < 900"),
    parse_threshold("e2e", "p(50) < 3000"),
    parse_threshold("itl", "p(99) < 80"),
    parse_threshold("tpot", "avg < 40"),
    parse_threshold("error_rate", "rate < 0.05"),
]


def _flat(summary: Summary) -> dict[str, Any]:
    return asdict(summary)  # the token counts too: a simulation's prefix-cache hits


def _same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12)
    else:
        assert a == b


@pytest.mark.parametrize("seed", range(6))
def test_table_summary_equals_the_records_summary(seed: int) -> None:
    """Retries, timeouts, abandons, rejections, sessions and token gaps: both paths agree."""
    plan, config, fleet, replicas, timeout_s = _random_case(seed)
    result = simulate(plan, config, replicas=replicas, fleet=fleet, timeout_s=timeout_s)
    records = result.records
    assert len(records) == len(result.table)
    assert {r.status for r in records} - {"ok"}  # the case is messy enough to test something
    from_records = summarize(records, THRESHOLDS, 30.0)
    from_table = summarize_table(result.table, THRESHOLDS, 30.0)
    _same(_flat(from_records), _flat(from_table))
    assert from_table.metrics["itl"].count > 0


def test_a_selection_keeps_its_rows_gaps() -> None:
    plan, config, fleet, replicas, timeout_s = _random_case(1)
    table = simulate(plan, config, replicas=replicas, fleet=fleet, timeout_s=timeout_s).table
    late = table.select(table.intended_start >= 15.0)
    records = [
        r
        for r in simulate(plan, config, replicas=replicas, fleet=fleet, timeout_s=timeout_s).records
        if r.intended_start >= 15.0
    ]
    assert 0 < len(late) < len(table)
    _same(
        _flat(summarize(records, THRESHOLDS, 15.0)), _flat(summarize_table(late, THRESHOLDS, 15.0))
    )


def _streamed(n: int, chunks: int, seed: int) -> list[RequestRecord]:
    """`n` successful streamed records, `chunks` chunks each, gaps lognormal (ms scale)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        times = 0.05 + np.cumsum(rng.lognormal(-4.0, 0.5, chunks))
        out.append(
            RequestRecord(
                id=str(i),
                intended_start=float(i),
                start=float(i),
                first_token=float(i + times[0]),
                end=float(i + times[-1]),
                chunk_times=(i + times).tolist(),
                output_tokens=chunks,
                persona="a" if i % 2 else "b",
            )
        )
    return out


def test_gaps_beyond_the_bound_are_a_uniform_sample_with_exact_counts() -> None:
    """400 requests x 49 gaps, kept at most 2,000: each kept gap is one its row really had,
    the count is the whole, and the sample's p50/p95/p99 sit where order statistics put a
    uniform sample's (the exact CDF at each within 4 standard errors of its level)."""
    records = _streamed(400, 50, seed=3)
    exact = RequestTable.of(records)
    sampled = RequestTable.of(records, max_gaps=2_000)
    assert len(exact.gaps) == exact.gap_count == 400 * 49 and exact.gap_share == 1.0
    assert len(sampled.gaps) == 2_000 and sampled.gap_count == 400 * 49
    had = set(zip(exact.gap_row.tolist(), exact.gaps.tolist(), strict=True))
    assert set(zip(sampled.gap_row.tolist(), sampled.gaps.tolist(), strict=True)) <= had
    every = np.sort(exact.gaps)
    for q in (0.50, 0.95, 0.99):
        at = np.searchsorted(every, np.quantile(sampled.gaps, q)) / len(every)
        assert abs(at - q) <= 4 * math.sqrt(q * (1 - q) / 2_000)
    summary = summarize_table(sampled)
    assert summary.metrics["itl"].count == 400 * 49
    # a persona's share of a uniform sample is a uniform sample of its gaps
    a = summary.by_persona["a"].metrics["itl"]
    assert a.count == pytest.approx(200 * 49, rel=0.1)
    # TTFT and E2E never come from the sample: the same as the exact table's
    assert summary.metrics["e2e"] == summarize_table(exact).metrics["e2e"]


def test_the_table_of_a_file_is_built_as_it_streams(tmp_path: Path) -> None:
    """`RunFolder.table` reads requests.jsonl line by line: the same table as from a list, and
    a bad line is skipped with its line number named."""
    records = _streamed(30, 5, seed=4)
    path = tmp_path / "requests.jsonl"
    write_records(path, records)
    with path.open("a", encoding="utf-8") as f:
        f.write("{not json\n")
    warned: list[str] = []
    table = RequestTable.of(iter_records(path, warned.append))
    assert warned and "line 31" in warned[0]
    direct = RequestTable.of(records)
    assert np.array_equal(table.gaps, direct.gaps) and np.array_equal(table.end, direct.end)


def test_a_one_token_answer_has_no_tpot_and_no_divide_warning() -> None:
    """TPOT is (e2e - ttft) / (output_tokens - 1): a one-token answer has none, and computing
    the others must not divide by its zero (numpy's RuntimeWarning, an error here)."""

    def rec(i: int, output: int) -> RequestRecord:
        return RequestRecord(
            id=str(i), intended_start=0, start=0, first_token=0.1, end=0.5, output_tokens=output
        )

    table = RequestTable.of([rec(0, 1), rec(1, 5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tpot = table.samples("tpot")
        summary = summarize_table(table, [parse_threshold("tpot", "avg < 200")])
    assert tpot.tolist() == pytest.approx([0.1])
    assert summary.metrics["tpot"].count == 1 and summary.slos_passed
