"""Replay a request plan through replicas of the engine model in SimPy's virtual time."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import simpy

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord
from scenarios.spec import FleetSpec, TargetFaults
from scenarios.table import RequestTable
from scenarios.users import Ended, Send, Session, Users, horizon
from simulator.engine.core import Engine, EngineConfig, EngineSequence
from simulator.engine.drive import DriveLoop, EngineEvents, Jump, Sleep, Tokens, Usage
from simulator.replay.fleet import Fleet, FleetStats
from simulator.replay.ledger import (
    ABANDONED,
    CANCELLED,
    CONTEXT_LENGTH,
    ERROR,
    HTTP_429,
    HTTP_500,
    KINDS,
    OK,
    REJECTED,
    TIMED_OUT,
    Ledger,
)

Core = Literal["auto", "reference", "fast"]


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
        self._commands = self.loop.run()
        self._timer: simpy.Event | None = None  # what calls `_next` back; None while idle
        self._wake()

    @property
    def load(self) -> int:
        return len(self.engine.running) + len(self.engine.waiting)

    @property
    def busy_time(self) -> float:
        return self.loop.busy_s

    @property
    def usage(self) -> Usage:
        return self.loop.usage

    def submit(self, seq: EngineSequence, sent: float | None = None) -> None:
        """Queue `seq`, sent at `sent` (default: overhead_s ago; later for a fleet's queue)."""
        deadline = None
        if self._timeout_s is not None:  # counted from the send, overhead_s before the submit
            if sent is None:
                sent = self.env.now - self.engine.config.overhead_s
            deadline = sent + self._timeout_s
        self.loop.submit(seq, deadline)
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
    """A simulated run: its requests as columns (`table`); `records` makes them objects."""

    table: RequestTable
    ledger: Ledger = field(repr=False)
    horizon_s: float
    busy_fraction: list[float]  # per replica, of the span from first send to last response
    preemptions: int = 0  # over the fleet
    recomputed_tokens: int = 0  # computed tokens the preemptions discarded (computed again)
    kv_peak: float = 0.0  # the fullest any replica's KV cache got (fraction of its blocks)
    kv_mean: float = 0.0  # replicas' KV use averaged over the span (idle time counts as 0)
    slots_full: float = 0.0  # share of the span with every batch slot taken, replica mean
    rejected: int = 0  # refused for want of room: HTTP 429 from the fleet, or too long a context
    timeouts: int = 0  # aborted by the client's timeout (their KV blocks freed)
    abandoned: int = 0  # cancelled by an impatient user before the first token
    fleet: FleetStats = field(default_factory=FleetStats)  # cold starts, replica-seconds
    core: str = "reference"  # which core ran it: the reference (SimPy) or the fast one

    @cached_property
    def records(self) -> list[RequestRecord]:
        """Every attempt as a record, in plan order (retried attempts before their last)."""
        return self.ledger.records()


class _Clients:
    """The plan's users (`scenarios.users`) on SimPy's clock, a row each in the ledger as the
    load generator keeps records: an attempt reaches the fleet `overhead_s` after it is sent, a
    timeout ends at the client's deadline (tokens after it unseen), a 429 from the fleet (or a
    request too long for any replica) ends its attempt as the user's loop then says, a user
    whose first token has not come at its give-up time abandons. `outstanding` counts the users
    not done yet, those still to start included."""

    def __init__(
        self,
        env: simpy.Environment,
        plan: Sequence[RequestSpec],
        config: EngineConfig,
        timeout_s: float,
        fleet: Fleet[Replica],
        keep_chunks: bool,
        faults: TargetFaults | None = None,
    ):
        self.env = env
        self.timeout_s = timeout_s
        self.fleet = fleet
        self.overhead_s = config.overhead_s
        self.capacity = config.num_blocks * config.block_size  # KV tokens of one replica
        self.ledger = ledger = Ledger(plan, keep_chunks)
        self.index = ledger.index
        self.users = Users(plan)
        self._sessions: dict[int, Session] = {}  # a row's user, while its attempt is out
        self._seqs: dict[int, EngineSequence] = {}  # a patient request's latest attempt
        self.retry_after_s = fleet.config.retry_after_s
        self.outstanding = len(self.users.openers)
        self.faults = faults if faults is not None and faults.any else None
        self._faults = self.faults.draws() if self.faults else None

    def arrivals(self) -> Generator[simpy.Event, Any, None]:
        env, users = self.env, self.users
        for opener in users.openers:
            at = opener.arrival + self.overhead_s
            if at > env.now:
                yield env.timeout(at - env.now)
            session = users.session(opener)
            self.send(session, next(session))

    def send(self, session: Session, command: Send) -> None:
        """`command`'s attempt reaches the fleet now (`overhead_s` after it was sent)."""
        now, ledger, spec = self.env.now, self.ledger, command.spec
        i = self.index[spec.id]
        self._sessions[i] = session
        ledger.send(i, command.intended, command.at, command.attempt)
        if self._faults is not None and self._injected(i, self._faults.next()):
            return
        seq = EngineSequence(spec.id, spec.prompt_tokens, spec.max_tokens, spec.prefix)
        if seq.prompt_tokens + seq.max_tokens > self.capacity:
            ledger.fail(i, REJECTED, CONTEXT_LENGTH, now)
            self._ended(i, Ended("rejected", now))
            return
        if not self.fleet.admit(seq, command.at):
            ledger.fail(i, REJECTED, HTTP_429, now)
            self._ended(i, Ended("rejected", now, 429, self.retry_after_s))
            return
        if command.give_up < math.inf:
            if command.attempt == 0:  # one patience per request, over its attempts
                self._later(command.give_up, lambda: self._patience(i, command.give_up))
            self._seqs[i] = seq

    def _injected(self, i: int, fault: str | None) -> bool:
        """Answer as the reference target does a fault it injects before generating (a 429 with
        its Retry-After, a 500); True if it did. Its other faults change no outcome here."""
        now = self.env.now
        if fault == "reject_429":
            assert self.faults is not None
            self.ledger.fail(i, REJECTED, HTTP_429, now)
            self._ended(i, Ended("rejected", now, 429, self.faults.retry_after_s))
            return True
        if fault == "error_500":
            self.ledger.fail(i, ERROR, HTTP_500, now)
            self._ended(i, Ended("error", now, 500))
            return True
        return False

    def _ended(self, i: int, ended: Ended) -> None:
        """Row `i`'s attempt ended so: its user's next command, sent at its time."""
        session = self._sessions.pop(i)
        try:
            command = session.send(ended)
        except StopIteration:
            self.outstanding -= 1
            return
        if self.index[command.spec.id] == i:
            self.ledger.retry(i)  # the attempt is kept apart; the row takes the next
        self._later(command.at + self.overhead_s, lambda: self.send(session, command))

    def _later(self, at: float, action: Callable[[], None]) -> None:
        timer = self.env.timeout(max(0.0, at - self.env.now))
        timer.callbacks.append(lambda _: action())

    def _patience(self, i: int, give_up: float) -> None:
        ledger = self.ledger  # its latest attempt's row
        seq = self._seqs.pop(i)
        if math.isnan(ledger.first[i]) and math.isnan(ledger.end[i]):
            ledger.fail(i, CANCELLED, ABANDONED, give_up)
            self.fleet.withdraw(seq)
            self._ended(i, Ended("cancelled", give_up))

    def on_tokens(self, tokens: Tokens, now: float) -> None:
        """Chunk times in bulk: a step's, or every step's of a jump."""
        chunks, index, times = self.ledger.chunks, self.index, tokens.times
        assert chunks is not None
        for seq in tokens.sequences:
            chunks[index[seq.id]].extend(times)

    def on_first_token(self, seq: EngineSequence, now: float) -> None:
        self.ledger.first[self.index[seq.id]] = now

    def on_finish(self, seq: EngineSequence, now: float) -> None:
        i, ledger = self.index[seq.id], self.ledger
        if now > ledger.start[i] + self.timeout_s:  # in a step past the client's deadline
            self._timed_out(i)
        else:
            ledger.end[i] = now
            ledger.output[i] = seq.generated
            ledger.cached[i] = seq.cached_prompt_tokens
            self._ended(i, Ended("ok", now))
        self.fleet.released(seq, now)

    def on_abort(self, seq: EngineSequence, now: float) -> None:
        """A timeout (a patience abort marked its row already): the session ends here."""
        i = self.index[seq.id]
        if self.ledger.status[i] == OK:
            self._timed_out(i)
        self.fleet.released(seq, now)

    def _timed_out(self, i: int) -> None:
        end = self.ledger.start[i] + self.timeout_s
        self.ledger.time_out(i, end)
        self._ended(i, Ended("timeout", end))


def simulate(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    *,
    replicas: int = 1,
    timeout_s: float = 60.0,
    record_chunks: bool = True,
    fleet: FleetSpec | None = None,
    gpus_per_replica: int = 1,
    faults: TargetFaults | None = None,
    jumps: bool = True,
    core: Core = "auto",
) -> SimResult:
    """Run `plan` through `replicas` engines behind a router (join-shortest-queue by default;
    `fleet`, a scenario's fleet section, sets the routing, an admission limit, a central queue
    and an autoscaler, with which `replicas` is the starting count, within its [min_replicas,
    max_replicas]; `gpus_per_replica` splits a cold start's model load, see `coldstart`).
    With `faults`, requests meet the 429s and 500s the reference target would inject (drawn
    alike, in the order they reach the fleet): the simulator as its twin.

    A request not finished `timeout_s` after it was sent is aborted (its KV blocks freed) and
    recorded as a timeout, as the load generator records one. Sessions unfold as the load
    generator sends them: a follow-up leaves its think time after the turn it follows ended
    well (none after a failed or abandoned turn), and a user whose first token takes longer
    than its patience cancels. With `jumps` off, engines step one step at a time (the same
    results, slower: the reference for the jumps' exactness).

    `core` picks what runs it: the fast core (`simulator.fast`, compiled, the same records)
    where it covers the simulation, else this reference ("auto"), or either one always
    ("reference"; "fast", a ValueError saying why where it does not cover it). The result
    says which (`core`).
    """
    fleet = fleet or FleetSpec()
    if core != "reference":
        from simulator.fast.sim import simulate_fast, unsupported  # compiles on first use

        why = unsupported(plan, config, fleet, faults)
        if why is None:
            return simulate_fast(
                plan, config, replicas=replicas, timeout_s=timeout_s,
                record_chunks=record_chunks, fleet=fleet, gpus_per_replica=gpus_per_replica,
                faults=faults, jumps=jumps,
            )  # fmt: skip
        if core == "fast":
            raise ValueError(f"the fast core does not run this simulation yet: {why}")
    return _simulate_reference(
        plan, config, replicas, timeout_s, record_chunks, fleet, gpus_per_replica, faults, jumps
    )


def _simulate_reference(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    replicas: int,
    timeout_s: float,
    record_chunks: bool,
    fleet: FleetSpec,
    gpus_per_replica: int,
    faults: TargetFaults | None,
    jumps: bool,
) -> SimResult:
    """`simulate` on the reference: SimPy's clock, the engine's drive loop per replica."""
    scaler = fleet.autoscaler
    low = 1 if scaler is None else scaler.min_replicas
    high = replicas if scaler is None else scaler.max_replicas
    if not low <= replicas <= high:
        raise ValueError(f"replicas must be in [{low}, {high}], got {replicas}")
    env = simpy.Environment()
    events = EngineEvents()

    def make(engine: EngineConfig, cold: bool) -> Replica:
        return Replica(env, engine, events, cold=cold, timeout_s=timeout_s, jumps=jumps)

    def expired(seq: EngineSequence, now: float) -> None:  # timed out in the fleet's queue
        clients.on_abort(seq, now)

    pool = Fleet(env, fleet, config, make, replicas, timeout_s, expired, gpus_per_replica)
    clients = _Clients(env, plan, config, timeout_s, pool, record_chunks, faults)
    events.first_token.add_listener(clients.on_first_token)
    if record_chunks:
        events.tokens.add_listener(clients.on_tokens)
    events.finish.add_listener(clients.on_finish)
    events.abort.add_listener(clients.on_abort)
    env.process(clients.arrivals())
    pool.start_autoscaler(lambda: clients.outstanding > 0)
    until = horizon(plan, timeout_s) or timeout_s
    env.run(until=until)
    for member in pool.history:
        member.replica.settle()
    clients.ledger.close(timeout_s)
    return _result(clients.ledger, pool, until, fixed=scaler is None)


def _result(ledger: Ledger, pool: Fleet[Replica], until: float, fixed: bool) -> SimResult:
    """The run's records as columns, and what its replicas did over the records' span."""
    history = pool.history
    return result_of(
        ledger,
        until,
        [m.replica.usage for m in history],
        lambda first, last: [m.alive_s(first, last) for m in history],
        sum(m.engine.scheduler.num_preemptions for m in history),
        sum(m.engine.scheduler.recomputed_tokens for m in history),
        pool.stats,
        fixed,
    )


def result_of(
    ledger: Ledger,
    until: float,
    usage: list[Usage],
    lives: Callable[[float, float], list[float]],
    preempted: int,
    recomputed: int,
    stats: Callable[[float, float], FleetStats],
    fixed: bool,
    core: str = "reference",
) -> SimResult:
    """A run's result from its ledger and its replicas (their `usage`, each one's seconds alive
    within a span `lives(first, last)`, the fleet's `stats` over it), whichever core ran it."""
    table = ledger.table()
    first = float(table.start.min()) if len(table) else 0.0
    last = float(np.fmax(table.end, table.start).max()) if len(table) else 0.0
    span = last - first
    busy = [
        min(u.busy_s / alive, 1.0) if alive > 0 else 0.0
        for u, alive in zip(usage, lives(first, last), strict=True)
    ]
    fleet = stats(first, last)
    # replica-seconds: for a fixed fleet, its size x the span (as before autoscaling existed)
    per = max(span, 1e-9) * len(usage) if fixed else fleet.replica_seconds
    per = max(per, 1e-9)
    final = table.select(~table.retried)
    kinds = np.bincount(final.error_kind[final.error_kind >= 0], minlength=len(KINDS))
    return SimResult(
        table,
        ledger,
        until,
        busy,
        preempted,
        recomputed,
        kv_peak=max((u.kv_peak for u in usage), default=0.0),
        kv_mean=min(sum(u.kv_s for u in usage) / per, 1.0),
        slots_full=min(sum(u.full_s for u in usage) / per, 1.0),
        rejected=int((final.status == REJECTED).sum()),
        timeouts=int(kinds[TIMED_OUT]),
        abandoned=int(kinds[ABANDONED]),
        fleet=fleet,
        core=core,
    )
