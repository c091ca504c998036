"""SIGINT and SIGTERM at each step of `surgecast run` (issue 26): start-up, the target starting,
probing, sending, summarising, writing the report. Each test finds its step from the process
itself (its stop handler installed, run.json's `step`, the summary written); the steps that
pass too fast to hit are held there by SURGECAST_TEST_HOLD until the signal comes. Every one:
exit 130 or 143, one line and no traceback, run.json marked, no child left, and a record for
every request the target served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import ROOT, run_cli, scenario_dict, served_requests, write_scenario

FAST = EngineConfig(max_num_seqs=64, kv_cache_tokens=65536, cost=StepCost(0.005, 0.0, 0.0))
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
IDS = ["SIGINT", "SIGTERM"]
STEP_WORDS = {  # how run.json's reason names each step
    "target": "while the target started",
    "probe": "while probing",
    "send": "in the send step",
    "summarise": "while summarising",
}


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    """One reference target for the file; each test takes the requests it served since."""
    with ReferenceTargetProcess(FAST, debug=True) as url:
        yield url


def _served_since(url: str, before: set[str]) -> set[str]:
    return set(served_requests(url)) - before


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / "requests.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _meta(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / "run.json").read_text()))
    except (OSError, ValueError):  # not made yet
        return {}


def _wait(proc: subprocess.Popen[str], what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: {proc.stderr}")
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def handles_stop_signals(pid: int) -> bool:
    """The process has its own SIGTERM handler (Linux's /proc: surgecast's entry installs it
    first thing; SIGINT's Python installs for any program)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if entry.name.isdigit() and int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _child_env(measured: bool) -> dict[str, str]:
    """This test's environment for a child; unless `measured`, without coverage's subprocess
    hook, whose own SIGTERM handler (pyproject.toml: sigterm) would precede surgecast's at
    start-up and so tell a readiness check too early that surgecast's handler is in."""
    coverage = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    dropped = {"SURGECAST_TEST_HOLD", *(() if measured else coverage)}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _start(
    tmp: Path, target: str | None, hold: str | None = None, measured: bool = True, **traffic: Any
) -> tuple[subprocess.Popen[str], Path]:
    """`surgecast run` in a child (`measured`: see `_child_env`)."""
    data = scenario_dict(traffic={"rate": 4, "duration_s": 2, "seed": 5, **traffic})
    scenario = write_scenario(tmp / "s.yaml", data)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--out", str(out), "--quiet"]
    env = _child_env(measured)
    if hold:
        env["SURGECAST_TEST_HOLD"] = hold
    proc = subprocess.Popen(
        [*cmd, *(["--target", target] if target else [])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, out


def _stopped(proc: subprocess.Popen[str], signum: int, code: int) -> str:
    """Send `signum`; the exit it must give, said in one line with no traceback."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "interrupted" in line or "terminated" in line]
    return err


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=IDS)
def test_start_up(tmp_path: Path, target: str, signum: int, code: int) -> None:
    """At the first instant surgecast handles the signal (its command line still importing):
    nothing sent, no folder."""
    before = set(served_requests(target))
    proc, out = _start(tmp_path, target, measured=False)
    _wait(proc, "its stop handler was installed", lambda: handles_stop_signals(proc.pid))
    _stopped(proc, signum, code)
    assert not _served_since(target, before)
    assert not _records(out)


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=IDS)
def test_target_starting(tmp_path: Path, signum: int, code: int) -> None:
    """While the reference target surgecast launched starts: it is stopped too."""
    proc, out = _start(tmp_path, None)
    started: set[int] = set()

    def starting() -> bool:
        started.update(children(proc.pid))
        return _meta(out).get("step") == "target" and bool(started)

    _wait(proc, "the target was starting", starting)
    _stopped(proc, signum, code)
    meta = _meta(out)
    assert meta["status"] == "interrupted"
    reason = meta["validity"]["reasons"][0]
    assert signal.Signals(signum).name in reason and "nothing was sent" in reason
    assert meta["step"] in ("target", "probe")  # where the signal found it
    assert not [pid for pid in started if alive(pid)]
    assert not _records(out)


@pytest.mark.parametrize("step", ["target", "probe", "send", "summarise"])
@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=IDS)
def test_each_step(tmp_path: Path, target: str, step: str, signum: int, code: int) -> None:
    """Held in a step (run.json names it): run.json says the run was stopped there, and every
    request the target served has its record."""
    before = set(served_requests(target))
    proc, out = _start(tmp_path, target, hold=step)
    _wait(proc, f"it was in its {step} step", lambda: _meta(out).get("step") == step)
    _stopped(proc, signum, code)
    meta = _meta(out)
    assert meta["status"] == "interrupted" and meta["step"] == step
    reason = meta["validity"]["reasons"][0]
    assert signal.Signals(signum).name in reason and STEP_WORDS[step] in reason
    served = _served_since(target, before)
    records = _records(out)
    assert {r["response_id"] for r in records} == served
    assert bool(records) == (step == "summarise")  # the plan was all sent only then


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=IDS)
def test_report_step(tmp_path: Path, target: str, signum: int, code: int) -> None:
    """The run judged, its report being written: the verdict stays, run.json says the report
    was interrupted, and no half-written report is left."""
    before = set(served_requests(target))
    proc, out = _start(tmp_path, target, hold="report")
    _wait(proc, "it was judged", lambda: _meta(out).get("status") == "finished")
    # from the verdict to the report step's hold is a few lines (a CI run signalled between:
    # run.json said the run was interrupted as it ended); held there, it waits for the signal
    time.sleep(1.0)
    _stopped(proc, signum, code)
    meta = _meta(out)
    assert meta["status"] == "interrupted" and meta["step"] == "report"
    assert meta["validity"]["valid"]  # the run itself is whole
    assert any("while writing the report" in w for w in meta["warnings"])
    assert not (out / "index.html").exists()
    assert not list(out.glob(".*.tmp"))
    assert {r["response_id"] for r in _records(out)} == _served_since(target, before)

    written = run_cli("report", str(out))  # what the note says to do
    assert written.returncode == 0, written.stderr[-3000:]
    assert (out / "index.html").read_text().rstrip().endswith("</html>")


@pytest.mark.parametrize("after_s", [0.0, 0.3, 0.8, 1.5])
def test_report_command_leaves_whole_files_or_none(
    tmp_path: Path, target: str, after_s: float
) -> None:
    """`surgecast report` stopped at any moment: each output file is there whole or not at all
    (written beside and renamed), and nothing half-written is left beside them."""
    proc, out = _start(tmp_path, target, duration_s=3)
    assert proc.wait(timeout=120) == 0, proc.communicate()[1][-3000:]
    for name in ("index.html", "summary.md"):
        (out / name).unlink()
    report = subprocess.Popen(
        [sys.executable, "-m", "surgecast", "report", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(measured=False),  # signalled from its start-up
    )
    _wait(report, "its stop handler was installed", lambda: handles_stop_signals(report.pid))
    time.sleep(after_s)  # a spread of moments; every one must leave whole files
    report.send_signal(signal.SIGINT)
    _, err = report.communicate(timeout=120)
    assert report.returncode in (0, 130), err[-3000:]  # it may have finished first
    assert "Traceback" not in err, err[-3000:]
    assert not list(out.glob(".*.tmp"))
    if (out / "index.html").exists():
        assert (out / "index.html").read_text().rstrip().endswith("</html>")
    json.loads((out / "run.json").read_text())


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        below = children(todo.pop())
        found |= below
        todo += below
    return found


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=IDS)
def test_a_pipeline_stopped_in_its_forecast(tmp_path: Path, signum: int, code: int) -> None:
    """The forecast runs in a process of its own with its Dask workers (gevent patched the
    pipeline's): SIGINT to the whole process group (a terminal's Ctrl-C) or SIGTERM to the
    pipeline stops them all, in one line, no traceback, what was written before kept."""
    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 2, "seed": 5},
        forecast={"seeds": 2, "duration_s": 600, "workers": 2, "scales": [1, 10, 100]},
    )
    scenario = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "surgecast", "pipeline", str(scenario), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_child_env(measured=True), start_new_session=True,
    )  # fmt: skip
    _wait(proc, "it forecast", lambda: (out / "backtest.json").exists())
    _wait(proc, "its forecast had workers", lambda: len(_descendants(proc.pid)) >= 3)
    started = _descendants(proc.pid)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "never retrieved" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "interrupted" in line or "terminated" in line]
    deadline = time.monotonic() + 30
    while any(alive(p) for p in started):
        assert time.monotonic() < deadline, "the forecast's processes outlived the pipeline"
        time.sleep(0.1)
    assert (out / "calibration.json").exists() and not (out / "forecast.json").exists()
