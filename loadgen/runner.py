"""Open-loop load through Locust: every request leaves at its planned time.

Locust's users are closed loops (send, wait, send). Here one Locust user is a dispatcher that
sleeps until each planned time and spawns the request on its own greenlet, so a slow target never
delays the sending. Each finished request fires Locust's `request` event (Locust's stats and
listeners see it) and is appended to the record file at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import gevent
from gevent.event import Event
from gevent.pool import Pool
from locust import User, task
from locust.env import Environment
from locust.exception import StopUser

from loadgen.client import Endpoint, StreamingCall
from loadgen.progress import RunProgress
from loadgen.telemetry import TelemetryRecorder
from scenarios.plan import RequestSpec
from scenarios.records import RecordWriter, RequestRecord

DRAIN_GRACE_S = 5.0


class LoadRun:
    """Sends `plan` to `endpoint` open-loop; `run()` returns the records in finishing order."""

    def __init__(
        self,
        plan: Sequence[RequestSpec],
        endpoint: Endpoint,
        writer: RecordWriter,
        *,
        max_in_flight: int = 2000,
        store_prompts: bool = False,
        progress: TextIO | None = sys.stderr,
        progress_every_s: float = 2.0,
        telemetry: TelemetryRecorder | None = None,
        telemetry_every_s: float = 1.0,
    ):
        self.plan = sorted(plan, key=lambda s: s.arrival)
        self.endpoint = endpoint
        self.writer = writer
        self.store_prompts = store_prompts
        self.pool = Pool(max_in_flight)
        self.progress = RunProgress(planned=len(self.plan))
        self.progress_out = progress
        self.progress_every_s = progress_every_s
        self.telemetry = telemetry
        self.telemetry_every_s = telemetry_every_s
        self.environment = Environment(user_classes=[self._user_class()])
        self._done = Event()
        self._t0 = 0.0

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def run(self) -> list[RequestRecord]:
        runner = self.environment.create_local_runner()
        self._t0 = time.monotonic()
        background = [gevent.spawn(self._every, self.progress_every_s, self._print_progress)]
        if self.telemetry is not None:
            background.append(gevent.spawn(self._every, self.telemetry_every_s, self._sample))
        try:
            runner.start(1, spawn_rate=1)
            self._done.wait()
        finally:
            self.pool.kill(block=True, timeout=DRAIN_GRACE_S)
            runner.quit()
            gevent.killall(background)
            self._print_progress()
            self._sample()  # the final state: every request has finished
        return self.progress.finished

    def _user_class(self) -> type[User]:
        load = self

        class OpenLoopDispatcher(User):
            """One dispatcher for the whole plan; the requests run on their own greenlets."""

            host = self.endpoint.base_url
            fixed_count = 1
            started = False

            @task
            def dispatch(self) -> None:
                if type(self).started:  # Locust re-runs a task that raised; never resend a plan
                    raise StopUser
                type(self).started = True
                try:
                    load._dispatch()
                finally:
                    load._done.set()
                raise StopUser

        return OpenLoopDispatcher

    def _dispatch(self) -> None:
        for spec in self.plan:
            delay = spec.arrival - self.clock()
            if delay > 0:
                gevent.sleep(delay)
            if self.pool.full():
                self._finish(self._dropped(spec))
                continue
            self.progress.sent += 1
            self.progress.in_flight += 1
            self.pool.spawn(self._send, spec)
        last = self.plan[-1].arrival if self.plan else 0.0
        self.pool.join(
            timeout=max(0.0, last - self.clock()) + self.endpoint.timeout_s + DRAIN_GRACE_S
        )

    def _send(self, spec: RequestSpec) -> None:
        call = StreamingCall(self.endpoint, spec, self.clock, self.store_prompts)
        try:
            call.run()
        except gevent.GreenletExit:
            call.cancel()
            raise
        finally:
            self.progress.in_flight -= 1
            self._finish(call.record)

    def _dropped(self, spec: RequestSpec) -> RequestRecord:
        now = self.clock()
        return RequestRecord(
            id=spec.id,
            intended_start=spec.arrival,
            start=now,
            end=now,
            status="cancelled",
            error_kind="dropped_in_flight_limit",
            persona=spec.persona,
            session=spec.session,
            turn=spec.turn,
        )

    def _finish(self, record: RequestRecord) -> None:
        self.writer.write(record)
        self.progress.finished.append(record)
        e2e_ms = ((record.end or record.start) - record.start) * 1000.0
        error = None if record.status == "ok" else RuntimeError(record.error_kind or record.status)
        self.environment.events.request.fire(
            request_type="POST",
            name=self.endpoint.path,
            response_time=e2e_ms,
            response_length=record.output_tokens or 0,
            exception=error,
            context={},
        )

    @staticmethod
    def _every(interval_s: float, action: Callable[[], None]) -> None:
        while True:
            gevent.sleep(interval_s)
            action()

    def _sample(self) -> None:
        if self.telemetry is not None:
            self.telemetry.tick(self.clock())

    def _print_progress(self) -> None:
        if self.progress_out is not None:
            print(self.progress.line(self.clock()), file=self.progress_out, flush=True)
