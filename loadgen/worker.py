"""A generator process of a scaled-out run (`surgecast worker`): it takes its share of the
master's plan, sends it at the planned times against the master's clock, and sends every
record back in batches, or, a local worker its master started, appends each to its own file in
the run folder as it ends, so that no kill of it or its master loses one it wrote. Either marks
each attempt before sending it (a local worker in its own file, a remote one in a message to
the master), so that a request it had out when killed is recorded as lost
(`scenarios.record_files`; see `loadgen.distributed` for the master's side)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import gevent
from gevent.event import Event
from locust.env import Environment
from locust.runners import WorkerRunner

from loadgen.client import Endpoint, read_api_key
from loadgen.cpu import usable_cores
from loadgen.distributed import ASSIGN, BATCH, DONE, FLUSH_S, GO, MARK, READY, RECORDS, STOP
from loadgen.runner import STOP_SIGNALS, LoadRun
from loadgen.sizing import KEPT_TEXTS, SizedPrompts
from scenarios.plan import build_plan
from scenarios.plan_shares import plan_digest, plan_share
from scenarios.record_files import SentMarks, hold, sent_file
from scenarios.records import MarkSink, RequestRecord, SentMark
from scenarios.scrub import PromptStore
from scenarios.spec import parse_scenario

WATCH_S = 0.25  # how often a worker looks for its master
MASTER_SILENT_S = 10.0  # no heartbeat from the master this long: it is gone (Locust waits 60)


class RemoteWriter:
    """A worker's record sink: records go to the master in batches, at least every FLUSH_S, or
    to the worker's own file (`local`), one flushed line each as it ends; its progress
    counters go to the master either way."""

    def __init__(
        self,
        runner: WorkerRunner,
        index: int,
        load: Callable[[], LoadRun | None],
        local: IO[str] | None = None,
    ):
        self.runner = runner
        self.index = index
        self.load = load
        self.local = local
        self.lines: list[str] = []
        self._said: dict[str, int] = {}  # the counters last sent
        self._flusher = gevent.spawn(self._every)

    def write(self, record: RequestRecord) -> None:
        if self.local is not None:
            self.local.write(record.to_json() + "\n")
            self.local.flush()
            return
        self.lines.append(record.to_json())
        if len(self.lines) >= BATCH:
            self.flush()

    def flush(self, kind: str = RECORDS, **extra: Any) -> None:
        lines, self.lines = self.lines, []
        self._said = self.counts()
        self.runner.send_message(kind, {**self._said, "lines": lines, **extra})

    def counts(self) -> dict[str, int]:
        load = self.load()
        if load is None:
            return {"index": self.index}
        p = load.progress
        return {
            "index": self.index,
            "sent": p.sent,
            "done": p.done,
            "in_flight": p.in_flight,
            "errors": p.errors,
            "skipped": p.skipped,
        }

    def close(self) -> None:
        self._flusher.kill()

    def _every(self) -> None:
        while True:
            gevent.sleep(FLUSH_S)
            if self.lines or self.counts() != self._said:  # progress shows before records do
                self.flush()


class RemoteMarks:
    """A remote worker's marks: each goes to the master ahead of its attempt (on the channel
    its records take later, so it arrives first), and the master keeps it."""

    def __init__(self, runner: WorkerRunner):
        self.runner = runner

    def write(self, mark: SentMark) -> None:
        self.runner.send_message(MARK, {"line": mark.to_json()})


def serve_worker(
    master_host: str,
    master_port: int,
    timeout_s: float = 3600.0,
    parent_pid: int | None = None,
    records: Path | None = None,
) -> int:
    """Connect to a master, run the share it assigns, send every record back (or append it to
    `records`); 0 when the share was sent, 3 when the worker could not run it. A worker its
    master started (`parent_pid`) stops within WATCH_S of the master's death, however it
    died, on any platform: it is then the child of another process (on Linux the kernel's
    SIGTERM also comes, see loadgen.children); its requests in flight are cancelled, each
    recorded as such. A remote worker stops within MASTER_SILENT_S of its master's last
    heartbeat."""
    state: dict[str, Any] = {}
    with _signals_stop(state):
        return _serve(master_host, master_port, timeout_s, parent_pid, records, state)


def _serve(
    master_host: str,
    master_port: int,
    timeout_s: float,
    parent_pid: int | None,
    records: Path | None,
    state: dict[str, Any],
) -> int:
    environment = Environment(user_classes=[])
    orphaned, connected = Event(), Event()
    if parent_pid is not None:
        gevent.spawn(_watch_parent, parent_pid, orphaned, connected)
    print(f"worker: connecting to the master at {master_host}:{master_port}", file=sys.stderr)
    try:
        runner = environment.create_worker_runner(master_host, master_port)
    except ConnectionError:
        print(
            f"worker: no master answered at {master_host}:{master_port} (start `surgecast run "
            "SCENARIO --master` there first, or check --master-host and --master-port)",
            file=sys.stderr,
        )
        return 3
    connected.set()
    finished = Event()
    outcome = {"code": 0}

    def on_assign(environment: Environment, msg: Any) -> None:
        gevent.spawn(_work, runner, environment, msg.data, state, finished, outcome, records)

    def on_go(environment: Environment, msg: Any) -> None:
        state["zero"] = float(msg.data["zero"])
        state["go"].set()

    def on_stop(environment: Environment, msg: Any) -> None:
        load = state.get("load")
        if load is not None:
            load.stop(int(msg.data["signum"]))

    state["go"] = Event()
    runner.register_message(ASSIGN, on_assign)
    runner.register_message(GO, on_go)
    runner.register_message(STOP, on_stop)
    deadline = time.monotonic() + timeout_s
    while not finished.wait(WATCH_S):
        heard = runner.last_heartbeat_timestamp  # the master's heartbeats, each second
        silent = heard is not None and time.time() - heard > MASTER_SILENT_S
        if orphaned.is_set() or silent or not len(runner.greenlet) or time.monotonic() > deadline:
            # the master died or went silent: stop sending. Records not yet sent are lost (a
            # local worker's own file keeps its); the master's marks of them (sent-remote.jsonl)
            # record them as lost at the next `surgecast report`
            print("worker: the master is gone; stopping", file=sys.stderr)
            if "load" in state:
                state["load"].stop(signal.SIGTERM)
                state["load"].stop(signal.SIGTERM)  # and cancel what is in flight
                finished.wait(10.0)
            return 3
    gevent.sleep(0.2)  # let the last message leave
    runner.quit()
    return outcome["code"]


@contextmanager
def _signals_stop(state: dict[str, Any]) -> Iterator[None]:
    """SIGINT and SIGTERM (the kernel's, on Linux, at its master's death) stop the worker's load
    as they stop a run of its own: requests in flight get their grace, a second signal (or its
    master found gone) cancels them, each recorded. Before there is a load, nothing is in
    flight: the signal does what it would have done. (LoadRun catches no signal here: its
    greenlet is not the main thread's.)"""
    loop = gevent.get_hub().loop

    def stop(signum: int) -> None:
        load = state.get("load")
        if load is not None:
            load.stop(signum)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def handler(signum: int, _frame: object) -> None:
        loop.run_callback(stop, signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def _watch_parent(parent_pid: int, orphaned: Event, connected: Event) -> None:
    """Note when this process's parent (its master) has died: it is then another's child. Before
    it is connected (Locust waits a minute for a master) there is nothing to keep: it leaves."""
    while os.getppid() == parent_pid:
        gevent.sleep(WATCH_S)
    orphaned.set()  # connected, the main loop stops the load, keeping what it can
    if not connected.is_set():
        print("worker: the master that started it is gone", file=sys.stderr, flush=True)
        os._exit(3)


def _work(
    runner: WorkerRunner,
    environment: Environment,
    data: dict[str, Any],
    state: dict[str, Any],
    finished: Event,
    outcome: dict[str, int],
    records: Path | None,
) -> None:
    index = int(data["index"])
    with open(records, "a", encoding="utf-8") if records else contextlib.nullcontext() as local:
        if local is not None:
            hold(local)  # a report on its killed master's run waits until it has stopped
        writer = RemoteWriter(runner, index, lambda: state.get("load"), local)
        marks = SentMarks(sent_file(records)) if records else RemoteMarks(runner)
        try:
            _send_share(runner, environment, data, state, writer, marks)
        except Exception as e:  # said to the master, which marks the run invalid
            outcome["code"] = 3
            print(f"worker {index}: {type(e).__name__}: {e}", file=sys.stderr)
            writer.flush(DONE, error=f"{type(e).__name__}: {e}")
        finally:
            writer.close()
            if isinstance(marks, SentMarks):  # no mark is needed once every attempt has its record
                load: LoadRun | None = state.get("load")
                marks.close(settled=load is None or load.settled)
            finished.set()


def _send_share(
    runner: WorkerRunner,
    environment: Environment,
    data: dict[str, Any],
    state: dict[str, Any],
    writer: RemoteWriter,
    marks: MarkSink,
) -> None:
    """Build the share, say it is ready, send it from the plan's zero, then say it is done."""
    load, prompts = _load_run(environment, data, writer, marks)
    state["load"] = load
    ready = {"index": writer.index, "pid": os.getpid(), "host": socket.gethostname()}
    runner.send_message(READY, ready)
    state["go"].wait()
    # the plan's zero on this host's monotonic clock
    load.start_at = time.monotonic() + (state["zero"] - time.time())
    load.run()
    generator = {
        "loop_lag": load.loop_lag.summary(),
        "cpu": load.cpu.summary(),
        "host": socket.gethostname(),
        "cores": usable_cores(),
    }
    stopped = load.stopped.signum if load.stopped else None
    share = math.ceil(KEPT_TEXTS / int(data["count"]))  # the master keeps about KEPT_TEXTS
    texts = {persona: pairs[:share] for persona, pairs in prompts.texts.items()}
    writer.flush(DONE, generator=generator, stopped=stopped, texts=texts, settled=load.settled)


def _load_run(
    environment: Environment, data: dict[str, Any], writer: RemoteWriter, marks: MarkSink
) -> tuple[LoadRun, SizedPrompts]:
    """The worker's LoadRun for its share of the plan the assignment describes, and the
    prompts it renders."""
    base_dir = Path(data["base_dir"]) if data.get("base_dir") else None
    scenario = parse_scenario(data["scenario"], "<scenario from the master>", base_dir)
    plan = build_plan(scenario)
    if plan_digest(plan) != data["digest"]:
        raise ValueError(
            "this worker's plan differs from the master's (another surgecast version, or other "
            "trace or corpus files at the scenario's paths)"
        )
    mine = plan_share(plan, int(data["index"]), int(data["count"]))
    endpoint = Endpoint.from_target(
        scenario.target, data["base_url"], read_api_key(scenario.target)
    )
    endpoint = Endpoint(**{**endpoint.__dict__, "extra_body": dict(data["extra_body"])})
    prompts = SizedPrompts(scenario, base_dir, data["salt"])
    prompts.chars_per_token = float(data["chars_per_token"])
    prompts.overhead_tokens = float(data["overhead_tokens"])
    traffic = scenario.traffic
    load = LoadRun(
        mine,
        endpoint,
        writer,
        max_in_flight=max(1, math.ceil(traffic.max_in_flight / int(data["count"]))),
        store_prompts=PromptStore(
            scenario.privacy.store_prompts, bytes.fromhex(data["prompt_key"])
        ),
        progress=None,
        prompts=prompts,
        stop_grace_s=traffic.stop_grace_s,
        environment=environment,
        marks=marks,
    )
    return load, prompts
