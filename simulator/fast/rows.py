"""The Python side of a fleet whose replicas come and go (an autoscaler, `simulator.fast.
scaling`): a row per replica the run has, with its cold start drawn beforehand (as
`Fleet._add` draws them, in the order replicas come), more rows while the kernel pauses, and the
fleet's figures from the kernel's log of replica counts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scenarios.spec import AutoscalerSpec, FleetSpec
from simulator.engine.core import EngineConfig
from simulator.fast import layout
from simulator.fast.layout import Config, Events, State
from simulator.replay import coldstart
from simulator.replay.fleet import TIMELINE_POINTS, FleetStats

Draws = Callable[[int], np.ndarray]  # the next n cold starts' seconds


def cold_starts(fleet: FleetSpec, engine: EngineConfig, gpus_per_replica: int) -> Draws:
    """The cold starts of the replicas the autoscaler adds, drawn in order (`Fleet._add`)."""
    load_s = coldstart.load_seconds(fleet.cold_start, gpus_per_replica)
    load = engine.cold_start_s if load_s is None else load_s
    rng = np.random.default_rng([fleet.seed, 1])
    return lambda n: np.array([coldstart.draw(fleet.cold_start, load, rng) for _ in range(n)])


def first_rows(replicas: int, scaler: AutoscalerSpec | None) -> int:
    """Rows to start with: the fleet, and room for an evaluation's additions twice over."""
    return replicas if scaler is None else replicas + 2 * scaler.max_replicas + 2


def window(scaler: AutoscalerSpec, until: float) -> int:
    """Room for the autoscaler's evaluations within its stabilisation window (or the run)."""
    return int(min(scaler.stabilisation_s, until) / scaler.interval_s) + 3


def settings(scaler: AutoscalerSpec | None) -> np.ndarray:
    """`Config.scaler`: the autoscaler's numbers, in `layout`'s order (none: empty)."""
    if scaler is None:
        return np.empty(0)
    metric = {"in_flight": layout.IN_FLIGHT, "queue": layout.QUEUE, "kv": layout.KV}
    return np.array(
        [
            metric[scaler.metric], scaler.target, scaler.interval_s, scaler.stabilisation_s,
            scaler.min_replicas, scaler.max_replicas, scaler.keep_alive_s,
        ],
        np.float64,
    )  # fmt: skip


def start(events: Events, replicas: int, users: int) -> None:
    """The counters of a fleet of `replicas`, all ready, and of `users` not done yet; the
    count log's first point."""
    ctr = events.ctr
    ctr[layout.ROWS] = ctr[layout.MEMBERS] = ctr[layout.READY_N] = replicas
    ctr[layout.OUTSTANDING] = users
    events.counts[0] = 0.0, replicas
    ctr[layout.COUNTS] = 1


def more_rows(
    state: State, events: Events, c: Config, n: int, draws: Draws
) -> tuple[State, Events, Config]:
    """The tables with twice the replica rows (the new ones' cold starts drawn), the event heap
    and the count log with room for them."""
    old = c.replicas
    rows = 2 * old
    if rows > 1 << 24:  # `prefix.ROW_BITS`
        raise ValueError(f"an autoscaler that adds over {1 << 24:,} replicas in one run")
    qi, qf, phases, wakes = layout.replica_rows(rows, c.num_blocks, c.block_size, c.max_num_seqs)
    olds = (state.qi, state.qf, state.phases, state.wakes)
    for new, was in zip((qi, qf, phases, wakes), olds, strict=True):
        new[:old] = was
    qf[old:, layout.COLD_S] = draws(rows - old)
    room = 4 * n + 4 * rows + 4
    t, i = np.empty(room), np.empty((room, 4), np.int64)
    size = int(events.ctr[layout.SIZE])
    t[:size], i[:size] = events.t[:size], events.i[:size]
    counts = np.empty((2 * rows + 1, 2))
    counts[: len(events.counts)] = events.counts
    state = state._replace(qi=qi, qf=qf, phases=phases, wakes=wakes, loads=layout.load_tree(qi))
    return state, events._replace(t=t, i=i, counts=counts), c._replace(replicas=rows)


def fleet_stats(
    state: State, events: Events, initial: int, first: float, last: float
) -> FleetStats:
    """`Fleet.stats` over [first, last]: the log of counts replayed as `Fleet._count` keeps
    its peak, low and timeline; each replica's life within the span."""
    peak = low = initial
    line: list[tuple[float, int]] = []
    for t, n in events.counts[: events.ctr[layout.COUNTS]].tolist():
        n = int(n)
        peak, low = max(peak, n), min(low, n)
        if line and line[-1][0] == t:
            line.pop()
        if not line or line[-1][1] != n:
            line.append((t, n))
        if len(line) > TIMELINE_POINTS:
            line = [*line[:-1:2], line[-1]]
    return FleetStats(
        int(events.ctr[layout.COLD_STARTS]),
        sum(lives(state, events, first, last)),
        peak,
        low,
        tuple(line),
    )


def lives(state: State, events: Events, first: float, last: float) -> list[float]:
    """Each replica's seconds within [first, last] (`Member.alive_s`), in the order they came."""
    rows = int(events.ctr[layout.ROWS])
    out = []
    for created, removed in state.qf[:rows, [layout.CREATED, layout.REMOVED]].tolist():
        until = last if np.isnan(removed) else min(removed, last)
        out.append(max(0.0, until - max(created, first)))
    return out
