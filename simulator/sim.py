"""Replay a request plan through replicas of the engine model in SimPy's virtual time."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import simpy

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord
from simulator.engine import Engine, EngineConfig
from simulator.engine import Sequence as Seq

TokenHook = Callable[[Seq, float], None]


class Replica:
    """One engine on SimPy's clock: steps while it has work, sleeps on an event while idle.

    A `cold` replica serves only after the engine's cold_start_s (a replica just scaled up).
    """

    def __init__(
        self,
        env: simpy.Environment,
        config: EngineConfig,
        on_token: TokenHook,
        on_finish: TokenHook,
        cold: bool = False,
    ):
        self.env = env
        self.engine = Engine(config)
        self._on_token = on_token
        self._on_finish = on_finish
        self._wake = env.event()
        self.busy_time = 0.0
        env.process(self._run(cold))

    def submit(self, seq: Seq) -> None:
        self.engine.add(seq)
        if not self._wake.triggered:
            self._wake.succeed()

    def _run(self, cold: bool) -> Generator[simpy.Event, Any, None]:
        if cold and self.engine.config.cold_start_s > 0:
            yield self.env.timeout(self.engine.config.cold_start_s)
        while True:
            if not self.engine.has_work:
                self._wake = self.env.event()
                yield self._wake
                continue
            step = self.engine.plan_step()
            yield self.env.timeout(step.duration)
            self.busy_time += step.duration
            finished = self.engine.complete(step)
            now = self.env.now
            for seq in step.sequences:
                self._on_token(seq, now)
            for seq in finished:
                self._on_finish(seq, now)


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    horizon_s: float
    busy_fraction: list[float]  # per replica, of the span from first send to last response


def simulate(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    *,
    replicas: int = 1,
    timeout_s: float = 60.0,
    record_chunks: bool = True,
) -> SimResult:
    """Run `plan` through `replicas` engines behind a join-shortest-queue router.

    A request not finished `timeout_s` after it was sent is recorded as a timeout, as the
    load generator records one.
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

    fleet = [Replica(env, config, on_token, on_finish) for _ in range(replicas)]

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
            seq = Seq(spec.id, spec.prompt_tokens, spec.max_tokens)
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
    return SimResult(ordered, horizon, busy)
