"""compare and gate: bootstrap intervals that cover, budgets, exit codes, JUnit XML."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scenarios.plan import build_plan
from scenarios.records import write_records
from scenarios.regress import parse_budget
from scenarios.spec import parse_scenario
from scenarios.table import OK, STATUSES, RequestTable
from simulator.engine.core import engine_from_spec
from simulator.replay.sim import simulate
from surgecast.compare import Run, compare
from surgecast.gate import judge_budget
from surgecast.rundir import RunFolder
from tests.conftest import cli_help, run_cli, run_json, scenario_dict, write_scenario

BUDGETS = {
    "ttft": "p(95) regress < 10%",
    "itl": "p(50) regress < 10%",
    "e2e": "p(50) regress < 10%",
    "error_rate": "rate regress < 0.01",
}


def _scenario(**overrides: Any) -> dict[str, Any]:
    data = scenario_dict(regressions=BUDGETS, **overrides)
    data["telemetry"] = {"prometheus": False, "gpu": False}
    return data


def _simulated_folder(path: Path, seed: int = 1, slowdown: float = 1.0, **extra: Any) -> Path:
    """A run folder as `surgecast simulate` writes one, from the test scenario's engine."""
    data = _scenario(traffic={"rate": 6, "duration_s": 20, "seed": seed})
    data["reference_target"] = {**data["reference_target"], "slowdown": slowdown}
    scenario = parse_scenario(data)
    result = simulate(build_plan(scenario), engine_from_spec(scenario.reference_target))
    path.mkdir(parents=True)
    write_records(path / "requests.jsonl", result.records)
    meta = run_json(path.name, scenario.model_dump(mode="json"), source="simulated", **extra)
    RunFolder(path).write_meta(meta)
    return path


def _table(ttft: np.ndarray, e2e: np.ndarray, failed: int = 0) -> RequestTable:
    """Synthetic rows: starts spread over a minute, `failed` of them errors (spread evenly)."""
    n = len(ttft)
    start = np.linspace(0.0, 60.0, n)
    status = np.full(n, OK, np.int8)
    status[np.linspace(0, n - 1, failed).astype(int)] = STATUSES.index("error")
    return RequestTable(
        start=start,
        intended_start=start,
        lateness=np.zeros(n),
        first_token=start + ttft,
        end=start + e2e,
        status=status,
        error_kind=np.full(n, -1, np.int16),
        persona=np.zeros(n, np.int16),
        output_tokens=np.full(n, 10, np.int64),
        attempt=np.zeros(n, np.int16),
        retried=np.zeros(n, bool),
        max_gap=np.full(n, np.nan),
        gaps=np.empty(0),
        gap_row=np.empty(0, np.int64),
    )


def _lognormal_run(rng: np.random.Generator, n: int, scale: float) -> Run:
    ttft = rng.lognormal(np.log(0.1), 0.6, n) * scale
    return Run.of("synthetic", _table(ttft, ttft * 4))


def test_intervals_cover_the_true_change_at_their_nominal_rate() -> None:
    """200 comparisons of lognormal samples whose p95 and median truly differ by +10%: the 95%
    intervals should cover +10% in 95% of them (binomial sd 1.5%; tolerance about 3 sd)."""
    rng = np.random.default_rng(7)
    covered = {"ttft p95": 0, "e2e p50": 0}
    for i in range(200):
        base, cand = _lognormal_run(rng, 400, 1.0), _lognormal_run(rng, 400, 1.1)
        result = compare([base], [cand], [("ttft", "p95"), ("e2e", "p50")], resamples=500, seed=i)
        for c in result.changes:
            covered[c.name] += c.rel_low <= 0.10 <= c.rel_high
    for name, hits in covered.items():
        assert 0.90 <= hits / 200 <= 0.99, (name, hits)


def test_repeats_widen_the_interval_when_runs_disagree() -> None:
    """Runs shifted by a run-level effect: resampling runs (then requests) says so."""
    rng = np.random.default_rng(3)
    same = [_lognormal_run(rng, 300, 1.0) for _ in range(4)]
    spread = [_lognormal_run(rng, 300, s) for s in (0.8, 0.9, 1.1, 1.25)]
    reference = [_lognormal_run(rng, 300, 1.0) for _ in range(4)]
    narrow = compare(reference, same, [("ttft", "p50")]).changes[0]
    wide = compare(reference, spread, [("ttft", "p50")]).changes[0]
    assert (wide.rel_high - wide.rel_low) > 1.5 * (narrow.rel_high - narrow.rel_low)


def test_error_rate_and_throughput_changes() -> None:
    rng = np.random.default_rng(5)
    t = rng.lognormal(np.log(0.1), 0.5, 2000)
    base = Run.of("b", _table(t, t * 2, failed=10))
    cand = Run.of("c", _table(t, t * 2, failed=200))
    result = compare([base], [cand], [("error_rate", "rate"), ("throughput", "rate")])
    errors, served = result.changes
    assert errors.delta == pytest.approx(0.095) and errors.low > 0.07 and errors.significant
    assert served.delta < 0 and served.regression(relative=True)[0] > 0  # fewer served is worse
    assert not judge_budget(parse_budget("error_rate", "rate regress < 0.01"), errors).passed
    assert judge_budget(parse_budget("error_rate", "rate regress < 0.2"), errors).passed


def test_a_regression_fails_only_when_significant_and_over_budget() -> None:
    rng = np.random.default_rng(11)
    t = rng.lognormal(np.log(0.1), 0.6, 40)
    base, noisy = Run.of("b", _table(t, t)), Run.of("c", _table(t * 1.1, t * 1.1))
    change = compare([base], [noisy], [("ttft", "p95")]).changes[0]
    assert change.relative == pytest.approx(0.10) and not change.significant  # 40 samples
    verdict = judge_budget(parse_budget("ttft", "p(95) regress < 5%"), change)
    assert verdict.passed and "over budget but not significant" in verdict.message
    big = [_lognormal_run(rng, 5000, 1.0)], [_lognormal_run(rng, 5000, 1.15)]
    change = compare(*big, [("ttft", "p95")]).changes[0]
    assert change.significant
    assert not judge_budget(parse_budget("ttft", "p(95) regress < 5%"), change).passed
    assert judge_budget(parse_budget("ttft", "p(95) regress < 30%"), change).passed


@pytest.mark.parametrize(
    ("metric", "expr", "words"),
    [
        ("ttft", "p(95) regres < 10%", "not of the form"),
        ("error_rate", "p(95) regress < 1", "takes 'rate'"),
        ("e2e", "rate regress < 0.1", "latencies take"),
        ("ttft", "p(100) regress < 5%", "percentile"),
    ],
)
def test_bad_budgets_are_refused(metric: str, expr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_budget(metric, expr)


def test_gate_identical_runs_pass_and_write_junit_and_summary(tmp_path: Path) -> None:
    run = _simulated_folder(tmp_path / "base")
    other = _simulated_folder(tmp_path / "again")  # the same plan, the same engine
    summary = tmp_path / "step-summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    out = tmp_path / "gate"
    result = run_cli(
        "gate", "--baseline", str(run), "--candidate", str(other), "--out", str(out), env=env
    )
    assert result.returncode == 0, result.stderr + result.stdout
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == str(len(BUDGETS) + 2) and suite.get("failures") == "0"
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "ttft: p(95) regress < 10%" in names and "ttft: p(95) < 2000" in names
    assert "surgecast gate: PASS" in summary.read_text()
    assert (out / "gate.md").exists() and (out / "compare.png").stat().st_size > 0


def test_gate_a_simulated_slowdown_fails_naming_the_metric(tmp_path: Path) -> None:
    base = _simulated_folder(tmp_path / "base", seed=1)
    slow = _simulated_folder(tmp_path / "slow", seed=2, slowdown=1.3)
    out = tmp_path / "gate"
    result = run_cli("gate", "--baseline", str(base), "--candidate", str(slow), "--out", str(out))
    assert result.returncode == 99, result.stderr + result.stdout
    failed = {
        c.get("name"): c.find("failure")
        for c in ET.parse(out / "junit.xml").getroot().iter("testcase")
    }
    failure = failed["itl: p(50) regress < 10%"]
    assert failure is not None and "itl p50 regressed +" in (failure.get("message") or "")
    assert failed["error_rate: rate regress < 0.01"] is None


def test_gate_fails_a_live_30pct_slowdown_on_the_reference_target(tmp_path: Path) -> None:
    """A baseline run, then `gate` runs the scenario now with the target's steps 30% slower."""
    data = _scenario(traffic={"rate": 8, "duration_s": 3, "seed": 1})
    path = write_scenario(tmp_path / "s.yaml", data)
    base = tmp_path / "base"
    result = run_cli("run", str(path), "--out", str(base), "-q", "--no-report")
    assert result.returncode == 0, result.stderr[-2000:]
    data["reference_target"]["slowdown"] = 1.3
    slow = write_scenario(tmp_path / "slow.yaml", data)
    out = tmp_path / "gate"
    result = run_cli("gate", str(slow), "--baseline", str(base), "--out", str(out), "-q")
    assert result.returncode == 99, result.stderr[-2000:] + result.stdout
    junit = (out / "junit.xml").read_text()
    assert 'name="itl: p(50) regress &lt; 10%"' in junit
    assert 'failure message="itl p50 regressed +' in junit
    assert json.loads((out / "candidate" / "run.json").read_text())["target"]["engine"]["cost"][
        "base_s"
    ] == pytest.approx(0.013)


def test_gate_an_invalid_run_exits_3(tmp_path: Path) -> None:
    base = _simulated_folder(tmp_path / "base")
    bad = _simulated_folder(
        tmp_path / "bad",
        validity={"valid": False, "reasons": ["generator fell behind: p99 send lateness 900 ms"]},
    )
    out = tmp_path / "gate"
    result = run_cli("gate", "--baseline", str(base), "--candidate", str(bad), "--out", str(out))
    assert result.returncode == 3
    assert "generator fell behind" in result.stderr and "rerun it" in result.stderr
    # nothing judged, but a CI job's report step still finds why
    junit = (out / "junit.xml").read_text()
    assert 'failures="1"' in junit and "generator fell behind" in junit
    assert "INVALID" in (out / "gate.md").read_text()


def test_gate_bad_budget_exits_2_naming_the_field(tmp_path: Path) -> None:
    base = _simulated_folder(tmp_path / "base")
    data = _scenario()
    data["regressions"] = {"ttft": "p(95) regress < 10%", "e2e": ["p(95) regress by 5%"]}
    path = write_scenario(tmp_path / "s.yaml", data)
    result = run_cli("gate", str(path), "--baseline", str(base), "--candidate", str(base))
    assert result.returncode == 2
    assert "regressions.e2e[0]" in result.stderr and "p(95) regress by 5%" in result.stderr


def test_gate_bad_input_exits_2(tmp_path: Path) -> None:
    base = _simulated_folder(tmp_path / "base")
    missing = run_cli("gate", "--baseline", str(tmp_path / "none"), "--candidate", str(base))
    assert missing.returncode == 2 and "a run folder?" in missing.stderr
    nothing = run_cli("gate", "--baseline", str(base))
    assert nothing.returncode == 2 and "--candidate" in nothing.stderr


def test_compare_command_on_simulated_runs(tmp_path: Path) -> None:
    a = _simulated_folder(tmp_path / "a", seed=1)
    b = _simulated_folder(tmp_path / "b", seed=2, slowdown=1.3)
    c = _simulated_folder(tmp_path / "c", seed=3, slowdown=1.3)
    out = tmp_path / "cmp"
    result = run_cli(
        "compare", "--baseline", str(a), "--candidate", str(b), str(c), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    itl = next(line for line in result.stdout.splitlines() if "itl p50" in line)
    assert "worse" in itl
    assert "(runs, then requests)" in result.stdout
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.md").exists()
    three = run_cli("compare", str(a), str(b), str(c))
    assert three.returncode == 2 and "--baseline A B --candidate C D" in three.stderr


@pytest.mark.parametrize("command", ["compare", "gate"])
def test_help(command: str) -> None:
    assert "usage: surgecast" in cli_help(command)


def test_gate_warns_when_the_baseline_ran_other_traffic(tmp_path: Path) -> None:
    base = _simulated_folder(tmp_path / "base", seed=1)
    data = _scenario(traffic={"rate": 6, "duration_s": 20, "seed": 2})
    path = write_scenario(tmp_path / "s.yaml", data)
    flags = ["--baseline", str(base), "--candidate", str(base)]
    other = run_cli("gate", str(path), *flags, "--out", str(tmp_path / "other"))
    assert other.returncode == 0 and "another traffic section" in other.stderr
    same = run_cli("gate", *flags, "--out", str(tmp_path / "same"))
    assert same.returncode == 0 and "warning" not in same.stderr


def test_blocks_without_samples_are_drawn_safely() -> None:
    """A short run whose requests bunch up leaves blocks empty: a resample of only those has
    no samples (NaN), the others still give an interval."""
    t = np.full(13, 0.05)
    table = _table(t, t * 2)
    start = np.concatenate([np.zeros(6), np.full(7, 60.0)])  # nothing in between
    table = replace(table, start=start, intended_start=start, first_token=start + t, end=start + t)
    change = compare([Run.of("b", table)], [Run.of("c", table)], [("ttft", "p95")]).changes[0]
    assert change.delta == 0 and change.low <= 0 <= change.high
