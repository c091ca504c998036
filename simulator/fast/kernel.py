"""The fast core's event loop, compiled by numba: the reference model (`simulator.replay.sim`
over `simulator.engine`) for the fleets it covers (`simulator.fast.sim.unsupported`), on arrays.

Equal records (each request ending the same way at the same times) follow only from applying
the same rules in the same order, so each function of the package mirrors one of the
reference's and says which: events at one time run in SimPy's order (time, priority, then the
order they were scheduled), a replica plans a step at the loop's top after each step's end or a
wake-up, a step applies as `Scheduler.update` does (decode tokens, blocks due, decodes that
finish, prefills), and each finished request's client handler runs in the order the engine
reports it. No object per request and no Python per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from simulator.fast.clients import (
    _arrivals,
    _dispatch,
    _ended,
    _expire_queued,
    _patience,
    _released,
    _send,
    _timed_out,
)
from simulator.fast.engine import _leave, _plan, _update
from simulator.fast.jumps import _land, _settle, kv_now
from simulator.fast.layout import (
    ABORTED,
    ARG,
    ARRIVAL,
    AT,
    COLD,
    COUNT,
    DEADLINE,
    DL_H,
    DL_N,
    DL_T,
    DUE,
    E_ARRIVAL,
    E_EXPIRE,
    E_PATIENCE,
    E_QUEUED,
    E_SCALER,
    E_SEND,
    E_START,
    E_STEP_END,
    E_TICK,
    E_WAKE,
    E_WARM,
    END,
    EVENT,
    GEN,
    J_STOP,
    KV,
    L_OK,
    LIFE,
    NORMAL,
    OUTPUT,
    ROWS,
    RUN_LEN,
    RUNNING,
    S_METRIC,
    SEQ,
    SIZE,
    ST,
    START,
    STARTING,
    STATUS,
    TIMER,
    TIMER_SEQ,
    URGENT,
    W_H,
    W_LEN,
    W_N,
    W_P,
    W_T,
    WAITING,
    Config,
    Events,
    State,
    jit,
)
from simulator.fast.prefix import room_for_an_event
from simulator.fast.queues import _load_changed, _schedule, _take, _unlink
from simulator.fast.scaling import (
    cold_sleep,
    make_ready,
    rows_room,
    start_scaler,
    tick,
    warm_up,
)


@jit(inline="always")
def _on_finish(w: State, e: Events, c: Config, r: int, s: int, now: float) -> None:
    """`_Clients.on_finish`: answered, or timed out when the step ended past its deadline;
    then its replica released it."""
    if now > w.rf[s, START] + c.timeout_s:
        _timed_out(w, e, c, s, now)
    else:
        w.rf[s, END] = now
        w.ri[s, OUTPUT] = w.ri[s, GEN]
        _ended(w, e, c, s, True, now, now)
    _released(w, e, c, r, s, now)


@jit(inline="always")
def _expire(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """Abort each request whose deadline passed (`DriveLoop._expire`); its client times out."""
    ri, rf, qi = w.ri, w.rf, w.qi
    while qi[r, DL_H] >= 0 and rf[qi[r, DL_H], DEADLINE] <= now:
        s = qi[r, DL_H]
        qi[r, DL_H] = ri[s, DL_N]
        if qi[r, DL_H] < 0:
            qi[r, DL_T] = -1
        if ri[s, ST] == RUNNING:
            _leave(w, c, r, s)
        elif ri[s, ST] == WAITING:
            _unlink(ri, qi, W_P, W_N, W_H, W_T, r, s)
            qi[r, W_LEN] -= 1
        else:
            continue
        ri[s, ST] = ABORTED
        if ri[s, STATUS] == L_OK:
            _timed_out(w, e, c, s, now)
        _released(w, e, c, r, s, now)


@jit(inline="always")
def _drive(w: State, e: Events, c: Config, r: int, now: float, stepped: bool) -> None:
    """Replica `r`'s drive loop, resumed now after a step (`stepped`) or a wake-up, until it
    sleeps again (`DriveLoop.run`)."""
    if stepped:
        if w.qi[r, J_STOP] >= 0:
            _land(w, e, c, r)
        n_fin = _update(w, e, c, r, now)
        for j in range(n_fin):
            _on_finish(w, e, c, r, e.finished[j], now)
    qi = w.qi
    if qi[r, DL_H] >= 0:
        _expire(w, e, c, r, now)
    _load_changed(w.loads, w.qi, e.ctr, c.max_num_seqs, r)
    if qi[r, RUN_LEN] == 0 and qi[r, W_LEN] == 0:
        qi[r, TIMER] = 0  # waits for work
        return
    _plan(w, e, c, r, now)


@jit
def start(w: State, e: Events, c: Config) -> None:
    """The fleet made: each replica's first wake-up; the arrivals process started, then the
    autoscaler's."""
    for r in range(e.ctr[ROWS]):
        w.qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, 0.0, NORMAL, E_WAKE, r)
    _schedule(e.t, e.i, e.ctr, 0.0, URGENT, E_START, 0)
    if c.autoscale:
        _schedule(e.t, e.i, e.ctr, 0.0, URGENT, E_SCALER, 0)


@jit
def run(w: State, e: Events, c: Config) -> bool:
    """Run the fleet until `c.until` (SimPy's `run(until)`: events at that time do not run);
    False: paused before an event, for bigger prefix tables or more replica rows (`room`; run
    again to go on)."""
    times, ei, ctr, openers, rf = e.t, e.i, e.ctr, w.openers, w.rf
    while ctr[SIZE] > 0 and times[0] < c.until:
        if (c.prefix_headroom or c.autoscale) and not room(w, e, c):
            return False
        i = _take(times, ei, ctr)
        now, kind, arg = times[i], ei[i, EVENT], ei[i, ARG]
        if kind in (E_STEP_END, E_WAKE):
            if ei[i, SEQ] != w.qi[arg, TIMER_SEQ]:
                continue  # a timer a cut jump left behind
            if w.qi[arg, COLD]:
                cold_sleep(w, e, arg, now)
            else:
                _drive(w, e, c, arg, now, kind == E_STEP_END)
        elif kind == E_SEND:
            _send(w, e, c, arg, rf[arg, DUE], rf[arg, AT], now)
        elif kind == E_PATIENCE:
            _patience(w, e, c, arg, now)
        elif kind == E_QUEUED:  # its timer process starts: the deadline from its send
            deadline = rf[arg, START] + c.timeout_s
            _schedule(e.t, e.i, e.ctr, now + max(0.0, deadline - now), NORMAL, E_EXPIRE, arg)
        elif kind == E_EXPIRE:
            _expire_queued(w, e, c, arg, now)
        elif kind >= E_SCALER:
            _fleet_event(w, e, c, kind, arg, now)
        elif kind == E_ARRIVAL:  # the timer for opener `arg`: it is sent, then the next ones
            opener = openers[arg]
            _send(w, e, c, opener, rf[opener, ARRIVAL], rf[opener, ARRIVAL], now)
            _arrivals(w, e, c, arg + 1, now)
        else:
            _arrivals(w, e, c, 0, now)
    _settle(w, e, c, c.until)
    return True


@jit
def room(w: State, e: Events, c: Config) -> bool:
    """Whether the tables hold what the next event may add: prefix block entries, and the
    replicas an autoscaler's evaluation (or a request to a fleet scaled to zero) may add."""
    if c.prefix_headroom and not room_for_an_event(w, c):
        return False
    return not c.autoscale or rows_room(e, c)


@jit
def _fleet_event(w: State, e: Events, c: Config, kind: int, r: int, now: float) -> None:
    """The autoscaler's process starting or evaluating, a warm-up's starting or ending."""
    if kind == E_SCALER:
        start_scaler(e, c, now)
    elif kind == E_TICK:
        if c.scaler[S_METRIC] == KV:
            kv_now(w, e, c, now)  # as `Fleet.desired` reads them
        tick(w, e, c, now)
    elif kind == E_WARM:
        warm_up(w, e, r, now)
    elif w.qi[r, LIFE] == STARTING:  # ready, unless removed meanwhile
        make_ready(w, e, c, r)
        _dispatch(w, e, c, now)


def _fresh_cache() -> None:
    """Keep numba's cache of the package's functions only for this source. Its indexes pickle
    their argument types, and loading an index that names a type the source no longer has
    raises (a checkout updated over an older cache): so a stamp of the package's sources sits
    beside the cache, and another stamp clears it. Where it cannot be written, numba keeps no
    cache either."""
    cache = getattr(run, "_cache", None)  # no numba dispatcher with NUMBA_DISABLE_JIT
    if cache is None:
        return
    folder = Path(cache._cache_path)  # numba's own choice of folder (private, numba pinned)
    sources = sorted(Path(__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    stamp = folder / "fast.source-sha256"
    with contextlib.suppress(OSError):
        if stamp.read_text() == digest:
            return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("*.nbi"), *folder.glob("*.nbc")]:
            old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fast.source.")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, stamp)


_fresh_cache()
