"""Scale-out over Locust's master/worker channel: the plan split among processes sends each
request once at its planned time, and their records land in one run folder, as one process's
would. Everything over loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from scenarios.plan import build_plan
from scenarios.plan_shares import plan_digest, plan_share
from scenarios.spec import parse_scenario
from tests.conftest import LENIENT, ROOT, run_cli, scenario_dict, write_scenario


def _sessions() -> dict:
    return scenario_dict(
        traffic={"rate": 6, "duration_s": 10, "seed": 4},
        session={
            "turns": {"dist": "constant", "value": 3},
            "think_time": {"dist": "constant", "value": 0.5},
            "regenerate": 0.3,
        },
    )


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shares_cover_the_plan_once_and_keep_each_session_whole(count: int) -> None:
    plan = build_plan(parse_scenario(_sessions()))
    assert any(s.after for s in plan)  # follow-up turns to keep with their session
    shares = [plan_share(plan, i, count) for i in range(count)]
    ids = [s.id for part in shares for s in part]
    assert sorted(ids) == sorted(s.id for s in plan)  # every request, once
    owner = {s.id: i for i, part in enumerate(shares) for s in part}
    for s in plan:  # a follow-up is sent by the worker that sent the turn it follows
        if s.after is not None:
            assert owner[s.id] == owner[s.after]
    openers = [sum(s.after is None for s in part) for part in shares]
    assert max(openers) - min(openers) <= 1  # every count-th opener: the rate splits evenly
    assert shares == [plan_share(plan, i, count) for i in range(count)]  # deterministic


def test_the_digest_names_a_plan_by_its_requests_and_times() -> None:
    plan = build_plan(parse_scenario(_sessions()))
    assert plan_digest(plan) == plan_digest(build_plan(parse_scenario(_sessions())))
    moved = [dataclasses.replace(plan[0], arrival=plan[0].arrival + 1e-6), *plan[1:]]
    assert plan_digest(moved) != plan_digest(plan)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def _messiness(stderr: str) -> dict[str, float]:
    """The measured column of the run's messiness table, by row."""
    rows = [line.split("|")[1:-1] for line in stderr.splitlines() if line.startswith("| default ")]
    return {name.strip(): float(measured) for _, name, _, measured in rows}


def test_two_processes_send_what_one_sends(target_url: str, tmp_path: Path) -> None:
    data = scenario_dict(traffic={"rate": 20, "duration_s": 4, "seed": 9, **LENIENT})
    data["workload"]["messiness"] = {"case_noise": 0.5, "emoji": 0.3}
    path = write_scenario(tmp_path / "s.yaml", data)
    runs, mess = {}, {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        result = run_cli(
            "run", str(path), "--target", target_url, "--out", str(out), "--processes", str(n),
            "--no-report", timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[n] = _records(out)
        mess[n] = _messiness(result.stderr)
    one, two = runs[1], runs[2]
    assert len(two) == len(one) == len(build_plan(parse_scenario(data)))
    assert Counter(r["id"] for r in two) == Counter(r["id"] for r in one)  # each once
    planned = {r["id"]: r["intended_start"] for r in one}
    assert all(r["intended_start"] == pytest.approx(planned[r["id"]]) for r in two)
    assert all(r["status"] == "ok" for r in two)
    lateness = sorted(r["schedule_lag_s"] for r in two)
    assert lateness[int(0.95 * len(lateness))] < 0.05  # sent at their planned times
    meta = json.loads((tmp_path / "p2" / "run.json").read_text())
    generator = meta["generator"]
    assert generator["processes"] == 2 and [w["index"] for w in generator["workers"]] == [0, 1]
    assert all(w["loop_lag"]["samples"] > 0 for w in generator["workers"])
    (host,) = generator["hosts"]  # both workers and the master here: their CPU together
    assert host["host"] == socket.gethostname() and host["processes"] == 2
    assert host["cores"] == len(os.sched_getaffinity(0))
    master = generator["master"]
    assert master["host"] == host["host"] and master["cpu"]["samples"] >= 3  # a 4 s run
    workers = sum(w["cpu"]["mean"] for w in generator["workers"])
    assert host["cpu"] == pytest.approx(workers + master["cpu"]["mean"])
    assert meta["validity"]["valid"] and generator["failure"] is None
    assert not list((tmp_path / "p2").glob("sent-w*"))  # every attempt recorded: no mark kept
    # the workers' rendered messages are measured, as one process's are: each share within
    # 4 standard errors of its setting (about 80 messages)
    assert mess[2].keys() == mess[1].keys() >= {"case_noise", "emoji", "length p50 (chars)"}
    for n in (1, 2):
        assert mess[n]["case_noise"] == pytest.approx(0.5, abs=0.23), n
        assert mess[n]["emoji"] == pytest.approx(0.3, abs=0.21), n


def test_a_remote_worker_runs_the_masters_share(target_url: str, tmp_path: Path) -> None:
    """--master and `surgecast worker`, as on two hosts (here both on loopback)."""
    port = "5599"
    data = scenario_dict(traffic={"rate": 10, "duration_s": 3, "seed": 2, **LENIENT})
    path = write_scenario(tmp_path / "s.yaml", data)
    worker = subprocess.Popen(
        [sys.executable, "-m", "surgecast", "worker", "--master-port", port],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = run_cli(
            "run", str(path), "--target", target_url, "--out", str(tmp_path / "run"),
            "--master", "--master-bind-port", port, "--no-report", timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    records = _records(tmp_path / "run")
    assert len(records) == len(build_plan(parse_scenario(data)))
    assert not list((tmp_path / "run").glob("sent*"))  # every mark it sent had its record
    assert "1 remote workers" in result.stderr or "waiting for 1 remote" in result.stderr


def test_no_worker_connecting_is_an_invalid_run(target_url: str, tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "s.yaml", scenario_dict())
    result = run_cli(
        "run", str(path), "--target", target_url, "--out", str(tmp_path / "run"), "--master",
        "--master-bind-port", "5598", "--expect-workers-max-wait", "1", "--no-report",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    assert "0 of 1 workers connected within 1 s" in result.stderr
    assert "surgecast worker --master-host" in result.stderr
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert not meta["validity"]["valid"] and meta["status"] == "finished"


def test_the_masters_progress_counts_sends_before_any_record(
    target_url: str, tmp_path: Path
) -> None:
    """Workers report what they sent while their requests still stream, not only with records."""
    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 1.5, "seed": 3, **LENIENT},
        workload={
            "prompt_tokens": {"dist": "constant", "value": 20},
            "output_tokens": {"dist": "constant", "value": 300},  # about 3 s a request
        },
    )
    path = write_scenario(tmp_path / "s.yaml", data)
    result = run_cli(
        "run", str(path), "--target", target_url, "--out", str(tmp_path / "run"),
        "--processes", "2", "--no-report", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = next(line for line in result.stderr.splitlines() if line.startswith("["))
    said_at = float(first[1:].split("s]")[0])  # on the plan's clock, as records are
    sent = int(first.split("sent ")[1].split("/")[0])
    records = _records(tmp_path / "run")
    assert min(r["end"] for r in records) > said_at and "done 0" in first  # none came back
    # the counters are at most one flush (0.25 s) old
    assert 0 < sum(r["start"] <= said_at - 0.5 for r in records) <= sent, first
    assert sent <= sum(r["start"] <= said_at for r in records), first


def test_a_master_killed_outright_takes_its_local_workers_with_it(tmp_path: Path) -> None:
    """SIGKILL of `run --processes 2` (issue 26, finding 2): its workers, in sessions of their
    own, kept sending for up to a minute; now the kernel stops them with their master, so the
    target's own log stops growing within the grace a worker gives its requests in flight."""
    import signal
    import time

    from simulator.engine.core import EngineConfig, StepCost
    from targets.reference_launch import ReferenceTargetProcess
    from tests.conftest import served_log

    data = scenario_dict(
        traffic={"rate": 20, "duration_s": 60, "seed": 2, "stop_grace_s": 1, **LENIENT}
    )
    path = write_scenario(tmp_path / "s.yaml", data)
    engine = EngineConfig(max_num_seqs=64, cost=StepCost(0.005, 0.0, 0.0))
    with ReferenceTargetProcess(engine, debug=True) as url:
        cmd = [sys.executable, "-m", "surgecast", "run", str(path), "--target", url]
        cmd += ["--processes", "2", "--out", str(tmp_path / "run"), "--quiet"]
        master = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(served_log(url)) < 40:  # both workers sending
            assert master.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        master.send_signal(signal.SIGKILL)
        master.wait()
        time.sleep(3.0)  # the workers' SIGTERM, their 1 s of grace, and some
        served = len(served_log(url))
        time.sleep(3.0)
        assert len(served_log(url)) == served  # nothing sends any more (20 req/s planned)
