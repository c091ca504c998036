"""Replay a request plan through replicas of the engine model in SimPy's virtual time."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import simpy

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord
from simulator.drive import DriveLoop, EngineEvents, Sleep
from simulator.engine import Engine, EngineConfig
from simulator.engine import Sequence as Seq


class Replica:
    """One engine on SimPy's clock: the drive loop's sleeps become SimPy timeouts and events.

    A `cold` replica serves only after the engine's cold_start_s (a replica just scaled up). A
    request submitted `overhead_s` after it was sent is aborted `timeout_s` after it was sent.
    """

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig,
        events: EngineEvents,
        cold: bool = False,
        timeout_s: float | None = None,
    ):
        self.env = env
        self.engine = Engine(config)
        self.loop = DriveLoop(self.engine, lambda: env.now, events, cold)
        self._timeout_s = timeout_s
        self._wake: simpy.Event | None = None
        env.process(self._run())

    @property
    def busy_time(self) -> float:
        return self.loop.busy_s

    def submit(self, seq: Seq) -> None:
        deadline = None
        if self._timeout_s is not None:  # counted from the send, overhead_s before the submit
            deadline = self.env.now - self.engine.config.overhead_s + self._timeout_s
        self.loop.submit(seq, deadline)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for command in self.loop.run():
            if isinstance(command, Sleep):
                yield env.timeout(command.seconds)
            else:
                self._wake = env.event()
                yield self._wake


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    horizon_s: float
    busy_fraction: list[float]  # per replica, of the span from first send to last response
    preemptions: int = 0  # over the fleet


def simulate(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    *,
    replicas: int = 1,
    timeout_s: float = 60.0,
    record_chunks: bool = True,
) -> SimResult:
    """Run `plan` through `replicas` engines behind a join-shortest-queue router.

    A request not finished `timeout_s` after it was sent is aborted (its KV blocks freed) and
    recorded as a timeout, as the load generator records one.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    env = simpy.Environment()
    records: dict[str, RequestRecord] = {}

    def on_token(seq: Seq, now: float) -> None:
        rec = records[seq.id]
        if rec.first_token is None:
            rec.first_token = now
        if record_chunks:
            rec.chunk_times.append(now)

    def on_finish(seq: Seq, now: float) -> None:
        rec = records[seq.id]
        rec.end = now
        rec.output_tokens = seq.generated

    events = EngineEvents()
    events.token.add_listener(on_token)
    events.finish.add_listener(on_finish)
    fleet = [Replica(env, config, events, timeout_s=timeout_s) for _ in range(replicas)]

    def arrivals() -> Generator[simpy.Event, Any, None]:
        for spec in sorted(plan, key=lambda s: s.arrival):
            at = spec.arrival + config.overhead_s
            if at > env.now:
                yield env.timeout(at - env.now)
            rec = RequestRecord(
                id=spec.id,
                intended_start=spec.arrival,
                start=spec.arrival,
                prompt_tokens=spec.prompt_tokens,
                token_source="plan",
                source="simulated",
                persona=spec.persona,
                session=spec.session,
                turn=spec.turn,
            )
            records[spec.id] = rec
            seq = Seq(spec.id, spec.prompt_tokens, spec.max_tokens, spec.prefix)
            replica = min(fleet, key=lambda r: r.engine.load)
            if not replica.engine.fits_ever(seq):
                rec.status, rec.error_kind, rec.end = "rejected", "context_length", env.now
                continue
            replica.submit(seq)

    env.process(arrivals())
    horizon = max((s.arrival for s in plan), default=0.0) + timeout_s
    env.run(until=horizon)
    for rec in records.values():
        if rec.status == "ok" and (rec.end is None or rec.end - rec.start > timeout_s):
            rec.status, rec.error_kind, rec.end = "timeout", "timeout", rec.start + timeout_s
    ordered = [records[s.id] for s in plan if s.id in records]
    span = max((r.end or r.start for r in ordered), default=0.0) - min(
        (r.start for r in ordered), default=0.0
    )
    busy = [min(r.busy_time / span, 1.0) if span > 0 else 0.0 for r in fleet]
    preempted = sum(r.engine.scheduler.num_preemptions for r in fleet)
    return SimResult(ordered, horizon, busy, preempted)
