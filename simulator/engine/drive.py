"""The one loop that drives an engine, whatever the clock.

`DriveLoop.run()` is a plain generator: it steps the engine and yields what it waits for, a
`Sleep(seconds)` for a step (or a cold start) and `WAIT_FOR_WORK` while idle. A driver interprets
those commands on its own clock: `simulator.replay.sim.Replica` with SimPy events, the reference
target's `LiveEngine` with asyncio (keeping steps on schedule when a sleep overshoots). Everything
else (cold start, timeouts, aborts, preemption, token and finish events) happens here, the same for
both.

A driver that passes `retime` lets the loop jump: while a batch only decodes and nothing can join
it, its steps repeat until a sequence finishes or a block runs short, so the loop yields one
`Jump(until)` for all of them (their end times summed exactly as one sleep per step would sum
them). A submit or abort while it sleeps brings `until` forward to the end of the step in flight
(`retime(new_until)`); the loop then applies the steps run, so results are those of stepping.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import reduce
from itertools import accumulate, repeat
from operator import add, mul, truediv
from typing import Generic, TypeVar

from simulator.engine.core import Engine, EngineSequence, Step
from simulator.engine.scheduler import RUNNING, WAITING

T = TypeVar("T")


@dataclass(slots=True)  # not frozen: one is made per step, and a frozen one is slower to make
class Sleep:
    seconds: float


@dataclass(slots=True)
class Jump:
    """Sleep until the clock reads `until` (or a later `retime` says), a run of steps."""

    until: float


class WaitForWork:
    """Sleep until a driver submits a sequence."""


WAIT_FOR_WORK = WaitForWork()
Command = Sleep | Jump | WaitForWork
MAX_JUMP = 4096  # steps one jump may span
MIN_JUMP = 3  # steps; a shorter run costs about as much to jump as to step


@dataclass(slots=True)
class Tokens:
    """Tokens in bulk: each of `sequences` gained one token at each of `times`."""

    sequences: tuple[EngineSequence, ...] | list[EngineSequence]
    times: list[float]


@dataclass
class Usage:
    """What an engine's steps ran with: seconds stepping, KV use (peak, and its integral over
    the stepping time) and seconds with every batch slot taken."""

    busy_s: float = 0.0
    kv_peak: float = 0.0  # fraction of the KV blocks
    kv_s: float = 0.0  # KV fraction x seconds
    full_s: float = 0.0

    def add(self, seconds: float, kv: float, full: bool) -> None:
        self.busy_s += seconds
        self.kv_s += kv * seconds
        if kv > self.kv_peak:
            self.kv_peak = kv
        if full:
            self.full_s += seconds


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
        self.token: Hook[EngineSequence] = Hook()  # the sequence gained a token
        self.tokens: Hook[Tokens] = Hook()  # the same tokens in bulk (a step's, or a jump's)
        self.first_token: Hook[EngineSequence] = (
            Hook()
        )  # ... its first one (cheap when token is not needed)
        self.finish: Hook[EngineSequence] = Hook()  # it reached max_tokens (after its last token)
        self.abort: Hook[EngineSequence] = Hook()  # it was dropped: timed out or its client left
        self.step: Hook[Step] = Hook()  # a step completed


class DriveLoop:
    """Steps `engine` while it has work; `now` reads the driver's clock (for events, timeouts).

    With `retime` (see the module's doc) it may jump over steady runs of steps.
    """

    def __init__(
        self,
        engine: Engine,
        now: Callable[[], float],
        events: EngineEvents | None = None,
        cold: bool = False,
        retime: Callable[[float], None] | None = None,
    ):
        self.engine = engine
        self.events = events or EngineEvents()
        self._now = now
        self._cold = cold and engine.config.cold_start_s > 0
        self._retime = retime
        self.ready = not self._cold
        self.steps = 0
        self.jumps = 0  # jumps made, and how many were cut short
        self.cuts = 0
        self.usage = Usage()
        self._deadlines: list[tuple[float, int, EngineSequence]] = []
        self._count = 0
        # the jump in flight: its step end times, steps applied, the index of its last step
        self._ends: list[float] | None = None
        self._durations: list[float] = []
        self._done = 0
        self._stop = 0
        self._counted = -1  # the step in flight, once counted in usage
        self._step: Step | None = None

    @property
    def busy_s(self) -> float:
        return self.usage.busy_s

    def submit(self, seq: EngineSequence, deadline: float | None = None) -> None:
        """Queue `seq`; it is aborted at the first step boundary at or after `deadline`."""
        self.engine.add(seq)
        if deadline is not None:
            self._count += 1
            heapq.heappush(self._deadlines, (deadline, self._count, seq))
        if self._ends is not None:
            self._cut(self._now())

    def abort(self, seq: EngineSequence) -> None:
        if seq.status == RUNNING or seq.status == WAITING:
            now = self._now()
            if self._ends is not None:
                if seq.status == RUNNING:  # the steps it ran first, and the one in flight
                    j = bisect_left(self._ends, now, self._done)
                    self._apply(j)
                    self._account(j)
                self._cut(now)
            self.engine.abort(seq)
            self.events.abort.fire(seq, now)

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            self.abort(heapq.heappop(heap)[2])

    def catch_up(self, now: float) -> None:
        """Apply the steps of the jump in flight that ended before `now`: the KV cache as
        stepping would have it now (for a router or an autoscaler that reads it)."""
        if self._ends is not None:
            self._apply(bisect_left(self._ends, now, self._done))

    def _cut(self, now: float) -> None:
        """End the jump in flight with the step running at `now`."""
        assert self._ends is not None and self._retime is not None
        j = bisect_left(self._ends, now, self._done)
        if j < self._stop:
            self._stop = j
            self.cuts += 1
            self._retime(self._ends[j])

    def settle(self, now: float) -> None:
        """At the end of a run: apply the steps of the jump in flight that ended before `now`,
        and count the one running then, as stepping would have (it counts a step when planned)."""
        ends = self._ends
        if ends is None:
            return
        j = bisect_left(ends, now, self._done)
        self._apply(j)
        if j <= self._stop:
            self._account(j)
        self._ends = self._step = None

    def _account(self, i: int) -> None:
        """Count the jump's step `i` in `usage` (once) with the KV use it was planned with."""
        if self._counted != i:
            self._counted = i
            kv, engine = self.engine.kv, self.engine
            full = len(engine.running) >= engine.config.max_num_seqs
            self.usage.add(self._durations[i], kv.num_used / kv.num_blocks, full)

    def _plan_jump(self, step: Step, now: float) -> float | None:
        """When a jump from the planned `step` on ends (None: no jump, just the step)."""
        engine, deadlines = self.engine, self._deadlines
        n = engine.scheduler.quiet_steps(MAX_JUMP)
        if n < MIN_JUMP:
            return None
        cost, decode, context = engine.cost, len(step.decode), step.context_tokens
        if deadlines and n > 64:  # the steps up to a deadline (closed form, a rounding margin)
            n = min(n, cost.steps_within(decode, context, deadlines[0][0] - now) + 2)
        durations = cost.decode_run(decode, context, n)
        ends = list(accumulate(durations, initial=now))
        del ends[0]
        if deadlines:  # a deadline aborts at the end of the step running then
            j = bisect_left(ends, deadlines[0][0])
            if j < 1:
                return None
            n = min(n, j + 1)
        self._ends, self._durations, self._step = ends, durations, step
        self._done, self._stop, self._counted = 0, n - 1, -1
        return ends[n - 1]

    def _apply(self, upto: int) -> None:
        """Apply the jump's steps before index `upto` (none of them changes the batch)."""
        ends, durations, step, done = self._ends, self._durations, self._step, self._done
        assert ends is not None and step is not None
        if upto <= done:
            return
        engine, events, usage = self.engine, self.events, self.usage
        kv, scheduler = engine.kv, engine.scheduler
        used, blocks = kv.num_used, kv.num_blocks
        on_token = events.token.listeners
        taken: list[int]
        if on_token:  # one step at a time: a listener may read the sequence's token count
            taken = []
            for i in range(done, upto):
                taken += scheduler.advance(1)
                for listener in on_token:
                    for seq in step.decode:
                        listener(seq, ends[i])
        else:
            taken = scheduler.advance(upto - done)
        # as `Usage.add` would sum them step by step (reduce adds in order, as += does)
        seconds = durations[done:upto]
        fractions = list(map(truediv, accumulate(taken[:-1], initial=used), repeat(blocks)))
        usage.busy_s = reduce(add, seconds, usage.busy_s)
        usage.kv_s = reduce(add, map(mul, fractions, seconds), usage.kv_s)
        usage.kv_peak = max(usage.kv_peak, fractions[-1])  # blocks only grow in a jump
        if len(engine.running) >= engine.config.max_num_seqs:
            usage.full_s = reduce(add, seconds, usage.full_s)
        if events.tokens.listeners:
            events.tokens.fire(Tokens(step.decode, ends[done:upto]), ends[upto - 1])
        self.steps += upto - done
        self._done = upto

    def run(self) -> Generator[Command, None, None]:
        engine, events, clock = self.engine, self.events, self._now
        if self._cold:
            yield Sleep(engine.config.cold_start_s)
            self.ready = True
        deadlines, running, waiting = self._deadlines, engine.running, engine.waiting
        on_token, on_step = events.token.listeners, events.step.listeners
        on_tokens, on_first = events.tokens.listeners, events.first_token.listeners
        scheduler, kv, usage = engine.scheduler, engine.kv, self.usage
        slots, jumps = engine.config.max_num_seqs, self._retime is not None
        now = clock()
        while True:
            if deadlines and deadlines[0][0] <= now:
                self._expire(now)
            if not running and not waiting:
                yield WAIT_FOR_WORK
                now = clock()
                continue
            step = engine.plan_step()
            until = None
            if (
                jumps
                and not step.prefill
                and not step.preempted
                and not on_step
                and scheduler.steady()
            ):
                until = self._plan_jump(step, now)
            if until is not None:
                self.jumps += 1
                yield Jump(until)
                last = self._stop
                self._apply(last)
                self._account(last)
                ends = self._ends
                assert ends is not None
                self._ends = self._step = None
                now = ends[last]
            else:
                usage.add(step.duration, kv.num_used / kv.num_blocks, len(running) >= slots)
                yield Sleep(step.duration)
                now = clock()
            self.steps += 1
            emitted, finished = engine.complete_step(step)
            for listener in on_token:
                for seq in emitted:
                    listener(seq, now)
            if on_tokens:
                events.tokens.fire(Tokens(emitted, [now]), now)
            if on_first and scheduler.first_tokens:
                events.first_token.fire_each(scheduler.first_tokens, now)
            if finished:
                events.finish.fire_each(finished, now)
            if on_step:
                events.step.fire(step, now)
