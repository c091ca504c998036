"""The forecast on Dask: a local cluster of worker processes, and a real cluster (`dask
scheduler`, `dask worker`) on loopback by its address, give the in-process forecast's results;
a cluster that cannot run it is refused with what to do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from simulator.forecast.cluster import ClusterError, runner, sources_digest
from surgecast.contracts import write_calibration
from tests.conftest import ROOT, run_cli, write_scenario
from tests.test_forecast import known, scenario_dict


def _pid(seconds: float) -> int:
    time.sleep(seconds)  # long enough that one worker cannot take every job
    return os.getpid()


def test_a_local_cluster_spreads_the_jobs_over_its_workers() -> None:
    with runner(workers=2, jobs=8) as r:
        pids = r.map(_pid, [0.2] * 8)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    with runner(workers=1, jobs=8) as r:  # one worker: this process, no cluster
        assert set(r.map(_pid, [0.0] * 3)) == {os.getpid()}


def _made(key: str) -> tuple[str, int, str]:
    return key, os.getpid(), uuid.uuid4().hex  # one of a kind each time it is made


def _use(seconds: float, kept: tuple[str, int, str]) -> tuple[str, int, str]:
    time.sleep(seconds)
    return kept


def test_a_kept_value_is_made_once_on_the_worker_its_jobs_go_to() -> None:
    """A seed's traffic, kept for every fleet size a search tries, is made by one worker, and
    that seed's later jobs go there: before, a seed's next job could go to the other worker,
    which made the traffic again (at x1000 in the demo, each worker made every seed's)."""
    with runner(workers=2, jobs=3) as r:
        handles = [r.keep(_made, f"seed {i}", f"seed {i}") for i in range(3)]
        rounds = [r.map(_use, [0.2] * 3, handles) for _ in range(4)]
    assert all(got == rounds[0] for got in rounds), rounds  # each made once, and kept
    assert len({pid for _, pid, _ in rounds[0]}) == 2  # spread over both workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dask_cluster(workers: int, cwd: Path = ROOT, *flags: str) -> Iterator[str]:
    """`dask scheduler` and `dask worker` processes on loopback, the workers importing what
    `cwd` holds first (`python -m` puts it first on the path); yields the address."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [*dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1", *flags],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _forecast_cli(
    tmp_path: Path, name: str, *flags: str, workers: int = 0, scales: str = "2,6"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 20, "seed": 3},
        slos={"ttft": "p(95) < 300"},
        forecast={"seeds": 3, "duration_s": 30, "workers": workers},
    )
    path = write_scenario(tmp_path / f"{name}.yaml", data)
    cal = tmp_path / "cal.json"
    if not cal.exists():
        write_calibration(cal, known())
    out = tmp_path / f"{name}.json"
    args = ["forecast", str(path), "--calibration", str(cal), "--scales", scales]
    return run_cli(*args, "--json", str(out), *flags), out


def _forecast(tmp_path: Path, name: str, *flags: str, workers: int = 0) -> dict[str, object]:
    result, out = _forecast_cli(tmp_path, name, *flags, workers=workers)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_a_cluster_by_address_gives_the_local_forecast(tmp_path: Path) -> None:
    """The same forecast in this process, on a local cluster of two workers, and on a Dask
    cluster of two workers reached by its address: the same fleets and figures."""
    alone = _forecast(tmp_path, "alone", workers=1)
    local = _forecast(tmp_path, "local", workers=2)
    with dask_cluster(2) as address:
        remote = _forecast(tmp_path, "remote", "--scheduler", address)
    assert alone == local == remote
    assert alone["points"]


def test_an_unreachable_scheduler_is_refused_with_what_to_do(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    write_calibration(tmp_path / "cal.json", known())
    path = write_scenario(tmp_path / "s.yaml", scenario_dict())
    args = ["--calibration", str(tmp_path / "cal.json"), "--scheduler", address]
    result = run_cli("forecast", str(path), *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
    assert "dask scheduler" in result.stderr and "Traceback" not in result.stderr


def test_workers_running_other_sources_are_refused(tmp_path: Path) -> None:
    """A worker that imports another version of the simulator would mix two models into one
    forecast: a worker started over a copy with one file changed is named and refused."""
    copy = tmp_path / "other"
    shutil.copytree(ROOT / "simulator", copy / "simulator", ignore=shutil.ignore_patterns("*.nb*"))
    changed = copy / "simulator" / "engine" / "scheduler.py"
    changed.write_text(changed.read_text() + "\n# another version\n")
    code = "from simulator.forecast.cluster import sources_digest; print(sources_digest())"
    theirs = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True)
    assert theirs.stdout.strip() != sources_digest()  # the copy is what a worker imports
    refused = r"1 of the 1 workers of the Dask scheduler at .* do not run this surgecast"
    with (
        dask_cluster(1, cwd=copy) as address,
        pytest.raises(ClusterError, match=refused),
        runner(workers=0, jobs=4, scheduler=address),
    ):
        pass


def test_a_fleet_too_large_for_a_workers_memory_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    """Workers limited to 300 MB: x1 fits, x10000 (1.2 million requests a seed, about 1.6 GiB)
    is refused with the sizes and what to do, before any fleet is simulated."""
    with dask_cluster(1, ROOT, "--memory-limit", "300MB") as address:
        fits, _ = _forecast_cli(tmp_path, "fits", "--scheduler", address, scales="1")
        assert fits.returncode == 0, fits.stderr[-3000:]
        result, out = _forecast_cli(tmp_path, "big", "--scheduler", address, scales="10000")
    assert result.returncode == 2, result.stderr[-3000:]
    said = result.stderr
    sizes = "1,246,667 requests over 10,000 replicas needs about 1.6 GiB"
    assert f"{sizes}, and each Dask worker has 0.3 GiB" in said, said[-2000:]
    assert "--scheduler" in said and "Traceback" not in said
    assert "x10000:" not in said and not out.exists()  # refused before its search began
