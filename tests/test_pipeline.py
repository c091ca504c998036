"""The whole job end to end on a short scenario, and the import quarantine of Locust."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.records import read_records
from surgecast.contracts import read_calibration
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from tests.conftest import ROOT, cli_help, run_cli, scenario_dict, write_scenario


def test_pipeline_end_to_end(pipeline_run: tuple[Path, str]) -> None:
    out, stdout = pipeline_run
    assert f"report: {out}/index.html" in stdout
    for name in (
        "run.json",
        "requests.jsonl",
        "calibration.json",
        "backtest.json",
        "simulated.jsonl",
        "forecast.json",
        "index.html",
        "summary.md",
    ):
        assert (out / name).stat().st_size > 0, name

    # calibration finds the engine the reference target really ran (base 10 ms, 0.8 ms/seq)
    cal = json.loads((out / "calibration.json").read_text())["parameters"]
    assert cal["base_s"]["value"] == pytest.approx(0.010, rel=0.1)
    assert cal["per_decode_seq_s"]["value"] == pytest.approx(0.0008, rel=0.25)

    backtest = json.loads((out / "backtest.json").read_text())["rows"]
    e2e = {
        r["quantile"]: r["error_pct"]
        for r in backtest
        if r["metric"] == "e2e" and r["basis"] == "replay"
    }
    assert abs(e2e[50]) < 10 and abs(e2e[95]) < 10

    points = json.loads((out / "forecast.json").read_text())["points"]
    assert [p["scale"] for p in points] == [1, 10]  # today's traffic comes first
    point = points[1]
    assert point["best"]["passed"]
    assert point["best"]["replicas"] >= points[0]["best"]["replicas"]
    assert point["cost_per_month_usd"] == pytest.approx(point["best"]["replicas"] * 2.0 * 730)
    # with one replica fewer the SLOs were not met, or its load was over forecast.max_load
    # (0.9 of saturation: such a fleet is refused unsimulated), or it is the smallest fleet
    n = point["best"]["replicas"]
    fewer = [t for t in point["tried"] if t["replicas"] == n - 1]
    over = n > 1 and point["best"]["load"] * n / (n - 1) > 0.9
    assert n == 1 or (fewer and not fewer[0]["passed"]) or over

    page = (out / "index.html").read_text()
    # latency CDFs, everything over time (telemetry included), forecast
    assert page.count("data:image/png;base64,") == 3
    assert "Back-test" in page and "Capacity forecast" in page
    summary = (out / "summary.md").read_text()
    assert "## Capacity forecast" in summary
    # the reference target streams one token per chunk: its usage and the stream agree
    assert re.search(r"output tokens: ([\d,]+) by the server's usage, \1 content chunks", summary)


def test_core_packages_import_without_gevent() -> None:
    code = (
        "import sys, scenarios.spec, scenarios.plan, scenarios.metrics, simulator.replay.sim, "
        "targets.reference_server, simulator.forecast.search, surgecast.cli, surgecast.live_run, "
        "surgecast.report, loadgen.client; print('gevent' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "command",
    [
        "pipeline",
        "run",
        "serve",
        "calibrate",
        "backtest",
        "simulate",
        "forecast",
        "report",
        "schema",
    ],
)
def test_every_command_has_help(command: str) -> None:
    assert "usage: surgecast" in cli_help(command)


def test_calibrate_and_forecast_commands(pipeline_run: tuple[Path, str], tmp_path: Path) -> None:
    """The pieces by hand: calibrate -o, simulate, forecast --json, report, on the measured run
    of the pipeline's (its files as `surgecast run --no-report` leaves them)."""
    path = write_scenario(
        tmp_path / "s.yaml",
        scenario_dict(
            traffic={"rate": 6, "duration_s": 5, "seed": 9},
            forecast={"scales": [3], "seeds": 2, "duration_s": 20},
        ),
    )
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "requests.jsonl", "summary.json", "telemetry.jsonl"):
        shutil.copy2(pipeline_run[0] / name, run / name)
    cal = tmp_path / "cal.json"
    result = run_cli("calibrate", str(run), "-o", str(cal))
    assert result.returncode == 0, result.stderr
    assert "back-test of" in result.stdout and cal.exists()
    sim = tmp_path / "sim"
    result = run_cli(
        "simulate",
        str(path),
        "--calibration",
        str(cal),
        "--out",
        str(sim),
        "--scale",
        "2",
        "--replicas",
        "2",
    )
    assert result.returncode == 0, result.stderr
    sim_records = (sim / "requests.jsonl").read_text().splitlines()
    assert sim_records and all('"source":"simulated"' in line for line in sim_records)
    assert json.loads((sim / "run.json").read_text())["target"]["core"] == "fast"
    fc = tmp_path / "fc.json"
    result = run_cli("forecast", str(path), "--calibration", str(cal), "--json", str(fc))
    assert result.returncode == 0, result.stderr
    assert "x3" in result.stdout and json.loads(fc.read_text())["points"][1]["scale"] == 3
    assert "simulator core: fast for" in result.stdout
    assert json.loads(fc.read_text())["points"][1]["best"]["core"] == "fast"
    assert run_cli("report", str(run)).returncode == 0
    assert (run / "index.html").exists()
    bad = run_cli("forecast", str(path), "--calibration", str(tmp_path / "none.json"))
    assert bad.returncode == 2 and "calibration file not found" in bad.stderr


def test_backtest_command_predicts_a_run_with_intervals(pipeline_run: tuple[Path, str]) -> None:
    out, _ = pipeline_run
    result = run_cli("backtest", str(out), "--calibration", str(out / "calibration.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "90% interval" in result.stdout and "replay" in result.stdout
    assert "plan" in result.stdout  # the run's scenario is in run.json: predicted from it too
    saved = json.loads((out / "backtest.json").read_text())
    assert {r["basis"] for r in saved["rows"]} == {"replay", "plan"}
    # the pipeline fitted this very run: the back-test says so, and leaves it out of the totals
    assert saved["in_sample"] and "IN-SAMPLE" in result.stdout
    assert "held-out: 0 of 0" in result.stdout
    missing = run_cli(
        "backtest", str(out / "nothing"), "--calibration", str(out / "calibration.json")
    )
    assert missing.returncode == 2 and "a run folder?" in missing.stderr


# a scenario's own traffic settings beside its arrivals, none of them the default
LIMITS = {
    "max_lateness_ms": 4000.0,
    "max_in_flight": 500,
    "max_loop_lag_ms": 900.0,
    "max_generator_cpu": 0.95,
    "stop_grace_s": 2.0,
}


def test_a_sweep_level_keeps_the_scenarios_traffic_settings() -> None:
    from scenarios.spec import Traffic, parse_scenario
    from surgecast.sweep import _level

    arrival = {"type": "gamma", "rate": 3, "burstiness": 0.5}
    traffic = {"arrival": arrival, "duration_s": 60, "seed": 4, **LIMITS}
    scenario = parse_scenario(scenario_dict(traffic=traffic))
    level = _level(scenario, 7.5, 4.0, 9).traffic
    assert (level.arrival, level.rate, level.duration_s, level.seed) == ("poisson", 7.5, 4.0, 9)
    assert {k: getattr(level, k) for k in LIMITS} == LIMITS
    assert set(Traffic.model_fields) == {"arrival", "rate", "duration_s", "seed", *LIMITS}


def test_calibrate_sweeps_a_target_to_its_knee_and_backtests_held_out_levels(
    tmp_path: Path,
) -> None:
    data = scenario_dict(traffic={"rate": 5, "duration_s": 8, "seed": 2, **LIMITS})
    data["slos"] = {"ttft": "p(95) < 300"}
    path = write_scenario(tmp_path / "s.yaml", data)
    cal = tmp_path / "cal.json"
    out = tmp_path / "sweep"
    result = run_cli(
        "calibrate",
        "--scenario",
        str(path),
        "-o",
        str(cal),
        "--level-duration",
        "4",
        "--out",
        str(out),
        "--level-requests",
        "20",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "knee reached" in result.stderr  # the reference target saturates near 20 req/s
    # bisected: the knee within 2^(1/8) after 3 more levels
    low, high = map(
        float, re.findall(r"knee between ([\d.]+) and ([\d.]+) req/s", result.stderr)[0]
    )
    assert 1 < high / low <= 2 ** (1 / 8) + 1e-3
    # the staircase as large as the batch the target reports (scenario_dict's reference target)
    assert f"staircase: {data['reference_target']['max_num_seqs']} requests" in result.stderr
    assert "held-out levels, predicted" in result.stdout and "staircase (fit)" in result.stdout
    params = json.loads(cal.read_text())["parameters"]
    assert params["base_s"]["value"] == pytest.approx(0.010, rel=0.15)  # the target's truth
    assert (out / "staircase" / "requests.jsonl").exists() and (out / "level-1").is_dir()
    # the staircase's plan is not its scenario's traffic: back-tested on its own send times only
    stairs, level = RunFolder(out / "staircase"), RunFolder(out / "level-1")
    assert stairs.meta().plan == "given" and level.meta().plan == "scenario"
    for folder in (level, stairs):  # each level ran under the scenario's own limits
        kept = folder.meta().scenario["traffic"]
        assert {k: kept[k] for k in LIMITS} == LIMITS, folder.path
    calibration = read_calibration(cal)
    capacity = calibration.measured_capacity  # the most served, near the target's 20 req/s
    assert capacity is not None and 8 < capacity < 30
    stair_prompts = [r.prompt for r in read_records(stairs.requests)]
    assert len(set(stair_prompts)) == len(stair_prompts)  # no prompt repeated (hashed per run)
    assert {r.basis for r in backtest_run(stairs, calibration)} == {"replay"}
    assert "plan" in {r.basis for r in backtest_run(level, calibration)}
    both = run_cli("calibrate", str(out / "level-1"), "--scenario", str(path), "-o", str(cal))
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_sweep_whose_generator_cannot_time_its_first_level_fits_nothing(
    tmp_path: Path,
) -> None:
    """A level the generator spoiled (here: any CPU at all is over its limit) says nothing of
    the target: the sweep names the generator, fits no calibration on it and exits 3."""
    traffic = {"rate": 5, "duration_s": 8, "seed": 2, **LIMITS, "max_generator_cpu": 1e-6}
    path = write_scenario(tmp_path / "s.yaml", scenario_dict(traffic=traffic))
    cal = tmp_path / "cal.json"
    result = run_cli(
        "calibrate", "--scenario", str(path), "-o", str(cal), "--level-duration", "2",
        "--out", str(tmp_path / "sweep"), "--level-requests", "5", "--knee-steps", "0",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    assert "the generator could not time it" in result.stderr
    assert "no sweep level could be trusted" in result.stderr and "generator saturated" in (
        result.stderr
    )
    assert not cal.exists()


def test_only_the_generators_own_failings_spoil_a_run_for_the_target() -> None:
    from surgecast.validity import spoiled_by_generator

    assert spoiled_by_generator(["generator overloaded: its event loop woke 9 ms late"])
    assert spoiled_by_generator(["x", "generator fell behind: p99 send lateness 900 ms"])
    assert not spoiled_by_generator(["generator dropped 3 planned requests at its cap"])
    assert not spoiled_by_generator(["target unreachable: every request failed to connect"])
