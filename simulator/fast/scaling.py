"""The autoscaler and replicas that come and go, on the fast core's tables
(`simulator.replay.fleet.Fleet`: `_add`, `_ready`, `_warm`, `_remove`, `_count`, `desired`,
`_autoscale`). A replica is a row, the rows in the order the replicas came; the router picks
among the ready ones, or among those starting when none is ready (`routable`)."""

from __future__ import annotations

import numpy as np

from simulator.fast.layout import (
    COLD,
    COLD_S,
    COLD_STARTS,
    COUNT,
    COUNTS,
    CREATED,
    E_READY,
    E_TICK,
    E_WAKE,
    E_WARM,
    FREE,
    GONE,
    IDLE_SINCE,
    IN_FLIGHT,
    LIFE,
    MEMBERS,
    NORMAL,
    OUTSTANDING,
    OVER_ALL,
    Q_LEN,
    QUEUE,
    READY,
    READY_N,
    REMOVED,
    ROWS,
    RUN_LEN,
    S_INTERVAL,
    S_KEEP_ALIVE,
    S_MAX,
    S_METRIC,
    S_MIN,
    S_STABILISATION,
    S_TARGET,
    STARTING,
    TIMER,
    TIMER_SEQ,
    URGENT,
    W_LEN,
    WIN_H,
    WIN_N,
    A,
    Config,
    Events,
    State,
    jit,
)
from simulator.fast.queues import _load_changed, _schedule


@jit(inline="always")
def routable(qi: A, ctr: A, q: int) -> bool:
    """Whether the router may pick replica `q`: a ready one, or one starting if none is."""
    life = qi[q, LIFE]
    return bool(life == READY or (life == STARTING and ctr[READY_N] == 0))


@jit(inline="always")
def _present(qi: A, q: int) -> bool:
    """Whether replica `q` is one of the fleet's now (starting or ready)."""
    return bool(qi[q, LIFE] == READY or qi[q, LIFE] == STARTING)


@jit
def nth_routable(qi: A, ctr: A, k: int) -> int:
    """The `k`-th replica the router may pick, in fleet order."""
    if ctr[READY_N] == len(qi):  # a fixed fleet: every row
        return k
    for q in range(ctr[ROWS]):
        if routable(qi, ctr, q):
            if k == 0:
                return q
            k -= 1
    return -1


@jit
def n_routable(ctr: A) -> int:
    return int(ctr[READY_N] if ctr[READY_N] else ctr[MEMBERS])


@jit
def least_starting(qi: A, ctr: A) -> int:
    """Of the replicas starting, the fewest running or waiting, the first on ties."""
    best, best_load = -1, 0
    for q in range(ctr[ROWS]):
        if qi[q, LIFE] == STARTING:
            load = qi[q, RUN_LEN] + qi[q, W_LEN]
            if best < 0 or load < best_load:
                best, best_load = q, load
    return best


@jit
def rows_room(e: Events, c: Config) -> bool:
    """Whether the rows hold the replicas one evaluation (or the activator) may add."""
    return bool(e.ctr[ROWS] + int(c.scaler[S_MAX]) + 1 <= c.replicas)


@jit
def add_replica(w: State, e: Events, c: Config, now: float) -> None:
    """A replica added, cold (`Fleet._add`): its drive loop's first wake-up now, which sleeps
    its cold start's seconds first (drawn for its row beforehand), and the process that makes
    it ready after them."""
    qi, qf, ctr = w.qi, w.qf, e.ctr
    r = ctr[ROWS]
    ctr[ROWS] += 1
    seconds = qf[r, COLD_S]
    qf[r, CREATED] = qf[r, IDLE_SINCE] = now
    qi[r, LIFE] = STARTING
    qi[r, TIMER], qi[r, COLD], qi[r, TIMER_SEQ] = 1, seconds > 0, ctr[COUNT]
    _schedule(e.t, e.i, ctr, now, NORMAL, E_WAKE, r)
    ctr[MEMBERS] += 1
    ctr[COLD_STARTS] += 1
    if seconds > 0:
        _schedule(e.t, e.i, ctr, now, URGENT, E_WARM, r)
    else:
        make_ready(w, e, c, r)
    _count(e, now)


@jit
def make_ready(w: State, e: Events, c: Config, r: int) -> None:
    """Replica `r` serves: the router may pick it (`Fleet._ready`)."""
    w.qi[r, LIFE] = READY
    e.ctr[READY_N] += 1
    _load_changed(w.loads, w.qi, e.ctr, c.max_num_seqs, r)


@jit
def cold_sleep(w: State, e: Events, r: int, now: float) -> None:
    """A cold replica's first wake-up: its drive loop sleeps its cold start first."""
    w.qi[r, COLD] = 0
    w.qi[r, TIMER_SEQ] = e.ctr[COUNT]
    _schedule(e.t, e.i, e.ctr, now + w.qf[r, COLD_S], NORMAL, E_WAKE, r)


@jit
def warm_up(w: State, e: Events, r: int, now: float) -> None:
    """`Fleet._warm`'s process starts: ready after the cold start."""
    _schedule(e.t, e.i, e.ctr, now + w.qf[r, COLD_S], NORMAL, E_READY, r)


@jit
def _remove(w: State, e: Events, c: Config, r: int, now: float) -> None:
    qi = w.qi
    w.qf[r, REMOVED] = now
    e.ctr[MEMBERS] -= 1
    if qi[r, LIFE] == READY:
        e.ctr[READY_N] -= 1
    qi[r, LIFE] = GONE
    _load_changed(w.loads, qi, e.ctr, c.max_num_seqs, r)
    _count(e, now)


@jit
def _count(e: Events, now: float) -> None:
    """The replicas present now, logged (`Fleet._count` reads the log afterwards)."""
    n = e.ctr[COUNTS]
    e.counts[n, 0], e.counts[n, 1] = now, e.ctr[MEMBERS]
    e.ctr[COUNTS] = n + 1


@jit
def _desired(w: State, e: Events, c: Config) -> int:
    """`Fleet.desired`: the metric summed over the replicas present, per target, in bounds."""
    qi, ctr, a = w.qi, e.ctr, c.scaler
    if a[S_METRIC] == IN_FLIGHT:
        load = ctr[Q_LEN]
        for q in range(ctr[ROWS]):
            if _present(qi, q):
                load += qi[q, RUN_LEN] + qi[q, W_LEN]
        total = float(load)
    elif a[S_METRIC] == QUEUE:
        total = float(ctr[OVER_ALL] + ctr[Q_LEN])
    else:
        total = 0.0
        for q in range(ctr[ROWS]):
            if _present(qi, q):
                total += (c.num_blocks - qi[q, FREE]) / c.num_blocks
    want = int(np.ceil(total / a[S_TARGET] - 1e-9))
    return min(max(want, int(a[S_MIN])), int(a[S_MAX]))


@jit
def tick(w: State, e: Events, c: Config, now: float) -> None:
    """The autoscaler's evaluation (`Fleet._autoscale`): replicas added up to what it wants;
    the newest idle ones kept alive long enough removed, down to the most it wanted within the
    stabilisation window; its next evaluation while users are not done."""
    qi, qf, ctr, win, a = w.qi, w.qf, e.ctr, e.window, c.scaler
    want = _desired(w, e, c)
    room = len(win)
    last = (ctr[WIN_H] + ctr[WIN_N]) % room
    win[last, 0], win[last, 1] = now, want
    ctr[WIN_N] += 1
    while win[ctr[WIN_H], 0] < now - a[S_STABILISATION]:
        ctr[WIN_H] = (ctr[WIN_H] + 1) % room
        ctr[WIN_N] -= 1
    n = ctr[MEMBERS]
    for _ in range(want - n):
        add_replica(w, e, c, now)
    most = 0
    for k in range(ctr[WIN_N]):
        most = max(most, int(win[(ctr[WIN_H] + k) % room, 1]))
    surplus = n - most
    for q in range(ctr[ROWS] - 1, -1, -1):  # the newest first
        if surplus <= 0:
            break
        present = _present(qi, q)
        idle = qi[q, RUN_LEN] + qi[q, W_LEN] == 0 and now - qf[q, IDLE_SINCE] >= a[S_KEEP_ALIVE]
        if present and idle:
            _remove(w, e, c, q, now)
            surplus -= 1
    if ctr[OUTSTANDING] > 0:
        _schedule(e.t, e.i, ctr, now + a[S_INTERVAL], NORMAL, E_TICK, 0)


@jit
def start_scaler(e: Events, c: Config, now: float) -> None:
    """The autoscaler's process starts: its first evaluation an interval on, if users remain."""
    if e.ctr[OUTSTANDING] > 0:
        _schedule(e.t, e.i, e.ctr, now + c.scaler[S_INTERVAL], NORMAL, E_TICK, 0)
