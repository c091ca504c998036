"""Run-folder documents as contracts: summary.json meets its exported JSON Schema (checked by
an independent validator), says the span of every rate, and a reader refuses what it does not
know."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from surgecast.contracts import ContractError, read_backtest, read_summary
from tests.conftest import run_cli


def test_summary_json_meets_its_exported_schema(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = pipeline_run
    result = run_cli("schema", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    schema = json.loads((tmp_path / "summary.schema.json").read_text())
    data = json.loads((run / "summary.json").read_text())
    jsonschema.validate(data, schema)  # raises on any departure
    assert data["schema"] == "surgecast.summary/1"
    doc = read_summary(run / "summary.json")
    records = (run / "requests.jsonl").read_text().splitlines()
    assert doc.requests == len(records) and doc.ok == doc.requests
    # every rate is its count over its own stated span
    rates = doc.rates
    assert rates.sent_per_s * rates.send_window_s == pytest.approx(doc.requests)
    assert rates.throughput_per_s * rates.completion_span_s == pytest.approx(doc.ok)
    assert rates.completion_span_s > rates.send_window_s * 0.9  # answers end after sends
    assert doc.latency["ttft"].count == doc.ok and doc.slos_passed


def test_a_reader_refuses_an_unknown_version_or_field(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = pipeline_run
    data = json.loads((run / "summary.json").read_text())
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**data, "schema": "surgecast.summary/2"}))
    with pytest.raises(ContractError, match=r"surgecast\.summary/2"):
        read_summary(newer)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**data, "p99_guess": 1}))
    with pytest.raises(ContractError, match="p99_guess"):
        read_summary(extra)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**data, "requests": "many"}))
    with pytest.raises(ContractError, match="requests"):
        read_summary(wrong)


def test_backtest_json_meets_its_schema_and_an_old_one_is_left_out_of_the_report(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = pipeline_run
    assert run_cli("schema", "--out", str(tmp_path)).returncode == 0
    data = json.loads((run / "backtest.json").read_text())
    jsonschema.validate(data, json.loads((tmp_path / "backtest.schema.json").read_text()))
    doc = read_backtest(run / "backtest.json")
    assert doc.in_sample and {r.basis for r in doc.rows} == {"replay", "plan"}
    for row in doc.rows:  # inside is what the interval says of the measured value
        assert row.low is not None and row.high is not None and row.measured is not None
        assert row.inside == (row.low <= row.measured <= row.high)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    older = {k: v for k, v in data.items() if k != "schema"}
    (copy / "backtest.json").write_text(json.dumps(older))
    with pytest.raises(ContractError, match="older surgecast"):
        read_backtest(copy / "backtest.json")
    result = run_cli("report", str(copy))
    assert result.returncode == 0 and "older surgecast" in result.stderr
    assert "Back-test" not in (copy / "summary.md").read_text()
