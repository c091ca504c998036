"""A fleet of replicas on SimPy's clock: routing, bounded admission, a central queue, autoscaling.

Requests are admitted by `Fleet.admit`. Routed (the default), each goes straight to a replica the
`Router` picks and waits in that engine's queue. With `central_queue`, requests wait in one FIFO
at the fleet until a ready replica has a free batch slot (as an M/M/c queue does). With an
`admission_limit`, a request that would have to wait while that many already wait is refused
(HTTP 429). An autoscaler adds replicas, which serve only after a cold start (provisioning plus
model load), and removes replicas idle for `keep_alive_s` when its metric allows fewer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import simpy

from scenarios.spec import AutoscalerSpec, FleetSpec
from simulator.engine.core import Engine, EngineConfig, EngineSequence
from simulator.engine.drive import DriveLoop
from simulator.replay import coldstart
from simulator.replay.routing import Router

TIMELINE_POINTS = 1000  # the replica timeline is thinned beyond this


class ReplicaLike(Protocol):
    engine: Engine
    loop: DriveLoop

    def submit(self, seq: EngineSequence, sent: float | None = None) -> None: ...


R = TypeVar("R", bound=ReplicaLike)


@dataclass(eq=False)
class Member(Generic[R]):
    """A replica and its life in the fleet."""

    replica: R
    order: int  # the how-manieth replica of the run
    created: float
    ready: bool
    idle_since: float
    removed: float | None = None

    @property
    def engine(self) -> Engine:
        return self.replica.engine

    def alive_s(self, start: float, end: float) -> float:
        """Seconds it existed within [start, end]."""
        until = end if self.removed is None else min(self.removed, end)
        return max(0.0, until - max(self.created, start))


@dataclass(frozen=True)
class FleetStats:
    cold_starts: int = 0  # replicas the autoscaler added, each paying a cold start
    replica_seconds: float = 0.0  # replicas' lives (provisioning included) within the records' span
    peak_replicas: int = 0  # the most replicas at once (starting ones included)
    min_replicas: int = 0  # the fewest
    timeline: tuple[tuple[float, int], ...] = ()  # (time, replicas) at each change

    @property
    def replica_hours(self) -> float:
        return self.replica_seconds / 3600.0


class Fleet(Generic[R]):
    """The replicas of one simulation, as a scenario's `fleet` section sets them up (routing,
    admission, a central queue, an autoscaler, cold starts); `make(config, cold)` builds one on
    the shared clock. A cold start's model load is the section's (see `coldstart`), else the
    engine's cold_start_s."""

    def __init__(
        self,
        env: simpy.Environment,
        config: FleetSpec,
        engine: EngineConfig,
        make: Callable[[EngineConfig, bool], R],
        initial: int,
        timeout_s: float,
        on_expired: Callable[[EngineSequence, float], None],
        gpus_per_replica: int = 1,
    ):
        self.env = env
        self.config = config
        load_s = coldstart.load_seconds(config.cold_start, gpus_per_replica)
        self._load_s = engine.cold_start_s if load_s is None else load_s
        self._engine = engine
        self._make = make
        self._timeout_s = timeout_s
        self._on_expired = on_expired
        self._slots = engine.max_num_seqs
        self._rng = np.random.default_rng([config.seed, 1])  # cold-start draws
        self.router = Router(
            config.routing, config.seed, config.affinity_overload, config.affinity_min_match
        )
        self.members: list[Member[R]] = []  # present now
        self.history: list[Member[R]] = []  # every replica the run had
        self._member: dict[Engine, Member[R]] = {}
        self.queue: dict[EngineSequence, float] = {}  # central FIFO: sequence -> when it was sent
        self.where: dict[EngineSequence, Member[R]] = {}  # sequences inside a replica
        self.cold_starts = 0
        self.timeline: list[tuple[float, int]] = []
        self.peak = self.low = initial
        for _ in range(initial):
            self._add(cold=False)
        self.peak = self.low = initial  # not the counts it passed on its way up at time 0
        self._count()  # the first point, also for a fleet that starts at zero

    def start_autoscaler(self, active: Callable[[], bool]) -> None:
        """Run the autoscaler while `active()` (requests remain to be sent or answered)."""
        if self.config.autoscaler is not None:
            self.env.process(self._autoscale(self.config.autoscaler, active))

    # admission and routing

    def admit(self, seq: EngineSequence, sent: float) -> bool:
        """Place or queue `seq`; False: refused (the fleet is full, an HTTP 429)."""
        if not self.members and self.config.autoscaler is not None:
            self._add(cold=True)  # the activator: a request wakes a fleet scaled to zero
        limit = self.config.admission_limit
        if self.config.central_queue:
            if not self.queue and self._dispatch_one(seq, None):
                return True
            if limit is not None and len(self.queue) >= limit:
                return False
            self.queue[seq] = sent
            self.env.process(self._expire(seq, sent + self._timeout_s))
            return True
        router = self.router  # the ready replicas, else the starting ones
        among = None if router.engines else [m.engine for m in self.members]
        self._kv_now()
        member = self._member[router.choose(seq.prefix, among, seq.prompt_tokens)]
        if limit is not None and member.engine.load >= self._slots and self.waiting() >= limit:
            return False
        self._place(member, seq, None)
        return True

    def waiting(self) -> int:
        """Requests admitted but without a batch slot."""
        over = sum(max(0, m.engine.load - self._slots) for m in self.members)
        return over + len(self.queue)

    def released(self, seq: EngineSequence, now: float) -> None:
        """`seq` left its replica (finished or aborted): a slot may be free."""
        member = self.where.pop(seq, None)
        if member is not None:
            self.router.released(member.engine, seq)
            self.router.changed(member.engine)
            if member.engine.load == 0:
                member.idle_since = now
        self._dispatch()

    def withdraw(self, seq: EngineSequence) -> None:
        """The client gave up: drop `seq` from the queue or abort it in its replica."""
        if self.queue.pop(seq, None) is None and seq in self.where:
            self.where[seq].replica.loop.abort(seq)  # fires the abort event, then `released`

    def _place(self, member: Member[R], seq: EngineSequence, sent: float | None) -> None:
        """Submit to `member`; `sent` for a request that waited here (None: it was sent just
        now, the replica knows when)."""
        self.where[seq] = member
        self.router.placed(member.engine, seq)
        member.replica.submit(seq, sent)
        self.router.changed(member.engine)

    def _dispatch(self) -> None:
        while self.queue:
            seq, sent = next(iter(self.queue.items()))
            if not self._dispatch_one(seq, sent):
                return
            del self.queue[seq]

    def _dispatch_one(self, seq: EngineSequence, sent: float | None) -> bool:
        """Place `seq` on a ready replica with a free batch slot, if there is one."""
        router, slots = self.router, self._slots
        if not router.engines:
            return False
        if router.policy == "least_outstanding":  # the least loaded, if it has a free slot
            engine = router.choose()
            if engine.load >= slots:
                return False
        else:
            free = [e for e in router.engines if e.load < slots]
            if not free:
                return False
            self._kv_now()
            engine = router.choose(seq.prefix, free, seq.prompt_tokens)
        self._place(self._member[engine], seq, sent)
        return True

    def _kv_now(self, metric: bool = False) -> None:
        """Before a choice that reads the replicas' KV caches (least_kv and prefix_affinity
        routing, the autoscaler's kv metric): each one's jump in flight applied up to now, so
        they read as stepping would (a jump applies its steps when it ends)."""
        if metric or self.router.policy in ("least_kv", "prefix_affinity"):
            for member in self.members:
                member.replica.loop.catch_up(self.env.now)

    def _expire(self, seq: EngineSequence, deadline: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(0.0, deadline - self.env.now))
        if self.queue.pop(seq, None) is not None:
            self._on_expired(seq, self.env.now)

    # replicas coming and going

    def _add(self, cold: bool) -> None:
        env = self.env
        seconds = coldstart.draw(self.config.cold_start, self._load_s, self._rng) if cold else 0
        replica = self._make(replace(self._engine, cold_start_s=seconds), cold)
        member = Member(replica, len(self.history), env.now, False, idle_since=env.now)
        self._member[replica.engine] = member
        self.members.append(member)
        self.history.append(member)
        if cold:
            self.cold_starts += 1
        if seconds > 0:
            env.process(self._warm(member, seconds))
        else:
            self._ready(member)
        self._count()

    def _ready(self, member: Member[R]) -> None:
        member.ready = True
        self.router.add(member.engine, member.order)

    def _warm(self, member: Member[R], seconds: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(seconds)
        if member.removed is None:
            self._ready(member)
            self._dispatch()

    def _remove(self, member: Member[R]) -> None:
        member.removed = self.env.now
        self.members.remove(member)
        if member.ready:
            self.router.remove(member.engine)
        self._count()

    def _count(self) -> None:
        now, n = self.env.now, len(self.members)
        self.peak, self.low = max(self.peak, n), min(self.low, n)
        line = self.timeline
        if line and line[-1][0] == now:
            line.pop()
        if not line or line[-1][1] != n:
            line.append((now, n))
        if len(line) > TIMELINE_POINTS:  # thin out, keeping the latest point
            self.timeline = [*line[:-1:2], line[-1]]

    # the autoscaler

    def desired(self, a: AutoscalerSpec) -> int:
        engines = [m.engine for m in self.members]
        if a.metric == "in_flight":
            total = float(sum(e.load for e in engines) + len(self.queue))
        elif a.metric == "queue":
            total = float(self.waiting())
        else:
            self._kv_now(metric=True)
            total = sum(e.kv.num_used / e.kv.num_blocks for e in engines)
        want = math.ceil(total / a.target - 1e-9)
        return min(max(want, a.min_replicas), a.max_replicas)

    def _autoscale(
        self, a: AutoscalerSpec, active: Callable[[], bool]
    ) -> Generator[simpy.Event, Any, None]:
        env = self.env
        window: deque[tuple[float, int]] = deque()  # recent desired counts
        while active():
            yield env.timeout(a.interval_s)
            now, want = env.now, self.desired(a)
            window.append((now, want))
            while window[0][0] < now - a.stabilisation_s:
                window.popleft()
            n = len(self.members)
            for _ in range(want - n):
                self._add(cold=True)
            surplus = n - max(d for _, d in window)
            idle = [
                m
                for m in reversed(self.members)  # the newest first
                if m.engine.load == 0 and now - m.idle_since >= a.keep_alive_s
            ]
            for member in idle[: max(surplus, 0)]:
                self._remove(member)

    def stats(self, start: float, end: float) -> FleetStats:
        return FleetStats(
            cold_starts=self.cold_starts,
            replica_seconds=sum(m.alive_s(start, end) for m in self.history),
            peak_replicas=self.peak,
            min_replicas=self.low,
            timeline=tuple(self.timeline),
        )
