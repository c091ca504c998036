"""One open-loop plan sent by several generator processes, on one host or many, over Locust's
own master/worker channel (ZeroMQ).

The master holds the run folder. Each worker builds the same plan from the scenario the master
sends (its seed makes it identical; a digest checks it), keeps its share (every N-th opening
request by arrival, with every later turn that follows from it), and sends it at the planned
times against one clock: the master fixes the plan's zero on the wall clock once every worker
is ready. A local worker (one the master started) appends each record to its own file in the
run folder as it ends (`scenarios.record_files`, merged into `requests.jsonl` at the end); a
remote one's go back to the master in batches and are appended to `requests.jsonl`, and the
mark of each attempt it sends comes ahead of it, kept in `sent-remote.jsonl`. The master
watches its local workers' processes: one that dies voids the run at once. A worker gone in
any way leaves marks without records: the merge records each such request as lost. Each
worker's loop lag and CPU come back with its last message, with a share of the user messages
it rendered (before and after messiness) for the run's messiness table. Locust's stats reach
the master as in any Locust run.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gevent
from gevent.event import Event
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner

from loadgen.client import Endpoint
from loadgen.cpu import CpuUse
from loadgen.looplag import LoopLag
from loadgen.runner import STOP_SIGNALS, Stopped
from loadgen.sizing import SizedPrompts
from scenarios.plan import RequestSpec
from scenarios.plan_shares import plan_digest
from scenarios.record_files import SentMarks, remote_marks_file, worker_file
from scenarios.records import WORKER_LOST
from scenarios.scrub import PromptStore
from scenarios.spec import Scenario

ASSIGN = "surgecast_assign"  # master -> worker: the run, its share and the scenario
READY = "surgecast_ready"  # worker -> master: plan built, share taken
GO = "surgecast_go"  # master -> worker: the plan's zero on the wall clock
RECORDS = "surgecast_records"  # worker -> master: finished records and progress counters
DONE = "surgecast_done"  # worker -> master: its last records, loop lag, CPU, rendered texts
MARK = "surgecast_mark"  # remote worker -> master: an attempt about to be sent (a SentMark)
STOP = "surgecast_stop"  # master -> worker: a signal stopped the run
BATCH = 200  # records per message at most
FLUSH_S = 0.25  # and at least this often (the counters alone, when no record finished)
LEAD_S = 0.5  # from GO to the plan's zero: time for the message to reach every worker
LAST_WORDS_S = 1.0  # a local worker gone without its DONE: time for one in transit to come


class DistributedError(Exception):
    """The workers could not run the plan (none came, one died, plans differ)."""


@dataclass
class WorkerReport:
    """What one worker said of itself."""

    index: int
    sent: int = 0
    done: int = 0
    in_flight: int = 0
    errors: int = 0
    skipped: int = 0
    finished: bool = False
    settled: bool = False  # every attempt it sent has its record
    error: str | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    stopped: int | None = None  # the signal that stopped it
    texts: dict[str, list[list[str]]] = field(default_factory=dict)  # persona -> (clean, messy)
    pid: int | None = None  # a worker on the master's host: its process


class Master:
    """The run's side of the channel: gathers workers, hands out shares, writes records."""

    def __init__(self, bind_host: str, bind_port: int, stream: IO[str]):
        self.environment = Environment(user_classes=[])
        self.runner: MasterRunner = self.environment.create_master_runner(bind_host, bind_port)
        self.stream = stream
        self.reports: dict[int, WorkerReport] = {}
        self._ready: set[int] = set()
        self._changed = Event()
        self.stopped: Stopped | None = None
        self._assigned: list[str] = []  # workers handed a share: a signal is passed on to them
        self.zero = math.inf  # the plan's zero on the wall clock, once GO is sent
        self._children: list[subprocess.Popen[bytes]] = []  # the local workers' processes
        self._records: Path | None = None  # beside it, local worker n's own file (worker_file)
        self._gone: dict[int, float] = {}  # pid -> when its process was first seen ended
        self._marks: SentMarks | None = None  # the remote workers' (remote_marks_file)
        self.cpu = CpuUse(time.monotonic)  # its own, while the workers send: records cost it
        for kind, handler in (
            (READY, self._on_ready),
            (RECORDS, self._on_records),
            (DONE, self._on_done),
            (MARK, self._on_mark),
        ):
            self.runner.register_message(kind, handler)

    def watch(self, children: list[subprocess.Popen[bytes]], records: Path | None) -> None:
        """Watch these local worker processes (child n writing `worker_file(records, n)`): one
        that ends before its share is done voids the run at once, not after Locust's heartbeat
        timeout."""
        self._children = children
        self._records = records

    def wait_for_workers(self, count: int, timeout_s: float) -> list[str]:
        """The ids of `count` connected workers, in Locust's index order."""
        deadline = time.monotonic() + timeout_s
        while len(self.runner.clients.ready) < count:
            self._check_stopped()
            for child in self._children:
                if child.poll() is not None:
                    raise DistributedError(
                        f"a local worker process (pid {child.pid}) {_ended(child.returncode)} "
                        "before it connected"
                    )
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"{len(self.runner.clients.ready)} of {count} workers connected within "
                    f"{timeout_s:g} s: start them with `surgecast worker --master-host HOST`"
                )
            gevent.sleep(0.05)
        clients = self.runner.clients.ready[:count]
        return [c.id for c in sorted(clients, key=lambda c: self.runner.get_worker_index(c.id))]

    def run(
        self,
        workers: list[str],
        assignment: dict[str, Any],
        progress: Callable[[float], None] | None,
        ready_timeout_s: float,
        end_timeout_s: float,
    ) -> None:
        """Hand out the shares, start every worker at one time (`zero`), write records until
        each is done."""
        count = len(workers)
        self.reports = {i: WorkerReport(i) for i in range(count)}
        self._assigned = workers
        for i, client in enumerate(workers):
            data = {**assignment, "index": i, "count": count}
            self.runner.send_message(ASSIGN, data, client_id=client)
        self._wait(lambda: len(self._ready) == count, ready_timeout_s, workers, "ready")
        self._check_stopped()
        self.zero = time.time() + LEAD_S
        for client in workers:
            self.runner.send_message(GO, {"zero": self.zero}, client_id=client)
        ticker = gevent.spawn(self._tick, progress) if progress is not None else None
        sampler = gevent.spawn(self._sample_cpu)
        try:
            self._wait(
                lambda: all(r.finished for r in self.reports.values()),
                end_timeout_s + LEAD_S,
                workers,
                "done",
            )
        finally:
            sampler.kill()
            if ticker is not None:
                ticker.kill()
        failed = [r for r in self.reports.values() if r.error]
        if failed:
            raise DistributedError("; ".join(f"worker {r.index}: {r.error}" for r in failed))

    @property
    def started(self) -> bool:
        """The workers have the plan's zero: sending has begun."""
        return math.isfinite(self.zero)

    def quit(self) -> None:
        """Let the workers go, and close the remote workers' marks: deleted when every worker
        said each attempt it sent has its record, else left for the merge to record the
        requests without one as lost."""
        self.runner.quit()
        if self._marks is not None:
            reports = self.reports.values()
            self._marks.close(settled=bool(reports) and all(r.settled for r in reports))

    def progress_line(self, elapsed_s: float, planned: int) -> str:
        r = self.reports.values()
        return (
            f"[{elapsed_s:6.1f}s] sent {sum(x.sent for x in r)}/{planned}  in flight "
            f"{sum(x.in_flight for x in r):3d}  done {sum(x.done for x in r)}  errors "
            f"{sum(x.errors for x in r)}  ({len(self.reports)} processes)"
        )

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.reports.values())

    def texts(self) -> dict[str, list[tuple[str, str]]]:
        """The user messages the workers rendered, (clean, messy) by persona, worker by worker."""
        out: dict[str, list[tuple[str, str]]] = {}
        for index in sorted(self.reports):
            for persona, pairs in self.reports[index].texts.items():
                out.setdefault(persona, []).extend((clean, messy) for clean, messy in pairs)
        return out

    def generator(self, failure: str | None) -> dict[str, Any]:
        """How well the workers held the plan: the worst one's loop lag and CPU, each one's
        beside, the master's CPU, and each host's over its processes (run.json's
        `generator`)."""
        each = [{"index": r.index, **r.generator} for r in self.reports.values() if r.generator]
        host, cpu = socket.gethostname(), self.cpu.summary()
        idle = {
            "loop_lag": LoopLag(time.monotonic).summary(),
            "cpu": CpuUse(time.monotonic).summary(),
        }
        return {
            "loop_lag": max(each or [idle], key=lambda g: g["loop_lag"]["p99_ms"])["loop_lag"],
            "cpu": max(each or [idle], key=lambda g: g["cpu"]["mean"])["cpu"],
            "processes": max(1, len(self.reports)),
            "workers": sorted(each, key=lambda g: g["index"]),
            "master": {"host": host, "cpu": cpu},
            "hosts": _host_cpu(each, host, cpu["mean"]),
            "failure": failure,
        }

    def stopping_signal(self) -> Stopped | None:
        """The signal that stopped the run (a worker's own, or one the master passed on)."""
        signums = [r.stopped for r in self.reports.values() if r.stopped]
        if self.stopped is not None:
            return self.stopped
        return Stopped(signums[0], 0.0) if signums else None

    def _wait(
        self, condition: Callable[[], bool], timeout_s: float, workers: list[str], what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            lost = [
                i
                for i, c in enumerate(workers)
                if c not in self.runner.clients or self.runner.clients[c].state == STATE_MISSING
            ]
            unfinished = [i for i in lost if not self.reports[i].finished]
            dead = self._dead_workers()
            if dead:
                raise DistributedError(self._death_words(dead, what))
            if unfinished:
                raise DistributedError(
                    f"worker {', '.join(map(str, unfinished))} stopped answering before it was "
                    f"{what}: the records it sent are kept; requests it had in flight or had "
                    "not yet reported (up to a quarter second's) were served with no record, "
                    "and the rest of its share is lost"
                )
            if time.monotonic() > deadline:
                raise DistributedError(f"the workers were not all {what} within {timeout_s:g} s")
            if not self.started:
                self._check_stopped()
            self._changed.clear()
            self._changed.wait(0.5)

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the run: before sending began, at once; after, every worker
        stops sending and gives its requests in flight their grace (a second signal cancels
        them), and their records still come."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = gevent.get_hub().loop

        def handler(signum: int, _frame: object) -> None:
            loop.run_callback(self.stop, signum)

        handlers = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, previous in handlers.items():
                signal.signal(signum, previous)

    def stop(self, signum: int) -> None:
        if self.stopped is None:
            self.stopped = Stopped(signum, max(0.0, time.time() - self.zero))
            print(f"\n{self.stopped.name}: stopping every worker", file=sys.stderr, flush=True)
        for client in self._assigned:
            self.runner.send_message(STOP, {"signum": signum}, client_id=client)
        self._changed.set()

    def _check_stopped(self) -> None:
        if self.stopped is not None:
            raise DistributedError(f"{self.stopped.name} before sending began: nothing was sent")

    def _sample_cpu(self) -> None:
        gevent.sleep(max(0.0, self.zero - time.time()))
        self.cpu = CpuUse(time.monotonic)  # from the plan's zero
        while True:
            gevent.sleep(1.0)
            self.cpu.sample()

    def _tick(self, progress: Callable[[float], None]) -> None:
        while True:
            gevent.sleep(2.0)
            progress(time.time() - self.zero)

    def _dead_workers(self) -> list[int]:
        """The local workers whose process ended, LAST_WORDS_S ago or more, with their share
        not done."""
        now = time.monotonic()
        ended = {c.pid for c in self._children if c.poll() is not None}
        for pid in ended:
            self._gone.setdefault(pid, now)
        return [
            r.index
            for r in self.reports.values()
            if not r.finished and r.pid in ended and now - self._gone[r.pid] >= LAST_WORDS_S
        ]

    def _death_words(self, dead: list[int], what: str) -> str:
        """Why the run is void: which local workers died, and what each took with it (the run's
        merge records its requests in flight as lost, from its marks, once all have stopped)."""
        codes = {c.pid: c.returncode for c in self._children}
        files = {c.pid: n for n, c in enumerate(self._children)}
        words = []
        for i in dead:
            r = self.reports[i]
            n = files.get(r.pid or -1)
            who = f"worker {i} (pid {r.pid})"
            fate = f"({r.in_flight} at that report) were served with no record"
            if self._records is not None and n is not None:
                who = f"worker {i} (pid {r.pid}, writing {worker_file(self._records, n).name})"
                fate = f"are recorded as lost from its marks (error_kind {WORKER_LOST}, counted "
                fate += "after, by its file)"
            words.append(
                f"{who} {_ended(codes.get(r.pid or -1))} before it was {what}: the records it "
                f"wrote are kept ({r.done} at its last report, a quarter second before); the "
                f"requests it had in flight at its death {fate}, and the rest of its share is lost"
            )
        return "; ".join(words)

    def _on_ready(self, environment: Environment, msg: Any) -> None:
        index = int(msg.data["index"])
        self._ready.add(index)
        if msg.data.get("host") == socket.gethostname() and index in self.reports:
            self.reports[index].pid = int(msg.data["pid"])
        self._changed.set()

    def _on_records(self, environment: Environment, msg: Any) -> None:
        self._take(msg.data)

    def _on_done(self, environment: Environment, msg: Any) -> None:
        report = self._take(msg.data)
        report.finished = True
        report.settled = bool(msg.data.get("settled"))
        report.error = msg.data.get("error")
        report.generator = msg.data.get("generator") or {}
        report.stopped = msg.data.get("stopped")
        report.texts = msg.data.get("texts") or {}
        self._changed.set()

    def _on_mark(self, environment: Environment, msg: Any) -> None:
        if self._marks is None:
            if self._records is None:
                return  # no run folder (a run with no records file): nothing to recover into
            self._marks = SentMarks(remote_marks_file(self._records))
        self._marks.write_line(str(msg.data["line"]))

    def _take(self, data: dict[str, Any]) -> WorkerReport:
        lines = data.get("lines") or []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        report = self.reports[int(data["index"])]
        for name in ("sent", "done", "in_flight", "errors", "skipped"):
            setattr(report, name, int(data.get(name, getattr(report, name))))
        return report


def _ended(returncode: int | None) -> str:
    """How a process ended, in words."""
    if returncode is not None and returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _host_cpu(
    workers: list[dict[str, Any]], master_host: str, master_cpu: float
) -> list[dict[str, Any]]:
    """Per host, the CPU its workers (and the master, on its host) used together, in cores
    (mean), beside the cores they may run on: processes that share a core each look idle
    while the core is full."""
    hosts: dict[str, dict[str, Any]] = {}
    for w in workers:
        if "host" not in w:
            continue
        h = hosts.setdefault(w["host"], {"host": w["host"], "processes": 0, "cpu": 0.0, "cores": 1})
        h["processes"] += 1
        h["cpu"] += w["cpu"]["mean"]
        h["cores"] = max(h["cores"], int(w["cores"]))
    if master_host in hosts:
        hosts[master_host]["cpu"] += master_cpu
    return sorted(hosts.values(), key=lambda h: h["host"])


def assignment(
    plan: list[RequestSpec], scenario: Scenario, endpoint: Endpoint, prompts: SizedPrompts
) -> dict[str, Any]:
    """What every worker needs to build the master's plan and send its share like the master
    would: the scenario, the target, the prompt sizing learned, the run's key for hashing
    stored prompts (one for all workers, so equal prompts hash alike; sent, never written; no
    API key: each worker reads its own)."""
    return {
        "scenario": scenario.model_dump(mode="json", by_alias=True),
        "base_dir": str(prompts.base_dir) if prompts.base_dir else None,
        "digest": plan_digest(plan),
        "base_url": endpoint.base_url,
        "extra_body": endpoint.extra_body,
        "salt": prompts.salt_text,
        "chars_per_token": prompts.chars_per_token,
        "overhead_tokens": prompts.overhead_tokens,
        "prompt_key": PromptStore().key.hex(),
    }
