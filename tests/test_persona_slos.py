"""A persona's own SLOs, judged on its requests alone in a real run: its miss fails the run (exit
99) while the scenario-wide SLOs hold, and summary.json says whose objective failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LENIENT, run_cli, scenario_dict, write_scenario


def _run(tmp: Path, strict_ttft: str) -> tuple[int, dict[str, Any], str]:
    """A short run on the reference target the scenario starts: two personas, the scenario's
    SLOs loose, `strict` with a TTFT objective of its own. (exit code, summary.json, stdout)"""
    data = scenario_dict(
        traffic={"rate": 8, "duration_s": 2, "seed": 2, **LENIENT},
        slos={"ttft": "p(95) < 5000", "error_rate": "rate < 0.5"},
        personas=[
            {"name": "calm", "weight": 1},
            {"name": "strict", "weight": 1, "slos": {"ttft": strict_ttft}},
        ],
    )
    name = f"ttft-{strict_ttft.split('<')[1].strip()}"
    path = write_scenario(tmp / f"{name}.yaml", data)
    out = tmp / name
    result = run_cli("run", str(path), "--out", str(out), "--no-report", timeout=120)
    assert result.returncode in (0, 99), result.stderr[-3000:]
    return result.returncode, json.loads((out / "summary.json").read_text()), result.stdout


def _verdicts(doc: dict[str, Any]) -> dict[str, bool]:
    return {v["slo"]: v["passed"] for v in doc["slos"]}


def test_a_personas_own_slo_miss_fails_the_run_while_the_scenarios_hold(tmp_path: Path) -> None:
    code, summary, stdout = _run(tmp_path, "p(95) < 1")  # no answer comes within 1 ms
    assert _verdicts(summary) == {"ttft: p(95) < 5000": True, "error_rate: rate < 0.5": True}
    strict, calm = summary["by_persona"]["strict"], summary["by_persona"]["calm"]
    assert strict["requests"] > 0 and calm["requests"] > 0
    # a persona is judged by its own objectives, on its requests alone (the scenario's are
    # judged on all requests, as the forecast and the gate judge them)
    assert _verdicts(strict) == {"ttft: p(95) < 1": False}
    own = next(v for v in strict["slos"] if v["slo"] == "ttft: p(95) < 1")
    assert own["observed"] > 1
    assert own["observed"] == pytest.approx(strict["latency"]["ttft"]["p95_ms"])
    assert not strict["slos_passed"] and calm["slos_passed"] and _verdicts(calm) == {}
    assert not summary["slos_passed"] and code == 99  # any objective missed: exit 99
    assert "FAIL: ttft: p(95) < 1" in stdout  # the persona table names it
    # the gate judges the run as `surgecast run` did, naming the persona
    run = tmp_path / "ttft-1"
    gate = run_cli("gate", "--baseline", str(run), "--candidate", str(run), "--out", str(tmp_path))
    assert gate.returncode == 99, gate.stderr[-2000:]
    assert "strict: ttft: p(95) < 1" in (tmp_path / "gate.md").read_text()

    code, summary, _ = _run(tmp_path, "p(95) < 5000")  # the same run, its objective met
    assert summary["by_persona"]["strict"]["slos_passed"] and summary["slos_passed"]
    assert code == 0
