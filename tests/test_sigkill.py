"""SIGKILL in a scaled-out run (issue 26): a master's workers stop with it on any platform, and a
worker killed outright makes the run invalid at once, saying so. Each local worker writes its
own records as each request ends, and marks each attempt before sending it, so a kill loses no
record of a request the target served: the master's death cancels the requests in flight, each
recorded; a worker's death leaves the marks of its requests in flight, each recorded as lost
(worker_lost). Checked against the reference target's own request log (pytest -s prints what
each kill left)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scenarios.records import WORKER_LOST
from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import ROOT, scenario_dict, served_requests, write_scenario
from tests.test_signal_phases import _meta, alive, children

MASTER_SILENT_S = 10.0  # loadgen/worker.py's (imported, it would gevent-patch this process)
# 20 ms steps, 20-40 token answers: each request in flight for 0.4-0.8 s
STEADY = EngineConfig(max_num_seqs=64, kv_cache_tokens=65536, cost=StepCost(0.020, 0.0, 0.0))


@pytest.fixture
def target() -> Iterator[str]:
    with ReferenceTargetProcess(STEADY, debug=True) as url:
        yield url


def _records(out: Path) -> list[dict[str, Any]]:
    """Every whole record line in the run folder: requests.jsonl and the workers' own files."""
    lines = []
    for path in sorted(out.glob("requests*.jsonl")):
        lines += [line for line in path.read_text().splitlines() if line.endswith("}")]
    return [json.loads(line) for line in lines]


def _wait_for(what: str, ready: object) -> None:
    deadline = time.monotonic() + 60
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.05)


def _scaled_run(
    tmp: Path, url: str, processes: int = 2, *flags: str, answers: int = 20, grace_s: float = 2
) -> tuple[subprocess.Popen[str], Path, list[int]]:
    """`run --processes N` (1: no local workers) sending for a minute answers of `answers` to
    twice that many tokens (20 ms each), once records came; the local workers' pids."""
    data = scenario_dict(
        traffic={"rate": 16, "duration_s": 60, "seed": 4, "stop_grace_s": grace_s},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 60},
            "output_tokens": {"dist": "uniform", "low": answers, "high": 2 * answers},
        },
    )
    scenario = write_scenario(tmp / "s.yaml", data)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--target", url]
    cmd += ["--processes", str(processes), "--out", str(out), "--quiet", *flags]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for("records came", lambda: len(_records(out)) >= 30 and proc.poll() is None)
    workers = sorted(children(proc.pid)) if processes > 1 else []
    assert len(workers) == (processes if processes > 1 else 0), workers
    return proc, out, workers


def _unrecorded(url: str, out: Path) -> tuple[list[dict[str, Any]], int]:
    """The requests the target served (finished or not) that have no record, and how many it
    served. Each record is in requests.jsonl alone, once. A request cancelled before its
    answer began, or in flight in a worker killed outright (recorded as lost), has a record
    without the target's id: such records stand for served requests of their max_tokens."""
    assert not list(out.glob("requests-w*.jsonl")) and not list(out.glob("sent*"))  # merged
    records = _records(out)
    named = Counter(r["response_id"] for r in records if r["response_id"])
    assert not [rid for rid, n in named.items() if n > 1]  # no record twice
    unnamed = Counter(
        r["planned_output_tokens"]
        for r in records
        if not r["response_id"] and r["error_kind"] in ("cancelled", WORKER_LOST)
    )
    served = served_requests(url)
    missing = []
    for rid, request in served.items():
        if rid in named:
            continue
        if unnamed[request["max_tokens"]]:
            unnamed[request["max_tokens"]] -= 1
        else:
            missing.append(request)
    return missing, len(served)


def _report(out: Path) -> None:
    """`surgecast report` on the killed run: it merges what the run's processes left."""
    report = subprocess.run(
        [sys.executable, "-m", "surgecast", "report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in report.stderr, report.stderr[-3000:]


def _still(url: str) -> None:
    """Nothing sends to the target any more."""
    served = len(served_requests(url))
    time.sleep(1.0)
    assert len(served_requests(url)) == served


def test_a_master_killed_outright_stops_its_workers(tmp_path: Path, target: str) -> None:
    """Its workers cancel their requests in flight, record each, and stop: every request the
    target served has a record once `surgecast report` merged the workers' files."""
    proc, out, workers = _scaled_run(tmp_path, target)
    proc.kill()
    killed = time.monotonic()
    proc.communicate(timeout=30)
    _wait_for("the workers stopped", lambda: not any(alive(pid) for pid in workers))
    stopped_s = time.monotonic() - killed
    _still(target)
    assert _meta(out)["status"] == "running"
    _report(out)
    assert _meta(out)["status"] == "killed"
    missing, total = _unrecorded(target, out)
    lost = sum(r["error_kind"] == WORKER_LOST for r in _records(out))
    print(
        f"\nmaster SIGKILL: workers gone {stopped_s:.2f} s after; {len(missing)} of {total} "
        f"lack records; {lost} recorded as lost"
    )
    assert not missing


def test_a_report_at_once_on_a_killed_masters_run_waits_for_its_workers(
    tmp_path: Path, target: str
) -> None:
    """`surgecast report` run the moment the master died, while its workers are still
    stopping (held here, stopped by SIGSTOP, then let go): it waits for them (each holds its
    file while it lives), then merges every record they wrote, each once, and none is taken
    for lost: they recorded what they had in flight themselves."""
    proc, out, workers = _scaled_run(tmp_path, target)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        proc.kill()
        proc.wait(timeout=30)  # its pipes stay open in its stopped workers
        report = subprocess.Popen(
            [sys.executable, "-m", "surgecast", "report", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3.0)  # it started, found the workers' files held, and waits
        assert report.poll() is None
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    _, err = report.communicate(timeout=120)
    assert report.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "waiting up to" in err and "not merged" not in err, err
    assert not any(alive(pid) for pid in workers)
    _still(target)
    missing, total = _unrecorded(target, out)
    records = _records(out)
    lost = sum(r["error_kind"] == WORKER_LOST for r in records)
    cancelled = sum(r["error_kind"] == "cancelled" for r in records)
    print(
        f"\nreport at once: {len(missing)} of {total} lack records, {cancelled} cancelled by "
        f"the workers, {lost} taken for lost"
    )
    assert not missing and not lost


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
    """The master sees its death at once and stops the run, invalid, saying how many requests
    it had in flight: each is recorded as lost from its mark, so every request the target
    received has exactly one record."""
    proc, out, workers = _scaled_run(tmp_path, target)
    killed = time.monotonic()
    subprocess.run(["kill", "-KILL", str(workers[0])], check=True)
    # the master, once it saw the death, stopped the run: its other worker stops
    _wait_for("the other worker stopped", lambda: not alive(workers[1]))
    noticed_s = time.monotonic() - killed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    meta = _meta(out)
    assert not meta["validity"]["valid"]
    reasons = " ".join(meta["validity"]["reasons"])
    dead = re.search(
        rf"worker \d \(pid {workers[0]}, writing (requests-w\d\.jsonl)\) was killed by SIGKILL",
        reasons,
    )
    assert dead, reasons
    said = re.search(
        rf"recorded as lost \(error_kind {WORKER_LOST}.*: (\d+) by the worker "
        rf"writing {re.escape(dead.group(1))}",
        reasons,
    )
    assert said, reasons
    assert not any(alive(pid) for pid in workers)
    _still(target)
    missing, total = _unrecorded(target, out)
    lost = [r for r in _records(out) if r["error_kind"] == WORKER_LOST]
    print(
        f"\nworker SIGKILL: the other worker stopped {noticed_s:.2f} s after; {len(missing)} of "
        f"{total} lack records; {len(lost)} recorded as lost, as the run says ({said.group(1)})"
    )
    assert not missing, missing
    assert len(lost) == int(said.group(1))
    for r in lost:
        assert r["status"] == "error" and r["http_status"] is None and r["end"] is None
        assert r["token_source"] == "none" and not r["output_tokens"]
        assert r["start"] >= r["intended_start"] - 0.05  # the time it was sent


def test_a_one_process_run_killed_outright_loses_no_record(tmp_path: Path, target: str) -> None:
    """The run's own process marks each attempt before it leaves: killed outright, the next
    `surgecast report` records what it had in flight as lost, so every request the target
    received has exactly one record, and says so in the run's reasons."""
    proc, out, _ = _scaled_run(tmp_path, target, processes=1)
    proc.kill()
    proc.communicate(timeout=30)
    _still(target)
    assert (out / "sent.jsonl").exists()
    _report(out)
    missing, total = _unrecorded(target, out)
    lost = [r for r in _records(out) if r["error_kind"] == WORKER_LOST]
    print(f"\none-process SIGKILL: {len(missing)} of {total} lack records; {len(lost)} lost")
    assert not missing, missing
    assert lost  # about 10 requests are out at any moment
    reasons = " ".join(_meta(out)["validity"]["reasons"])
    assert f"{len(lost)} by the run's own process" in reasons


def _remote_worker() -> tuple[subprocess.Popen[bytes], tuple[str, ...]]:
    """A `surgecast worker` waiting on a free loopback port (as on another host), and the
    flags of the master it waits for."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    worker = subprocess.Popen(
        [sys.executable, "-m", "surgecast", "worker", "--master-port", port],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    return worker, ("--master", "--master-bind-port", port)


def test_a_remote_worker_killed_outright_loses_no_record(tmp_path: Path, target: str) -> None:
    """A remote worker sends each attempt's mark to its master ahead of the attempt: killed
    outright, the master sees it stop answering, voids the run, and records each request it
    had out (or had not yet reported) as lost, so every request the target received has
    exactly one record."""
    worker, master = _remote_worker()
    try:
        proc, out, _ = _scaled_run(tmp_path, target, 1, *master)
        worker.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        worker.kill()
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    _still(target)
    missing, total = _unrecorded(target, out)
    lost = [r for r in _records(out) if r["error_kind"] == WORKER_LOST]
    print(f"\nremote worker SIGKILL: {len(missing)} of {total} lack records; {len(lost)} lost")
    assert not missing, missing
    assert lost  # about 10 requests are out at any moment
    assert all("a remote worker" in r["error_detail"] for r in lost)
    reasons = " ".join(_meta(out)["validity"]["reasons"])
    assert f"{len(lost)} by the remote workers" in reasons, reasons


def test_a_master_killed_outright_stops_its_remote_workers(tmp_path: Path, target: str) -> None:
    """A remote worker stops sending within MASTER_SILENT_S of its master's death (Locust's
    own heartbeat waits a minute). The master kept each attempt's mark, so once `surgecast
    report` merged the killed run, every request the target received while the master lived
    has a record (those in flight, or answered but not yet sent back, as lost); only those
    sent in the seconds before the worker noticed have none: their marks had no master."""
    worker, master = _remote_worker()
    try:
        proc, out, _ = _scaled_run(tmp_path, target, 1, *master)
        proc.kill()
        killed = time.monotonic()
        proc.wait(timeout=30)
        worker.wait(timeout=MASTER_SILENT_S + 30)
        stopped_s = time.monotonic() - killed
    finally:
        worker.kill()
    _still(target)
    _report(out)
    missing, total = _unrecorded(target, out)
    after = sum(s["received"] > killed for s in served_requests(target).values())
    lost = sum(r["error_kind"] == WORKER_LOST for r in _records(out))
    print(
        f"\nmaster SIGKILL, remote worker: it stopped {stopped_s:.1f} s after; {len(missing)} "
        f"of {total} lack records, {after} were sent after the master died; {lost} lost"
    )
    assert stopped_s < MASTER_SILENT_S + 5
    assert len(missing) <= after
