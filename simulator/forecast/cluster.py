"""Where a forecast's independent simulations run: in this process, on a local Dask cluster (one
worker process per core by default, on loopback), or on a Dask cluster by its scheduler's
address (`--scheduler tcp://host:8786`, or Dask's own `DASK_SCHEDULER_ADDRESS`).

Dask's distributed scheduler rather than Ray (both measured on a 2-core machine, two worker
processes, 1,000 tiny tasks): a local cluster starts in 0.5-0.9 s against Ray's 3.5 s, and
installs in 30 MB of pure-Python wheels against Ray's 240 MB; per-task overhead (1.9 against
1.3 ms) is noise beside a seed's simulation (0.1-10 s). Its scheduler and workers are one
`pip install distributed` and two commands on any host, with no object store or daemon.

Dask's client runs an event loop in a thread: a process gevent has patched (one that ran a
load test, as `surgecast pipeline` does) cannot start one, and runs its forecast in a fresh
interpreter instead (surgecast/cli/run.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from simulator.forecast.footprint import available_bytes

J = TypeVar("J")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 10.0


class ClusterError(RuntimeError):
    """The scheduler cannot be reached, has no workers, or its workers run other sources."""


class Runner(Protocol):
    """Runs jobs, and keeps values several jobs use (a seed's traffic, for every fleet size a
    search tries) where they run, until told to forget them."""

    def map(
        self, fn: Callable[..., R], jobs: Sequence[Any], kept: Sequence[Any] | None = None
    ) -> list[R]:
        """`[fn(j) for j in jobs]`, or `fn(j, k)` with each job's value from `keep`, in the
        order of `jobs` (a job's exception is raised)."""
        ...

    def keep(self, fn: Callable[[J], R], arg: J, key: str) -> Any:
        """`fn(arg)`, computed once per `key` and kept: what to give `map` for it."""
        ...

    def forget(self) -> None:
        """Drop every value kept."""
        ...

    def room(self) -> tuple[int | None, str]:
        """The memory one job may use (None: unknown), and where that is, in words."""
        ...

    @property
    def parallel(self) -> int:
        """How many jobs run at once."""
        ...


class InProcess:
    parallel = 1

    def __init__(self) -> None:
        self._kept: dict[str, Any] = {}

    def map(
        self, fn: Callable[..., R], jobs: Sequence[Any], kept: Sequence[Any] | None = None
    ) -> list[R]:
        if kept is None:
            return [fn(j) for j in jobs]
        return [fn(j, k) for j, k in zip(jobs, kept, strict=True)]

    def keep(self, fn: Callable[[J], R], arg: J, key: str) -> Any:
        if key not in self._kept:
            self._kept[key] = fn(arg)
        return self._kept[key]

    def forget(self) -> None:
        self._kept.clear()

    def room(self) -> tuple[int | None, str]:
        return available_bytes(), "this machine"


class OnDask:
    def __init__(self, client: Any, local_workers: int = 0):
        """`local_workers`: the cluster's workers share this machine (0: they are elsewhere)."""
        self.client = client
        self.local_workers = local_workers
        self._homes: dict[str, str] = {}  # a kept value's key -> the worker that keeps it

    @property
    def parallel(self) -> int:
        return sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values())

    def room(self) -> tuple[int | None, str]:
        """The smallest worker's memory limit over the jobs it runs at once (its threads); on
        this machine, also its share of what is free."""
        workers = self.client.scheduler_info()["workers"].values()
        limits = [(w.get("memory_limit") or 0) // max(w["nthreads"], 1) for w in workers]
        rooms = [min(limits)] if limits and min(limits) > 0 else []
        free = available_bytes() if self.local_workers else None
        if free is not None:
            rooms.append(free // self.local_workers)
        return (min(rooms) if rooms else None), "each Dask worker"

    def keep(self, fn: Callable[[J], R], arg: J, key: str) -> Any:
        return (fn, arg, key)  # made by each worker that needs it, and kept there

    def forget(self) -> None:
        self.client.run(_forget_kept)
        self._homes.clear()

    def map(
        self, fn: Callable[..., R], jobs: Sequence[Any], kept: Sequence[Any] | None = None
    ) -> list[R]:
        if kept is None:
            futures = self.client.map(fn, jobs, pure=False)  # each job runs, none deduplicated
        else:  # each on the worker keeping its value (Dask may still move one: it makes it)
            run = partial(_with_kept, fn)
            futures = [
                self.client.submit(
                    run, job, handle, pure=False, workers=[self._home(handle[2])],
                    allow_other_workers=True,
                )
                for job, handle in zip(jobs, kept, strict=True)
            ]  # fmt: skip
        done = threading.Semaphore(0)
        for f in futures:
            f.add_done_callback(lambda _: done.release())
        try:  # wait here, not in gather: an interrupted gather leaves Dask's tasks to complain
            for _ in futures:
                done.acquire()
        except BaseException:
            self.client.cancel(futures, force=True)
            raise
        return list(self.client.gather(futures))  # the results, or the first job's exception

    def _home(self, key: str) -> str:
        """The worker that keeps `key`'s value: the workers in turn, as keys first come
        (without it, a seed's next job went to the other worker, which built its traffic
        again: each worker built every seed's)."""
        if key not in self._homes:
            workers = sorted(self.client.scheduler_info()["workers"])
            self._homes[key] = workers[len(self._homes) % len(workers)]
        return self._homes[key]


KEPT = "_surgecast_kept"  # the attribute of a Dask worker holding its kept values


def _with_kept(
    fn: Callable[[J, Any], R], job: J, handle: tuple[Callable[[Any], Any], Any, str]
) -> R:
    """On a worker: `fn(job, value)`, the value made here once and kept (not sent between
    workers: a seed's traffic is cheaper to build again than to move)."""
    from distributed import get_worker

    make, arg, key = handle
    worker = get_worker()
    kept = getattr(worker, KEPT, None)
    if kept is None:
        kept = {}
        setattr(worker, KEPT, kept)
    if key not in kept:
        kept[key] = make(arg)
    return fn(job, kept[key])


def _forget_kept(dask_worker: Any) -> None:
    setattr(dask_worker, KEPT, {})


def sources_digest() -> str:
    """What the simulator's sources are here: a worker must run the same model."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@contextmanager
def runner(workers: int, jobs: int, scheduler: str | None = None) -> Iterator[Runner]:
    """What runs the simulations: the cluster at `scheduler` (or Dask's configured
    `scheduler-address`), else a local cluster of `workers` processes (0: one per core, at
    most `jobs`, the most a map is given), or this process where that is one."""
    import dask

    address = scheduler or dask.config.get("scheduler-address", None)
    if address:
        with _remote(address) as client:
            yield OnDask(client)
        return
    n = min(workers or (os.cpu_count() or 1), jobs)
    if n <= 1:
        yield InProcess()
        return
    _refuse_gevent()
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,  # the simulations hold the GIL: one process each
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as client:
        yield OnDask(client, local_workers=n)


@contextmanager
def _remote(address: str) -> Iterator[Any]:
    _refuse_gevent()
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({e}): start one with `dask "
            f"scheduler` and its workers with `dask worker {address}`, or leave --scheduler "
            "(and DASK_SCHEDULER_ADDRESS) out to run on this machine"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(
                f"the Dask scheduler at {address} has no workers after "
                f"{CONNECT_TIMEOUT_S:g} s: start some with `dask worker {address}`"
            ) from None
        _check_sources(client, address)
        yield client


def _check_sources(client: Any, address: str) -> None:
    """Every worker runs these simulator sources (one that cannot import them, or runs
    another version, would fail each task or mix two models into one forecast)."""
    here = sources_digest()
    theirs = client.run(sources_digest, on_error="return")
    wrong = sorted(w for w, d in theirs.items() if d != here)
    if wrong:
        said = ", ".join(
            f"{w} ({d if isinstance(d, BaseException) else 'other sources'})"
            for w, d in ((w, theirs[w]) for w in wrong[:3])
        )
        raise ClusterError(
            f"{len(wrong)} of the {len(theirs)} workers of the Dask scheduler at {address} do "
            f"not run this surgecast's simulator: {said}; install this checkout on them"
        )


def _refuse_gevent() -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        raise RuntimeError("Dask cannot run in a process gevent has patched: forecast apart")
