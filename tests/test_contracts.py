"""Run-folder documents as contracts: each meets its exported JSON Schema (checked by an
independent validator) and reads back to the same document, summary.json says the span of
every rate, and a reader refuses what it does not know."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from surgecast.contracts import (
    ContractError,
    read_backtest,
    read_calibration,
    read_forecast,
    read_summary,
    write_calibration,
    write_forecast,
    write_run,
)
from surgecast.rundir import RunFolder, RunFolderError
from tests.conftest import run_cli

DOCUMENTS = ("run", "summary", "calibration", "backtest", "forecast")


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `surgecast schema --out` wrote, once for the module."""
    out = tmp_path_factory.mktemp("schemas")
    result = run_cli("schema", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_document_meets_its_exported_schema(
    pipeline_run: tuple[Path, str], schemas: Path, name: str
) -> None:
    run, _ = pipeline_run
    data = json.loads((run / f"{name}.json").read_text())
    jsonschema.validate(data, json.loads((schemas / f"{name}.schema.json").read_text()))
    assert data["schema"] == f"surgecast.{name}/1"


def test_run_calibration_and_forecast_read_back_to_the_same_document(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Written from what was read, each file is the same JSON: nothing lost or invented."""
    run, _ = pipeline_run
    meta = RunFolder(run).meta()
    assert meta.status == "finished" and meta.validity is not None and meta.validity.valid
    assert meta.target.kind == "reference" and meta.target.engine is not None
    assert meta.generator is not None and meta.generator.loop_lag.samples > 0
    write_run(tmp_path / "run.json", meta)
    calibration = read_calibration(run / "calibration.json")
    assert calibration.runs == [meta.run_id]
    write_calibration(tmp_path / "calibration.json", calibration)
    points = read_forecast(run / "forecast.json")
    assert points and all(p.best is not None for p in points)
    write_forecast(tmp_path / "forecast.json", points)
    for name in ("run", "calibration", "forecast"):
        again = json.loads((tmp_path / f"{name}.json").read_text())
        assert again == json.loads((run / f"{name}.json").read_text()), name


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("run", ("target", "gpu_count")),
        ("run", ("status_detail",)),
        ("calibration", ("fit", "r_squared")),
        ("calibration", ("engine", "gpus")),
        ("forecast", ("points", 0, "best", "gpus")),
    ],
)
def test_an_unknown_field_anywhere_is_refused_by_its_path(
    pipeline_run: tuple[Path, str], tmp_path: Path, name: str, path: tuple[str | int, ...]
) -> None:
    run, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = json.loads((copy / f"{name}.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    (copy / f"{name}.json").write_text(json.dumps(data))
    where = ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in path).replace(".[", "[")
    read = {
        "run": lambda p: RunFolder(p.parent).meta(),
        "calibration": read_calibration,
        "forecast": read_forecast,
    }[name]
    with pytest.raises((ContractError, RunFolderError)) as e:
        read(copy / f"{name}.json")
    message = str(e.value)  # pydantic words it one way for models, another for dataclasses
    assert f"{where}: Extra inputs are not permitted" in message or (
        f"{where}: Unexpected keyword argument" in message
    )
    assert str(copy / f"{name}.json") in str(e.value)


def test_a_report_on_a_run_json_from_an_older_surgecast_says_so(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = pipeline_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = json.loads((copy / "run.json").read_text())
    del data["schema"]
    data["status"] = "done"
    (copy / "run.json").write_text(json.dumps(data))
    result = run_cli("report", str(copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a readable run folder" in result.stderr and "older surgecast" in result.stderr
    data["schema"] = "surgecast.run/1"
    (copy / "run.json").write_text(json.dumps(data))
    result = run_cli("report", str(copy))
    assert result.returncode == 2 and "status: Input should be 'running'" in result.stderr


def test_summary_json_meets_its_exported_schema(
    pipeline_run: tuple[Path, str], schemas: Path
) -> None:
    run, _ = pipeline_run
    schema = json.loads((schemas / "summary.schema.json").read_text())
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
    pipeline_run: tuple[Path, str], schemas: Path, tmp_path: Path
) -> None:
    run, _ = pipeline_run
    data = json.loads((run / "backtest.json").read_text())
    jsonschema.validate(data, json.loads((schemas / "backtest.schema.json").read_text()))
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
