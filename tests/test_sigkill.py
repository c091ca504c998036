"""SIGKILL in a scaled-out run (issue 26): a master's workers stop with it on any platform, and a
worker killed outright makes the run invalid, saying so. What each loses is measured against
the reference target's own request log and printed (pytest -s shows it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import ROOT, scenario_dict, served_requests, write_scenario
from tests.test_signal_phases import _meta, _records, alive, children

# 20 ms steps, 20-40 token answers: each request in flight for 0.4-0.8 s
STEADY = EngineConfig(max_num_seqs=64, kv_cache_tokens=65536, cost=StepCost(0.020, 0.0, 0.0))


@pytest.fixture
def target() -> Iterator[str]:
    with ReferenceTargetProcess(STEADY, debug=True) as url:
        yield url


def _wait_for(what: str, ready: object) -> None:
    deadline = time.monotonic() + 60
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def _scaled_run(tmp: Path, url: str) -> tuple[subprocess.Popen[str], Path, list[int]]:
    """`run --processes 2` sending for a minute, once both workers have records; their pids."""
    data = scenario_dict(
        traffic={"rate": 16, "duration_s": 60, "seed": 4, "stop_grace_s": 2},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 60},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 40},
        },
    )
    scenario = write_scenario(tmp / "s.yaml", data)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--target", url]
    cmd += ["--processes", "2", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for("records came", lambda: len(_records(out)) >= 30 and proc.poll() is None)
    workers = sorted(children(proc.pid))
    assert len(workers) == 2, workers
    return proc, out, workers


def _unrecorded(url: str, out: Path) -> tuple[int, int]:
    """Requests the target served (finished or not) that have no record, and those served."""
    served = served_requests(url)
    recorded = {r["response_id"] for r in _records(out)}
    return len(set(served) - recorded), len(served)


def test_a_master_killed_outright_stops_its_workers(tmp_path: Path, target: str) -> None:
    proc, out, workers = _scaled_run(tmp_path, target)
    proc.kill()
    killed = time.monotonic()
    proc.communicate(timeout=30)
    _wait_for("the workers stopped", lambda: not any(alive(pid) for pid in workers))
    stopped_s = time.monotonic() - killed
    served = len(served_requests(target))
    time.sleep(1.0)
    assert len(served_requests(target)) == served  # nothing sends any more
    lost, total = _unrecorded(target, out)
    print(f"\nmaster SIGKILL: workers gone {stopped_s:.2f} s after; {lost} of {total} lack records")
    assert _meta(out)["status"] == "running"  # `surgecast report` marks it killed


def test_a_worker_whose_parent_dies_stops_without_the_kernels_help(tmp_path: Path) -> None:
    """Where the kernel sends no signal at a parent's death (macOS), a local worker still sees
    its master gone: it became another process's child. Its parent here starts it as a
    plain child, with no death signal, and is killed outright."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "cmd = [sys.executable, '-m', 'surgecast', 'worker', '--master-port', '1',\n"
            "       '--parent-pid', str(os.getpid())]\n"
            "print(subprocess.Popen(cmd, stderr=subprocess.DEVNULL).pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    time.sleep(1.0)  # imported and watching
    assert alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _wait_for("the orphaned worker stopped", lambda: not alive(worker))


def test_a_worker_killed_outright_voids_the_run_and_says_so(tmp_path: Path, target: str) -> None:
    proc, out, workers = _scaled_run(tmp_path, target)
    subprocess.run(["kill", "-KILL", str(workers[0])], check=True)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    noticed_s = time.monotonic() - killed
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    meta = _meta(out)
    assert not meta["validity"]["valid"]
    reasons = " ".join(meta["validity"]["reasons"])
    assert "worker" in reasons and "served with no record" in reasons, reasons
    assert not any(alive(pid) for pid in workers)
    lost, total = _unrecorded(target, out)
    print(f"\nworker SIGKILL: run ended {noticed_s:.2f} s after; {lost} of {total} lack records")
