"""Scenario validation: strict schema, every error at once, with file and field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import CATALOG
from scenarios.plan import build_plan
from scenarios.slo import parse_threshold
from scenarios.spec import ScenarioError, load_scenario, parse_scenario
from tests.conftest import run_cli, scenario_dict, write_scenario


def test_catalog_scenarios_are_valid() -> None:
    files = sorted(CATALOG.glob("*.yaml"))
    assert any(f.name == "chatbot.yaml" for f in files)
    for f in files:
        assert build_plan(load_scenario(f)), f  # each plans some requests


def test_every_error_reported_at_once_with_paths(tmp_path: Path) -> None:
    data = scenario_dict(
        traffic={"rate": -3, "duration_s": 10, "burst": True},
        slos={"ttft": "p95 < 800"},
    )
    data["workload"]["prompt_tokens"] = {"dist": "lognormal", "median": 100}
    data["target"]["api"] = "grpc"
    path = write_scenario(tmp_path / "bad.yaml", data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    problems = info.value.problems
    text = "\n".join(problems)
    assert "traffic.rate: Input should be greater than 0, got -3" in text
    assert "traffic.burst: unknown field" in text
    assert "workload.prompt_tokens.sigma: required field is missing" in text
    assert "target.api:" in text and "'grpc'" in text
    assert "slos.ttft[0]: SLO 'p95 < 800' is not of the form" in text
    assert len(problems) == 5
    assert str(path) in str(info.value)


def test_cli_exits_2_and_names_file_and_fields(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path / "bad.yaml", scenario_dict(traffic={"rate": 0, "duration_s": -1})
    )
    result = run_cli("run", str(path), timeout=60)
    assert result.returncode == 2
    assert f"{path}: traffic.rate" in result.stderr
    assert f"{path}: traffic.duration_s" in result.stderr
    assert "2 problems" in result.stderr


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntraffic: {rate: 1\n", encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "invalid YAML" in info.value.problems[0]
    assert "line" in info.value.problems[0]


def test_duplicate_keys_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="duplicate key 'name'"):
        load_scenario(path)


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_scenario(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ScenarioError, match="must be a mapping"):
        parse_scenario([1, 2], "list.yaml")


@pytest.mark.parametrize(
    ("metric", "expr", "stat", "op", "value"),
    [
        ("ttft", "p(95) < 800", "p95", "<", 800.0),
        ("e2e", "p(99.9)<=1e4", "p99.9", "<=", 1e4),
        ("itl", "avg < 50", "avg", "<", 50.0),
        ("error_rate", "rate < 0.01", "rate", "<", 0.01),
    ],
)
def test_threshold_parsing(metric: str, expr: str, stat: str, op: str, value: float) -> None:
    t = parse_threshold(metric, expr)
    assert (t.stat, t.op, t.value) == (stat, op, value)


@pytest.mark.parametrize("expr", ["p(95) 800", "p(0) < 1", "rate < 0.1", "p(101) < 3"])
def test_bad_thresholds(expr: str) -> None:
    with pytest.raises(ValueError, match="SLO"):
        parse_threshold("ttft", expr)


def test_slo_and_url_errors_are_all_reported(tmp_path: Path) -> None:
    data = scenario_dict(
        slos={"ttfb": "p(95) < 1", "ttft": ["rate < 0.1", "avg > x"], "error_rate": "p(99) < 1"}
    )
    data["target"]["base_url"] = "http://127.0.0.1:99999/v1"
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path / "s.yaml", data))
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 5
    assert "target.base_url: the port must be between 1 and 65535" in text
    assert "slos.ttfb: unknown field" in text
    assert "slos.ttft[0]: SLO 'rate < 0.1': 'rate' is for error_rate" in text
    assert "slos.ttft[1]: SLO 'avg > x' is not of the form" in text
    assert "slos.error_rate[0]: SLO 'p(99) < 1': error_rate takes 'rate'" in text


def test_non_utf8_scenario_names_line_column_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ntraffic: {rate: 1, duration_s: 5}\n# caf\xe9\n")
    result = run_cli("plan", str(path), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 3, column 6: not UTF-8 (byte 0xe9 at byte offset 47)" in result.stderr


def test_a_plan_too_large_is_bad_input(tmp_path: Path) -> None:
    data = scenario_dict(traffic={"rate": 100000, "duration_s": 86400})
    result = run_cli("plan", str(write_scenario(tmp_path / "huge.yaml", data)), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "MAX_PLANNED_REQUESTS" in result.stderr


def test_arrival_errors_name_the_field_not_the_union(tmp_path: Path) -> None:
    data = scenario_dict(
        traffic={"arrival": {"type": "gamma", "rate": 2, "burstiness": 0}, "duration_s": 5}
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path / "s.yaml", data))
    assert info.value.problems == ["traffic.arrival.burstiness: Input should be greater than 0"]
