"""Replay a request plan through replicas of the engine model in SimPy's virtual time."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import simpy

from scenarios.plan import RequestSpec, followers_of, next_session
from scenarios.records import RequestRecord
from simulator.drive import DriveLoop, EngineEvents, Jump, Sleep, Tokens, Usage
from simulator.engine import Engine, EngineConfig
from simulator.engine import Sequence as Seq
from simulator.least_loaded import LeastLoaded


class Replica:
    """One engine on SimPy's clock: the drive loop's commands become SimPy timeouts, each calling
    back to take the next command (no SimPy process: a jump cut short drops its timer's callback).

    A `cold` replica serves only after the engine's cold_start_s (a replica just scaled up). A
    request submitted `overhead_s` after it was sent is aborted `timeout_s` after it was sent.
    With `jumps` off the engine is stepped one step at a time (the same results, slower).
    """

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig,
        events: EngineEvents,
        cold: bool = False,
        timeout_s: float | None = None,
        jumps: bool = True,
    ):
        self.env = env
        self.engine = Engine(config)
        self.loop = DriveLoop(
            self.engine, lambda: env.now, events, cold, self._retime if jumps else None
        )
        self._timeout_s = timeout_s
        self.loop.on_leave = self._left
        self.watch: Callable[[], None] | None = None  # told when the load may have changed
        self._commands = self.loop.run()
        self._timer: simpy.Event | None = None  # what calls `_next` back; None while idle
        self._wake()

    @property
    def load(self) -> int:
        return len(self.engine.running) + len(self.engine.waiting)

    def _left(self) -> None:
        if self.watch is not None:
            self.watch()

    @property
    def busy_time(self) -> float:
        return self.loop.busy_s

    @property
    def usage(self) -> Usage:
        return self.loop.usage

    def submit(self, seq: Seq) -> None:
        deadline = None
        if self._timeout_s is not None:  # counted from the send, overhead_s before the submit
            deadline = self.env.now - self.engine.config.overhead_s + self._timeout_s
        self.loop.submit(seq, deadline)
        if self.watch is not None:
            self.watch()
        if self._timer is None:
            self._wake()

    def _wake(self) -> None:
        self._timer = event = self.env.event()
        event.callbacks.append(self._next)
        event.succeed()

    def _next(self, _: simpy.Event) -> None:
        command = next(self._commands)
        env = self.env
        if type(command) is Sleep:
            timer = env.timeout(command.seconds)
        elif type(command) is Jump:
            timer = env.timeout(_delay(env.now, command.until))
        else:
            self._timer = None
            return
        timer.callbacks.append(self._next)
        self._timer = timer

    def settle(self) -> None:
        """At the end of a run: the steps of a jump in flight that ended count (see DriveLoop)."""
        self.loop.settle(self.env.now)

    def _retime(self, until: float) -> None:
        """The jump in flight now ends at `until`."""
        assert self._timer is not None and self._timer.callbacks is not None
        self._timer.callbacks.clear()
        self._timer = timer = self.env.timeout(_delay(self.env.now, until))
        timer.callbacks.append(self._next)


def _delay(now: float, at: float) -> float:
    """The delay that SimPy adds to `now` to land on `at` exactly (as steps summed one by one)."""
    delay = at - now
    while now + delay < at:
        delay = math.nextafter(delay, math.inf)
    while now + delay > at:
        delay = math.nextafter(delay, -math.inf)
    return delay


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    horizon_s: float
    busy_fraction: list[float]  # per replica, of the span from first send to last response
    preemptions: int = 0  # over the fleet
    kv_peak: float = 0.0  # the fullest any replica's KV cache got (fraction of its blocks)
    kv_mean: float = 0.0  # replicas' KV use averaged over the span (idle time counts as 0)
    slots_full: float = 0.0  # share of the span with every batch slot taken, replica mean


class _Clients:
    """The simulated users: first turns at their planned times, follow-ups `think_s` after the
    turn they follow ended well, patience that abandons a slow first token, and a record each,
    as the load generator keeps them."""

    def __init__(
        self,
        env: simpy.Environment,
        plan: Sequence[RequestSpec],
        fleet: list[Replica],
        config: EngineConfig,
    ):
        self.env = env
        self.fleet = fleet
        self.overhead_s = config.overhead_s
        self.records: dict[str, RequestRecord] = {}
        self.specs = {s.id: s for s in plan}
        self.followers = followers_of(plan)
        self._placed: dict[str, tuple[Seq, Replica]] = {}
        self.router = LeastLoaded(fleet)

    def arrivals(self, plan: Sequence[RequestSpec]) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for spec in sorted((s for s in plan if s.after is None), key=lambda s: s.arrival):
            at = spec.arrival + self.overhead_s
            if at > env.now:
                yield env.timeout(at - env.now)
            self.send(spec, spec.arrival)

    def send(self, spec: RequestSpec, intended: float) -> None:
        rec = RequestRecord(
            id=spec.id,
            intended_start=intended,
            start=intended,
            prompt_tokens=spec.prompt_tokens,
            token_source="plan",
            source="simulated",
            persona=spec.persona,
            session=spec.session,
            turn=spec.turn,
            planned_prompt_tokens=spec.prompt_tokens,
            regenerate=spec.regenerate,
        )
        self.records[spec.id] = rec
        seq = Seq(spec.id, spec.prompt_tokens, spec.max_tokens, spec.prefix)
        replica = self.router.pick()
        if not replica.engine.fits_ever(seq):
            rec.status, rec.error_kind, rec.end = "rejected", "context_length", self.env.now
            self._failed(spec, self.env.now)
            return
        replica.submit(seq)
        if spec.patience_s is not None:
            self._placed[spec.id] = (seq, replica)
            self.env.process(self._patience(spec, intended + spec.patience_s))

    def _patience(self, spec: RequestSpec, give_up: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(0.0, give_up - self.env.now))
        rec = self.records[spec.id]
        if rec.first_token is None and rec.end is None:
            seq, replica = self._placed.pop(spec.id)
            rec.status, rec.error_kind, rec.end = "cancelled", "abandoned", give_up
            replica.loop.abort(seq)
            self._failed(spec, give_up)
        self._placed.pop(spec.id, None)

    def on_tokens(self, tokens: Tokens, now: float) -> None:
        """Chunk times in bulk: a step's, or every step's of a jump."""
        records, times = self.records, tokens.times
        for seq in tokens.sequences:
            records[seq.id].chunk_times.extend(times)

    def on_first_token(self, seq: Seq, now: float) -> None:
        self.records[seq.id].first_token = now

    def on_finish(self, seq: Seq, now: float) -> None:
        rec = self.records[seq.id]
        rec.end = now
        rec.output_tokens = seq.generated
        followers = self.followers.get(seq.id)
        if followers:
            self._follow(followers[0], now)

    def on_abort(self, seq: Seq, now: float) -> None:
        """A timeout (a patience abort marked its record already): the session ends here."""
        rec = self.records[seq.id]
        if rec.status == "ok":
            rec.status, rec.error_kind, rec.end = "timeout", "timeout", now
            self._failed(self.specs[seq.id], now)

    def _failed(self, spec: RequestSpec, now: float) -> None:
        """The rest of the session is dropped; a closed-loop user goes on with its next one."""
        nxt, _ = next_session(spec, self.followers)
        if nxt is not None:
            self._follow(nxt, now)

    def _follow(self, nxt: RequestSpec, now: float) -> None:
        due = now + nxt.think_s
        if nxt.not_after is None or due <= nxt.not_after:
            self.env.process(self._later(nxt, due))

    def _later(self, spec: RequestSpec, due: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(0.0, due + self.overhead_s - self.env.now))
        self.send(spec, due)


def _horizon(plan: Sequence[RequestSpec], timeout_s: float) -> float:
    """When every request must have ended: each turn's timeout and think time, chained."""
    end: dict[str, float] = {}
    for spec in sorted(plan, key=lambda s: s.arrival):  # a turn comes after the one it follows
        begin = end[spec.after] + spec.think_s if spec.after in end else spec.arrival
        end[spec.id] = begin + timeout_s
    return max(end.values(), default=timeout_s)


def simulate(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    *,
    replicas: int = 1,
    timeout_s: float = 60.0,
    record_chunks: bool = True,
    jumps: bool = True,
) -> SimResult:
    """Run `plan` through `replicas` engines behind a join-shortest-queue router.

    A request not finished `timeout_s` after it was sent is aborted (its KV blocks freed) and
    recorded as a timeout, as the load generator records one. Sessions unfold as the load
    generator sends them: a follow-up leaves its think time after the turn it follows ended
    well (none after a failed or abandoned turn), and a user whose first token takes longer
    than its patience cancels.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    env = simpy.Environment()
    events = EngineEvents()
    fleet = [
        Replica(env, config, events, timeout_s=timeout_s, jumps=jumps) for _ in range(replicas)
    ]
    clients = _Clients(env, plan, fleet, config)
    events.first_token.add_listener(clients.on_first_token)
    if record_chunks:
        events.tokens.add_listener(clients.on_tokens)
    events.finish.add_listener(clients.on_finish)
    events.abort.add_listener(clients.on_abort)
    env.process(clients.arrivals(plan))
    horizon = _horizon(plan, timeout_s)
    env.run(until=horizon)
    for replica in fleet:
        replica.settle()
    records = clients.records
    for rec in records.values():
        if rec.status == "ok" and (rec.end is None or rec.end - rec.start > timeout_s):
            rec.status, rec.error_kind, rec.end = "timeout", "timeout", rec.start + timeout_s
    ordered = [records[s.id] for s in plan if s.id in records]
    span = max((r.end or r.start for r in ordered), default=0.0) - min(
        (r.start for r in ordered), default=0.0
    )
    busy = [min(r.busy_time / span, 1.0) if span > 0 else 0.0 for r in fleet]
    preempted = sum(r.engine.scheduler.num_preemptions for r in fleet)
    per = max(span, 1e-9) * len(fleet)
    return SimResult(
        ordered,
        horizon,
        busy,
        preempted,
        kv_peak=max(r.usage.kv_peak for r in fleet),
        kv_mean=min(sum(r.usage.kv_s for r in fleet) / per, 1.0),
        slots_full=min(sum(r.usage.full_s for r in fleet) / per, 1.0),
    )
