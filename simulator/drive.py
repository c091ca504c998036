"""The one loop that drives an engine, whatever the clock.

`DriveLoop.run()` is a plain generator: it steps the engine and yields what it waits for, a
`Sleep(seconds)` for a step (or a cold start) and `WAIT_FOR_WORK` while idle. A driver interprets
those commands on its own clock: `simulator.sim.Replica` with SimPy events, the reference target's
`LiveEngine` with asyncio (keeping steps on schedule when a sleep overshoots). Everything else
(cold start, timeouts, aborts, preemption, token and finish events) happens here, the same for both.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

from simulator.engine import Engine, Sequence, Step
from simulator.scheduler import RUNNING, WAITING

T = TypeVar("T")


@dataclass(slots=True)  # not frozen: one is made per step, and a frozen one is slower to make
class Sleep:
    seconds: float


class WaitForWork:
    """Sleep until a driver submits a sequence."""


WAIT_FOR_WORK = WaitForWork()
Command = Sleep | WaitForWork


class Hook(Generic[T]):
    """Listeners of one kind of event, each called with (subject, clock time)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[T, float], None]] = []

    def add_listener(self, listener: Callable[[T, float], None]) -> None:
        self.listeners.append(listener)

    def fire(self, subject: T, now: float) -> None:
        for listener in self.listeners:
            listener(subject, now)

    def fire_each(self, subjects: list[T], now: float) -> None:
        """`fire` for each subject in turn."""
        for listener in self.listeners:
            for subject in subjects:
                listener(subject, now)


class EngineEvents:
    """What a drive loop reports, as Locust's `events`: `events.token.add_listener(fn)`."""

    def __init__(self) -> None:
        self.token: Hook[Sequence] = Hook()  # the sequence gained a token
        self.first_token: Hook[Sequence] = (
            Hook()
        )  # ... its first one (cheap when token is not needed)
        self.finish: Hook[Sequence] = Hook()  # it reached max_tokens (after its last token)
        self.abort: Hook[Sequence] = Hook()  # it was dropped: timed out or its client left
        self.step: Hook[Step] = Hook()  # a step completed


class DriveLoop:
    """Steps `engine` while it has work; `now` reads the driver's clock (for events, timeouts)."""

    def __init__(
        self,
        engine: Engine,
        now: Callable[[], float],
        events: EngineEvents | None = None,
        cold: bool = False,
    ):
        self.engine = engine
        self.events = events or EngineEvents()
        self._now = now
        self._cold = cold and engine.config.cold_start_s > 0
        self.ready = not self._cold
        self.steps = 0
        self.busy_s = 0.0
        self._deadlines: list[tuple[float, int, Sequence]] = []
        self._count = 0

    def submit(self, seq: Sequence, deadline: float | None = None) -> None:
        """Queue `seq`; it is aborted at the first step boundary at or after `deadline`."""
        self.engine.add(seq)
        if deadline is not None:
            self._count += 1
            heapq.heappush(self._deadlines, (deadline, self._count, seq))

    def abort(self, seq: Sequence) -> None:
        if seq.status == RUNNING or seq.status == WAITING:
            self.engine.abort(seq)
            self.events.abort.fire(seq, self._now())

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            self.abort(heapq.heappop(heap)[2])

    def run(self) -> Generator[Command, None, None]:
        engine, events, clock = self.engine, self.events, self._now
        if self._cold:
            yield Sleep(engine.config.cold_start_s)
            self.ready = True
        deadlines, running, waiting = self._deadlines, engine.running, engine.waiting
        on_token, on_step = events.token.listeners, events.step.listeners
        on_first = events.first_token.listeners
        now = clock()
        while True:
            if deadlines and deadlines[0][0] <= now:
                self._expire(now)
            if not running and not waiting:
                yield WAIT_FOR_WORK
                now = clock()
                continue
            step = engine.plan_step()
            yield Sleep(step.duration)
            self.steps += 1
            self.busy_s += step.duration
            emitted, finished = engine.complete_step(step)
            now = clock()
            for listener in on_token:
                for seq in emitted:
                    listener(seq, now)
            if on_first and engine.scheduler.first_tokens:
                events.first_token.fire_each(engine.scheduler.first_tokens, now)
            if finished:
                events.finish.fire_each(finished, now)
            if on_step:
                events.step.fire(step, now)
