"""A process pool with no threads in the calling process.

`concurrent.futures.ProcessPoolExecutor` runs a manager thread, which deadlocks once gevent has
patched `threading` (as it has after a load run in the same process). Here each spawned worker
serves one job at a time over its own pipe, and the caller waits on the pipes directly.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class WorkerError(RuntimeError):
    """A job raised in a worker (the worker's traceback is the message) or a worker died."""


def _serve(jobs: Connection, results: Connection) -> None:
    while True:
        task = jobs.recv()
        if task is None:
            return
        fn, job = task
        try:
            results.send((True, fn(job)))
        except Exception:  # handed to the caller, which raises it
            results.send((False, traceback.format_exc()))


class ProcessPool:
    """`with ProcessPool(4) as pool: results = pool.map(fn, jobs)` (fn and jobs picklable)."""

    def __init__(self, workers: int | None = None):
        ctx = multiprocessing.get_context("spawn")
        self._to: dict[Connection, Connection] = {}  # a worker's results pipe -> its jobs pipe
        self._procs: list[Any] = []
        for _ in range(max(1, workers or os.cpu_count() or 1)):
            # one-way OS pipes, not socket pairs: gevent's patched sockets are non-blocking
            job_in, job_out = ctx.Pipe(duplex=False)
            result_in, result_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_serve, args=(job_in, result_out), daemon=True)
            proc.start()
            job_in.close()
            result_out.close()
            self._to[result_in] = job_out
            self._procs.append(proc)

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        """`[fn(j) for j in jobs]`, computed in the workers, in the order of `jobs`."""
        results: list[Any] = [None] * len(jobs)
        pending = deque(enumerate(jobs))
        idle = list(self._to)
        busy: dict[Connection, int] = {}
        while pending or busy:
            while idle and pending:
                conn = idle.pop()
                index, job = pending.popleft()
                self._to[conn].send((fn, job))
                busy[conn] = index
            for ready in wait(list(busy)):
                assert isinstance(ready, Connection)
                try:
                    ok, value = ready.recv()
                except EOFError:
                    raise WorkerError("a forecast worker process died") from None
                index = busy.pop(ready)
                if not ok:
                    raise WorkerError(value)
                results[index] = value
                idle.append(ready)
        return results

    def close(self) -> None:
        for results, jobs in self._to.items():
            with contextlib.suppress(OSError):  # already gone
                jobs.send(None)
            jobs.close()
            results.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
