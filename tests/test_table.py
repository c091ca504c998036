"""Per-request columns: a simulated run's table summarises exactly as its records do."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import pytest

from scenarios.metrics import Summary, summarize, summarize_table
from scenarios.slo import parse_threshold
from simulator.sim import simulate
from tests.test_fleet import _random_case

THRESHOLDS = [
    parse_threshold("ttft", "p(95) < 900"),
    parse_threshold("e2e", "p(50) < 3000"),
    parse_threshold("itl", "p(99) < 80"),
    parse_threshold("tpot", "avg < 40"),
    parse_threshold("error_rate", "rate < 0.05"),
]


def _flat(summary: Summary) -> dict[str, Any]:
    d = asdict(summary)
    d.pop("tokens")  # counted from records' usage only; a simulation has none
    for persona in d["by_persona"].values():
        persona.pop("tokens")
    return d


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
