"""Open-loop load through Locust: every request leaves at its planned time.

Locust's users are closed loops (send, wait, send). Here one Locust user is a dispatcher that
sleeps until each planned time and spawns the request on its own greenlet, so a slow target never
delays the sending. Each finished request fires Locust's `request` event (Locust's stats and
listeners see it) and is appended to the record file at once.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import gevent
from gevent.event import Event
from gevent.pool import Group
from locust import User, task
from locust.env import Environment
from locust.exception import StopUser

from loadgen.client import ConnectionPool, Endpoint, Messages, StreamingCall
from loadgen.cpu import CpuUse
from loadgen.looplag import LoopLag
from loadgen.progress import RunProgress
from loadgen.telemetry import TelemetryRecorder
from scenarios.plan import RequestSpec
from scenarios.records import (
    DROPPED,
    GENERATOR_FAILED,
    MarkSink,
    RecordSink,
    RequestRecord,
    SentMark,
)
from scenarios.scrub import PromptStore
from scenarios.users import Ended, Send, Session, Users, horizon

DRAIN_GRACE_S = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Stopped:
    """A run stopped by a signal before its plan was sent."""

    signum: int
    at_s: float  # run clock when it came

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        return 128 + self.signum


class PromptSource(Protocol):
    """Renders a request's new messages at send time and learns from what the server counted."""

    def messages(self, spec: RequestSpec) -> Messages: ...

    def observe(self, sent_chars: int, record: RequestRecord) -> bool: ...


class PlannedPrompts:
    """The prompt text the plan already holds; learns nothing."""

    def messages(self, spec: RequestSpec) -> Messages:
        return [{"role": "user", "content": spec.prompt or ""}]

    def observe(self, sent_chars: int, record: RequestRecord) -> bool:
        return False


class LoadRun:
    """Sends `plan` to `endpoint` open-loop; each record goes to `writer` as it finishes and is
    not kept (memory stays flat over a long run).

    First turns leave at their planned times. A follow-up turn (`spec.after`) leaves `think_s`
    after the turn it follows ended well, carrying the session's history; when that turn failed
    or was abandoned, the rest of the session is not sent (counted as skipped). Rejected or
    failed attempts are retried per `spec.retry`, each attempt its own record.
    """

    def __init__(
        self,
        plan: Sequence[RequestSpec],
        endpoint: Endpoint,
        writer: RecordSink,
        *,
        max_in_flight: int = 2000,
        store_prompts: PromptStore | None = None,
        progress: TextIO | None = sys.stderr,
        progress_every_s: float = 2.0,
        telemetry: TelemetryRecorder | None = None,
        telemetry_every_s: float = 1.0,
        prompts: PromptSource | None = None,
        stop_grace_s: float = DRAIN_GRACE_S,
        environment: Environment | None = None,
        start_at: float | None = None,
        marks: MarkSink | None = None,
    ):
        self.plan = sorted(plan, key=lambda s: s.arrival)
        self.users = Users(self.plan)  # what each user sends when: one loop for both clocks
        self.endpoint = endpoint
        self.address = endpoint.address()  # resolved once for the run
        self.connections = ConnectionPool()  # kept alive where the server allows
        self.writer = writer
        self.marks = marks  # each attempt marked before it leaves (a local worker's, see worker)
        self.store_prompts = store_prompts
        self.prompts = prompts or PlannedPrompts()
        self.max_in_flight = max_in_flight
        self._sessions = Group()  # one greenlet per user with a request out or coming
        self._out: set[str] = set()  # requests out (their retries included), against the cap
        self.loop_lag = LoopLag(self.clock)  # how late the loop wakes: error in every stamp
        self.progress = RunProgress(planned=len(self.plan))
        self.progress_out = progress
        self.progress_every_s = progress_every_s
        self.telemetry = telemetry
        self.telemetry_every_s = telemetry_every_s
        # a distributed worker's environment already has its runner (which reports Locust's
        # stats to the master); a run of its own gets a local runner and a dispatcher user
        self.environment = environment or Environment(user_classes=[self._user_class()])
        self.start_at = start_at  # time.monotonic() of the plan's zero (default: run start)
        self._done = Event()
        self._idle = Event()  # nothing in flight or waiting to be sent
        self._pending = 0
        self._history: dict[int, Messages] = {}  # session -> messages so far
        self._sent: dict[str, Messages] = {}  # request id -> the messages it sent (regenerate)
        self._t0 = 0.0
        self.cpu = CpuUse(self.clock)  # a generator at a full core falls behind its plan
        self.stop_grace_s = stop_grace_s
        self.stopped: Stopped | None = None  # set when a signal stopped the sending
        self._stop = Event()  # stop sending; in-flight requests get stop_grace_s to finish
        self._cancel = Event()  # a second signal: cancel them now

    def clock(self) -> float:
        return time.monotonic() - self._t0

    @property
    def settled(self) -> bool:
        """Every attempt it sent has its record: no user's greenlet is left."""
        return not len(self._sessions)

    def run(self) -> None:
        """Send the plan; every record goes to the writer as it finishes (none kept here)."""
        runner = self.environment.create_local_runner() if not self.environment.runner else None
        # the libraries' objects (Locust, gevent, numpy, pydantic...) move to a generation the
        # collector never scans: a full collection over them stalled the loop ~130 ms
        gc.collect()
        gc.freeze()
        self._t0 = time.monotonic() if self.start_at is None else self.start_at
        self.cpu = CpuUse(self.clock)
        background = [
            gevent.spawn(self._every, self.progress_every_s, self._print_progress),
            gevent.spawn(self.loop_lag.watch),
            gevent.spawn(self._every, 1.0, self.cpu.sample),
        ]
        if self.telemetry is not None:
            background.append(gevent.spawn(self._every, self.telemetry_every_s, self._sample))
        handlers = self._catch_signals()
        try:
            if runner is not None:
                runner.start(1, spawn_rate=1)
            else:
                gevent.spawn(self._dispatch_once)
            self._done.wait()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self._sessions.kill(block=True, timeout=DRAIN_GRACE_S)
            if runner is not None:
                runner.quit()
            gevent.killall(background)
            self._print_progress()
            self._sample()  # the final state: every request has finished
            self.cpu.sample()
            self.connections.close()
            gc.unfreeze()

    def stop(self, signum: int) -> None:
        """Stop sending: requests in flight get `stop_grace_s` to finish, then are cancelled
        (recorded as such); a second call cancels them at once."""
        if self.stopped is not None:
            self._cancel.set()
            return
        self.stopped = Stopped(signum, self.clock())
        self._stop.set()
        if self.progress_out is not None:
            print(
                f"\n{self.stopped.name}: sending stopped; requests in flight have "
                f"{self.stop_grace_s:g} s to finish (send it again to cancel them now)",
                file=self.progress_out,
                flush=True,
            )

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM stop the run instead of killing it; the previous handlers, to
        restore. The handler only queues `stop` on gevent's loop, safe wherever it lands."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        loop = gevent.get_hub().loop

        def handler(signum: int, _frame: object) -> None:
            loop.run_callback(self.stop, signum)

        return {s: signal.signal(s, handler) for s in STOP_SIGNALS}

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
                load._dispatch_once()
                raise StopUser

        return OpenLoopDispatcher

    def _dispatch_once(self) -> None:
        try:
            self._dispatch()
        finally:
            self._done.set()

    def _dispatch(self) -> None:
        """Start each user at its first request's planned time; then wait until every user is
        done (or the run's horizon passed)."""
        self._pending = 1  # the dispatcher itself, until every user is out
        for opener in self.users.openers:
            self._sleep_until(opener.arrival)
            if self._stop.is_set():
                break
            self._pending += 1
            self._sessions.spawn(self._run_session, self.users.session(opener))
        self._settle()
        wait = max(0.0, horizon(self.plan, self.endpoint.timeout_s) - self.clock())
        gevent.wait([self._idle, self._stop], timeout=wait + DRAIN_GRACE_S, count=1)
        if self._stop.is_set():
            gevent.wait([self._idle, self._cancel], timeout=self.stop_grace_s, count=1)

    def _settle(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    def _run_session(self, session: Session) -> None:
        """One user's requests, as `scenarios.users` says: each attempt sent at its time, its
        record written when it ends, then the user's next command."""
        command: Send | None = next(session)
        in_turn = False  # a request of this user is out (its slot counts against the cap)
        messages: Messages = []
        try:
            while command is not None:
                if not self._wait(command):
                    return  # stopped: what was not sent is not sent
                spec = command.spec
                answer: list[str] = []
                if command.attempt == 0 and not self._take_slot(spec):
                    record, retry_after = self._unsent(command, DROPPED), None
                else:
                    in_turn = True
                    try:
                        if command.attempt == 0:
                            messages = self._messages(spec)
                        record, answer, retry_after = self._attempt(command, messages)
                    except Exception as e:  # the generator's own failure: recorded, never lost
                        record, retry_after = self._generator_failed(command, e), None
                end = record.end if record.end is not None else self.clock()
                ended = Ended(record.status, end, record.http_status, retry_after)
                nxt = _next_command(session, ended)
                if nxt is not None and nxt.spec is spec:
                    record.retried = True
                elif record.status == "ok":
                    self.prompts.observe(sum(len(m["content"]) for m in messages), record)
                self._finish(record)
                if nxt is None or nxt.spec is not spec:  # the request is done
                    self._remember(spec, answer, messages, nxt.spec if nxt else None)
                    if in_turn:
                        in_turn = False
                        self._turn_done(spec)
                command = nxt
        finally:
            if in_turn and command is not None:
                self._turn_done(command.spec)
            self.progress.skipped = self.users.skipped
            self._settle()

    def _take_slot(self, spec: RequestSpec) -> bool:
        """Count a request out, unless max_in_flight are (then it is dropped, never sent)."""
        if len(self._out) >= self.max_in_flight:
            return False
        self._out.add(spec.id)
        self.progress.sent += 1
        self.progress.in_flight += 1
        return True

    def _turn_done(self, spec: RequestSpec) -> None:
        self._out.discard(spec.id)
        self.progress.in_flight -= 1

    def _wait(self, command: Send) -> bool:
        """Wait for the command's time: a first attempt not past a stop (False: stopped), a
        retry's backoff in any case (a run that ends meanwhile records it as cancelled)."""
        if command.attempt == 0:
            self._sleep_until(command.at)
            return not self._stop.is_set()
        try:
            gevent.sleep(max(0.0, command.at - self.clock()))
        except gevent.GreenletExit:
            self._finish(self._unsent(command, "cancelled"))
            raise
        return True

    def _attempt(
        self, command: Send, messages: Messages
    ) -> tuple[RequestRecord, list[str], float | None]:
        """Send one attempt: its record, the answer's text, the server's Retry-After."""
        call = StreamingCall(
            self.endpoint,
            command.spec,
            self.clock,
            self.store_prompts,
            messages=messages,
            intended_start=command.intended,  # latencies `*_intended` include the backoff
            attempt=command.attempt,
            address=self.address,
            pool=self.connections,
            loop_lag=self.loop_lag,
        )
        if self.marks is not None:
            spec = command.spec
            self.marks.write(
                SentMark(
                    spec.id,
                    command.attempt,
                    command.intended,
                    self.clock(),
                    spec.persona,
                    spec.session,
                    spec.turn,
                    spec.prompt_tokens,
                    spec.max_tokens,
                    spec.regenerate,
                )
            )
        try:
            call.run()
        except gevent.GreenletExit:
            call.cancel()
            self._finish(call.record)
            raise
        return call.record, call.text, call.retry_after_s

    def _messages(self, spec: RequestSpec) -> Messages:
        if spec.regenerate and spec.after is not None:
            messages = self._sent.get(spec.after) or self.prompts.messages(spec)
        elif spec.after is None or spec.turn == 0:  # a new conversation
            messages = self.prompts.messages(spec)
        else:
            messages = self._history.get(spec.session, []) + self.prompts.messages(spec)
        if spec.id in self.users.followers:
            self._sent[spec.id] = messages
        return messages

    def _remember(
        self, spec: RequestSpec, answer: list[str], messages: Messages, nxt: RequestSpec | None
    ) -> None:
        """Keep what the user's next request carries: the conversation so far (a next turn of
        the same session), or the messages a regenerate resends."""
        self._sent.pop(spec.after or "", None)
        if nxt is not None and nxt.session == spec.session:
            content = "".join(answer)
            self._history[spec.session] = [*messages, {"role": "assistant", "content": content}]
        else:
            self._history.pop(spec.session, None)
        if nxt is None or not nxt.regenerate:
            self._sent.pop(spec.id, None)  # only a regenerate resends these messages

    def _sleep_until(self, t: float) -> None:
        """Sleep until the run clock reads `t`, or a stop: gevent's timers may wake a little
        early (its loop caches the time), so sleep again for what is left."""
        while (delay := t - self.clock()) > 0 and not self._stop.wait(delay):
            pass

    def _generator_failed(self, command: Send, e: Exception) -> RequestRecord:
        """The record of an attempt the generator itself failed to make or send (it rendered
        a prompt too large to hold, say): an error, never a lost request (the run is then
        invalid, see `surgecast.validity`)."""
        record = self._unsent(command, GENERATOR_FAILED)
        record.status = "error"
        record.error_detail = f"{type(e).__name__}: {e}"[:200]
        return record

    def _unsent(self, command: Send, kind: str) -> RequestRecord:
        """The record of an attempt that never left: dropped at the in-flight cap, or a retry
        whose run ended while it waited."""
        spec, now = command.spec, self.clock()
        return RequestRecord(
            id=spec.id,
            intended_start=command.intended,
            start=now,
            end=now,
            status="cancelled",
            error_kind=kind,
            persona=spec.persona,
            session=spec.session,
            turn=spec.turn,
            attempt=command.attempt,
            planned_prompt_tokens=spec.prompt_tokens,
            planned_output_tokens=spec.max_tokens,
        )

    def _finish(self, record: RequestRecord) -> None:
        self.writer.write(record)
        self.progress.add(record)
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


def _next_command(session: Session, ended: Ended) -> Send | None:
    """The user's next command once an attempt ended (None: the user is done)."""
    try:
        return session.send(ended)
    except StopIteration:
        return None
