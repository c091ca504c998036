"""The send step of a live run: the plan through Locust, from this process or from several
(Locust's master/worker channel), records and telemetry appended to their files as they come.

Importing this module is cheap; Locust (and gevent's monkey-patching) is imported only when
`send` runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loadgen.children import child_options
from loadgen.client import Endpoint
from loadgen.sizing import SizedPrompts
from loadgen.telemetry import Sampler, TelemetryRecorder
from scenarios.plan import RequestSpec
from scenarios.record_files import SentMarks, sent_file, worker_file
from scenarios.records import RecordWriter
from scenarios.scrub import PromptStore
from scenarios.spec import Scenario
from scenarios.users import horizon

if TYPE_CHECKING:
    from loadgen.runner import Stopped


@dataclass(frozen=True)
class ScaleOut:
    """Several generator processes on Locust's master/worker channel: `processes` started here
    on this host, and `remote` more that connect from other hosts (`surgecast worker`)."""

    processes: int = 1
    remote: int = 0
    bind_host: str = "127.0.0.1"
    bind_port: int = 0  # 0: a free port (local processes only)
    connect_timeout_s: float = 60.0

    @property
    def workers(self) -> int:
        return (self.processes if self.processes > 1 else 0) + self.remote

    @property
    def distributed(self) -> bool:
        return self.workers > 0


@dataclass
class Sent:
    """How the sending went: the generator's lateness and CPU (`generator`, as run.json keeps
    it), the signal that stopped it (if one did), session turns never sent, telemetry errors."""

    generator: dict[str, Any]
    stopped: Stopped | None = None
    skipped: int = 0
    telemetry_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outputs:
    """Where records and telemetry go, one flushed line each as they come."""

    records: IO[str]
    telemetry: IO[str]
    samplers: Sequence[Sampler] = ()
    records_path: Path | None = None  # the records' file: local workers write theirs beside it


def send(
    plan: list[RequestSpec],
    scenario: Scenario,
    endpoint: Endpoint,
    prompts: SizedPrompts,
    outputs: Outputs,
    *,
    progress: bool = True,
    scale: ScaleOut | None = None,
) -> Sent:
    """Send `plan` open-loop to `endpoint` (each request at its planned time), from this
    process or, with `scale`, from worker processes whose records come back here."""
    scale = scale or ScaleOut()
    telemetry = TelemetryRecorder(list(outputs.samplers), outputs.telemetry)
    try:
        if scale.distributed:
            sent = _send_distributed(
                plan, scenario, endpoint, prompts, outputs, telemetry, progress, scale
            )
        else:
            sent = _send_here(plan, scenario, endpoint, prompts, outputs, telemetry, progress)
    finally:
        telemetry.close()
    sent.telemetry_errors = telemetry.errors
    return sent


def _send_here(
    plan: list[RequestSpec],
    scenario: Scenario,
    endpoint: Endpoint,
    prompts: SizedPrompts,
    outputs: Outputs,
    telemetry: TelemetryRecorder,
    progress: bool,
) -> Sent:
    from loadgen.runner import LoadRun  # imports Locust (gevent): only here

    traffic = scenario.traffic
    marks = SentMarks(sent_file(outputs.records_path)) if outputs.records_path else None
    load = LoadRun(
        plan,
        endpoint,
        RecordWriter(outputs.records),
        max_in_flight=traffic.max_in_flight,
        store_prompts=PromptStore(scenario.privacy.store_prompts),  # the run's own key
        progress=sys.stderr if progress else None,
        telemetry=telemetry,
        telemetry_every_s=scenario.telemetry.interval_s,
        prompts=prompts,
        stop_grace_s=traffic.stop_grace_s,
        marks=marks,  # a SIGKILL leaves them: the next merge records what was out as lost
    )
    try:
        load.run()
    finally:
        outputs.records.flush()
        if marks is not None:
            marks.close(settled=load.settled)
    generator = {"loop_lag": load.loop_lag.summary(), "cpu": load.cpu.summary()}
    return Sent(generator, load.stopped, load.progress.skipped)


def _send_distributed(
    plan: list[RequestSpec],
    scenario: Scenario,
    endpoint: Endpoint,
    prompts: SizedPrompts,
    outputs: Outputs,
    telemetry: TelemetryRecorder,
    progress: bool,
    scale: ScaleOut,
) -> Sent:
    """The plan over worker processes: the local ones write their records to their own files
    beside `outputs.records_path`, the master here those remote ones send back; the
    generator's figures are the worst worker's, each worker's kept beside."""
    import gevent

    from loadgen.distributed import DistributedError, Master, assignment

    port = scale.bind_port or _free_port(scale.bind_host)
    master = Master(scale.bind_host, port, outputs.records)
    every_s = scenario.telemetry.interval_s

    def sample() -> None:  # on the run's clock, from the plan's zero
        while True:
            if master.started:
                telemetry.tick(time.time() - master.zero)
            gevent.sleep(every_s)

    def said(elapsed: float) -> None:
        print(master.progress_line(elapsed, len(plan)), file=sys.stderr, flush=True)

    sampler = gevent.spawn(sample)
    children: list[subprocess.Popen[bytes]] = []
    failure = None
    try:
        with master.catching_signals():
            children = _start_workers(scale, port, outputs.records_path)
            master.watch(children, outputs.records_path)
            workers = master.wait_for_workers(scale.workers, scale.connect_timeout_s)
            work = assignment(plan, scenario, endpoint, prompts)
            master.run(
                workers, work, said if progress else None, 60.0, _end_timeout(plan, endpoint)
            )
    except DistributedError as e:  # the records that came are kept; the run is invalid
        failure = str(e)
    finally:
        prompts.keep_texts(master.texts())
        sampler.kill()
        master.quit()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    # a failed run's workers may have stopped themselves (the master gone): the master's own
    # signal, if any, is the run's
    stopped = master.stopped if failure else master.stopping_signal()
    return Sent(master.generator(failure), stopped, master.skipped)


def _start_workers(
    scale: ScaleOut, port: int, records: Path | None
) -> list[subprocess.Popen[bytes]]:
    """The worker processes this host runs (`surgecast worker`), said with those awaited; each
    appends its records to its own file beside `records` (when given)."""
    local = scale.processes if scale.processes > 1 else 0
    print(
        f"master on {scale.bind_host}:{port}: "
        + (f"{local} local worker processes" if local else "")
        + (" and " if local and scale.remote else "")
        + (f"waiting for {scale.remote} remote workers" if scale.remote else ""),
        file=sys.stderr,
        flush=True,
    )
    host = "127.0.0.1" if scale.bind_host in ("*", "0.0.0.0") else scale.bind_host
    command = [sys.executable, "-m", "surgecast", "worker"]
    command += ["--master-host", host, "--master-port", str(port), "--parent-pid", str(os.getpid())]
    # a terminal's Ctrl-C reaches the master only, which stops them (their requests in flight
    # get their grace); a master killed outright takes them with it
    return [
        subprocess.Popen(
            command + (["--records", str(worker_file(records, n))] if records else []),
            **child_options(),
        )
        for n in range(local)
    ]


def _end_timeout(plan: list[RequestSpec], endpoint: Endpoint) -> float:
    """The longest a distributed run may take: when its last request must have ended, and a
    minute for the records to come back."""
    return horizon(plan, endpoint.timeout_s) + 60.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1" if host in ("*", "0.0.0.0") else host, 0))
        return int(s.getsockname()[1])


def generator_lines(generator: dict[str, Any], skipped: int) -> list[str]:
    """How well the generator held its plan, in words."""
    lines = []
    lag, cpu = generator["loop_lag"], generator["cpu"]
    if lag["samples"]:
        several = (
            f" (the worst of {generator['processes']} processes)" if "workers" in generator else ""
        )
        lines.append(
            f"generator event-loop lag{several}: p50 {lag['p50_ms']:.1f} ms, p99 "
            f"{lag['p99_ms']:.1f} ms, max {lag['max_ms']:.1f} ms (timer wake-ups and "
            "reads after the kernel's arrival); CPU: mean "
            f"{cpu['mean']:.0%} of one core, busiest second {cpu['max']:.0%}"
        )
    for host in generator.get("hosts", []):
        lines.append(
            f"generator CPU on {host['host']}: {host['processes']} workers"
            + (" and the master" if host["host"] == generator["master"]["host"] else "")
            + f" used {host['cpu']:.2f} of the {host['cores']} cores they may run on"
        )
    if skipped:
        lines.append(
            f"{skipped} planned session turns not sent: an earlier turn of their "
            "session failed or was abandoned"
        )
    return lines
