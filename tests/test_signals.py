"""Signals during `surgecast run`, checked against the reference target's own request log:
SIGINT and SIGTERM stop the sending, keep a record of every request the target saw (those
still in flight at the end cancelled), write the report and exit 130 / 143; SIGKILL keeps every
finished record and `surgecast report` marks the folder "killed"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import ROOT, run_cli, scenario_dict, served_requests, write_scenario

# 20 ms steps and 60-120 token answers: each request is in flight for 1.2-2.4 s
SLOW = EngineConfig(max_num_seqs=64, kv_cache_tokens=65536, cost=StepCost(0.020, 0.0, 0.0))


@pytest.fixture
def slow_target() -> Iterator[str]:
    """A target of this test's own, so its request log holds this run's requests only."""
    with ReferenceTargetProcess(SLOW, debug=True) as url:
        yield url


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _run(tmp: Path, target: str, grace_s: float) -> tuple[subprocess.Popen[str], Path]:
    data = scenario_dict(
        traffic={"rate": 8, "duration_s": 60, "seed": 3, "stop_grace_s": grace_s},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 60},
            "output_tokens": {"dist": "uniform", "low": 60, "high": 120},
        },
    )
    scenario = write_scenario(tmp / "s.yaml", data)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--target", target]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(_lines(out / "requests.jsonl")) < 10:  # some finished, more in flight
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run wrote no records in 60 s"
        time.sleep(0.1)
    return proc, out


@pytest.mark.parametrize(
    ("signum", "code", "grace_s"),
    [(signal.SIGINT, 130, 10.0), (signal.SIGTERM, 143, 10.0), (signal.SIGINT, 130, 0.3)],
    ids=["sigint-drain", "sigterm-drain", "sigint-cancel"],
)
def test_signal_stops_the_run_and_keeps_every_request(
    tmp_path: Path, slow_target: str, signum: int, code: int, grace_s: float
) -> None:
    proc, out = _run(tmp_path, slow_target, grace_s)
    proc.send_signal(signum)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "closed file" not in err, err[-3000:]
    assert time.monotonic() - stopped < grace_s + 15  # it stopped sending: 60 s were planned

    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted"
    assert not meta["validity"]["valid"]
    assert signal.Signals(signum).name in meta["validity"]["reasons"][0]
    assert (out / "index.html").exists() and (out / "summary.md").exists()

    records = _lines(out / "requests.jsonl")
    served = served_requests(slow_target)
    # every request the target received has one record, finished or cancelled
    assert len(records) == len(served) >= 10
    assert {r["response_id"] for r in records if r.get("response_id")} <= set(served)
    finished = [r for r in records if r["status"] == "ok"]
    cancelled = [r for r in records if r["status"] == "cancelled"]
    assert len(finished) + len(cancelled) == len(records)
    if grace_s >= 10:  # a long grace: requests in flight finished
        assert not cancelled
        for r in finished:  # and the target wrote every chunk the record holds
            assert len(served[r["response_id"]]["chunk_written"]) == r["output_tokens"]
    else:  # a short one: those still running were cancelled, and say so
        assert cancelled
        assert all(r["error_kind"] == "cancelled" for r in cancelled)
    # nothing was sent after the signal: the plan's 60 s are far from all sent
    assert len(records) < 8 * 30


def test_second_signal_cancels_in_flight_requests_at_once(tmp_path: Path, slow_target: str) -> None:
    proc, out = _run(tmp_path, slow_target, grace_s=120.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    records = _lines(out / "requests.jsonl")
    assert any(r["status"] == "cancelled" for r in records)


def test_sigkill_keeps_finished_records_and_report_marks_the_run_killed(
    tmp_path: Path, slow_target: str
) -> None:
    proc, out = _run(tmp_path, slow_target, grace_s=5.0)
    time.sleep(1.5)
    proc.kill()
    killed_at = time.monotonic()
    proc.communicate(timeout=30)  # reaped: its pid is gone
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "running"

    records = _lines(out / "requests.jsonl")
    assert all(r["status"] == "ok" for r in records)  # whole lines only, every one finished
    finished_before = {  # the target wrote the last chunk of these a second before the kill
        k
        for k, v in served_requests(slow_target).items()
        if v["end"] and v["end"] < killed_at - 1.0
    }
    assert len(finished_before) >= 10
    assert finished_before <= {r["response_id"] for r in records}

    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "killed"
    assert not meta["validity"]["valid"]
    assert "killed" in (out / "summary.md").read_text()


@pytest.mark.parametrize("after_s", [0.15, 0.5, 1.0, 2.0, 3.0])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(
    tmp_path: Path, after_s: float
) -> None:
    """Ctrl-C at any moment of start-up (imports, planning, the reference target starting,
    probing: issue 26, finding 3): exit 130, said in one line, no traceback and no word from
    the reference target the run was starting."""
    scenario = write_scenario(tmp_path / "s.yaml", scenario_dict())
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(
        [*cmd, "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr
