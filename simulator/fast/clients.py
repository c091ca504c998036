"""The clients and the fleet on the fast core's tables (`simulator.replay.sim._Clients`,
`scenarios.users`, `simulator.replay.fleet`): sends, faults, routing, the central queue and the
admission limit, retries, follow-ups, patience."""

from __future__ import annotations

import numpy as np
from numba.np.random.random_methods import buffered_bounded_lemire_uint32

from simulator.fast.engine import _leave
from simulator.fast.jumps import _account, _apply, _cut, _jump_step_at, kv_now
from simulator.fast.layout import (
    ABORTED,
    ARRIVAL,
    AT,
    ATTEMPT,
    BACKOFF,
    CACHED_T,
    COUNT,
    DEADLINE,
    DL_H,
    DL_N,
    DL_T,
    DUE,
    E_ARRIVAL,
    E_PATIENCE,
    E_QUEUED,
    E_SEND,
    E_WAKE,
    END,
    FAIL_NEXT,
    FAULTS_DRAWN,
    FIRST,
    FREE,
    IDLE_SINCE,
    INTENDED,
    J_STOP,
    JITTER,
    K_ABANDONED,
    K_CONTEXT_LENGTH,
    K_HTTP_429,
    K_HTTP_500,
    K_TIMED_OUT,
    KIND,
    L_CANCELLED,
    L_ERROR,
    L_OK,
    L_REJECTED,
    L_TIMEOUT,
    LEAST_KV,
    LEAST_OUTSTANDING,
    LIFE,
    MAX_BACKOFF,
    MAX_RETRY_AFTER,
    MAXT,
    MEMBERS,
    NORMAL,
    NOT_AFTER,
    OK_NEXT,
    OUTSTANDING,
    OVER_ALL,
    PATIENCE,
    PREFIX_AFFINITY,
    PROMPT,
    Q_HEAD,
    Q_LEN,
    Q_N,
    Q_P,
    Q_TAIL,
    QUEUED,
    R_429,
    R_500,
    R_MAX,
    R_ON,
    RANDOM,
    READY,
    READY_N,
    REPLICA,
    RETRIED,
    ROUND_ROBIN,
    ROWS,
    RUN_LEN,
    RUNNING,
    ST,
    START,
    STATUS,
    THINK,
    TIMER,
    TIMER_SEQ,
    TURN,
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
from simulator.fast.prefix import affine, in_flight
from simulator.fast.queues import _append, _load_changed, _push_back, _schedule, _unlink
from simulator.fast.scaling import add_replica, least_starting, n_routable, nth_routable, routable


@jit
def _ended(
    w: State,
    e: Events,
    c: Config,
    i: int,
    ok: bool,
    end: float,
    now: float,
    http: int = 0,
    retry_after: float = np.nan,
) -> None:
    """Row `i`'s attempt ended at `end` (a failure answered with `http`, its Retry-After):
    tried again after its backoff if its policy retries that and the user would wait, else
    its user's next request, its think time after (`Users.session`, `_Clients._ended`)."""
    ri, rf = w.ri, w.rf
    k = ri[i, ATTEMPT]
    retried = (http == 429 and ri[i, R_ON] & R_429) or (http == 500 and ri[i, R_ON] & R_500)
    if not ok and retried and k < ri[i, R_MAX]:
        base = min(rf[i, BACKOFF] * 2**k, rf[i, MAX_BACKOFF])  # Retry.wait_s
        wait = base * (1.0 + rf[i, JITTER] * (2.0 * w.draws[i, k] - 1.0))
        if not np.isnan(rf[i, MAX_RETRY_AFTER]) and not np.isnan(retry_after):
            wait = max(wait, min(retry_after, rf[i, MAX_RETRY_AFTER]))
        if end + wait < rf[i, INTENDED] + rf[i, PATIENCE]:  # else the user gives up instead
            n = e.ctr[RETRIED]  # the attempt is kept apart; the row takes the next
            e.retried[n, 0], e.retried[n, 1], e.retried[n, 2] = i, rf[i, INTENDED], rf[i, START]
            e.retried[n, 3], e.retried[n, 4] = rf[i, END], k
            e.retried[n, 5], e.retried[n, 6] = ri[i, STATUS], ri[i, KIND]
            e.ctr[RETRIED] = n + 1
            ri[i, ATTEMPT] = k + 1
            rf[i, DUE], rf[i, AT] = rf[i, INTENDED], end + wait
            at = rf[i, AT] + c.overhead_s
            _schedule(e.t, e.i, e.ctr, now + (at - now if at > now else 0.0), NORMAL, E_SEND, i)
            return
    nxt = ri[i, OK_NEXT] if ok else ri[i, FAIL_NEXT]
    if nxt < 0:
        e.ctr[OUTSTANDING] -= 1  # the user is done
        return
    due = end + rf[nxt, THINK]
    if due > rf[nxt, NOT_AFTER]:
        e.ctr[OUTSTANDING] -= 1  # the window closed
        return
    rf[nxt, DUE] = rf[nxt, AT] = due
    at = due + c.overhead_s
    _schedule(e.t, e.i, e.ctr, now + (at - now if at > now else 0.0), NORMAL, E_SEND, nxt)


@jit
def _timed_out(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """The client stopped at its deadline: what came after it was never seen."""
    ri, rf = w.ri, w.rf
    end = rf[i, START] + c.timeout_s
    rf[i, END] = end
    ri[i, STATUS], ri[i, KIND] = L_TIMEOUT, K_TIMED_OUT
    if rf[i, FIRST] > end:
        rf[i, FIRST] = np.nan
    _ended(w, e, c, i, False, end, now)


@jit
def _send(w: State, e: Events, c: Config, i: int, intended: float, at: float, now: float) -> None:
    """Row `i`'s attempt, meant for `intended` and sent at `at`, reaches the fleet now
    (`_Clients.send`): a fault injected, refused if no replica could hold it or the fleet is
    full, else routed or queued (`Fleet.admit`, `Replica.submit`)."""
    ri, rf, qi = w.ri, w.rf, w.qi
    rf[i, INTENDED], rf[i, START] = intended, at
    ri[i, STATUS], ri[i, KIND] = L_OK, -1
    rf[i, FIRST] = rf[i, END] = np.nan
    if c.faults:  # as the reference target injects them (`_Clients._injected`)
        fault = w.faults[e.ctr[FAULTS_DRAWN]]
        e.ctr[FAULTS_DRAWN] += 1
        if fault == R_429:
            ri[i, STATUS], ri[i, KIND] = L_REJECTED, K_HTTP_429
            rf[i, END] = now
            _ended(w, e, c, i, False, now, now, 429, c.fault_retry_after_s)
            return
        if fault == R_500:
            ri[i, STATUS], ri[i, KIND] = L_ERROR, K_HTTP_500
            rf[i, END] = now
            _ended(w, e, c, i, False, now, now, 500)
            return
    if ri[i, PROMPT] + ri[i, MAXT] > c.num_blocks * c.block_size:
        ri[i, STATUS], ri[i, KIND] = L_REJECTED, K_CONTEXT_LENGTH
        rf[i, END] = now
        _ended(w, e, c, i, False, now, now)
        return
    if c.autoscale and e.ctr[MEMBERS] == 0:
        add_replica(w, e, c, now)  # the activator: a request wakes a fleet scaled to zero
    if c.central_queue:
        ctr = e.ctr
        if ctr[Q_LEN] == 0 and _dispatch_one(w, e, c, i, False, now):
            pass
        elif 0 <= c.admission_limit <= ctr[Q_LEN]:
            _refused(w, e, c, i, now)
            return
        else:  # it waits at the fleet, its deadline timed by a process of its own
            ri[i, ST] = QUEUED
            ri[i, Q_P], ri[i, Q_N] = ctr[Q_TAIL], -1
            if ctr[Q_TAIL] >= 0:
                ri[ctr[Q_TAIL], Q_N] = i
            else:
                ctr[Q_HEAD] = i
            ctr[Q_TAIL] = i
            ctr[Q_LEN] += 1
            _schedule(e.t, e.i, e.ctr, now, URGENT, E_QUEUED, i)
    else:
        r = _route(w, e, c, i, now)
        slots_full = qi[r, RUN_LEN] + qi[r, W_LEN] >= c.max_num_seqs
        if slots_full and 0 <= c.admission_limit <= e.ctr[OVER_ALL] + e.ctr[Q_LEN]:
            _refused(w, e, c, i, now)
            return
        _place(w, e, c, r, i, False, now)
    give_up = intended + rf[i, PATIENCE]  # the user cancels with no first token by then
    if give_up < np.inf and ri[i, ATTEMPT] == 0:
        _schedule(e.t, e.i, e.ctr, now + max(0.0, give_up - now), NORMAL, E_PATIENCE, i)


@jit
def _route(w: State, e: Events, c: Config, i: int, now: float) -> int:
    """The replica row `i`, sent now, goes to (`Router.choose` over the whole fleet)."""
    ctr = e.ctr
    if c.routing == ROUND_ROBIN:
        ctr[TURN] += 1
        return nth_routable(w.qi, ctr, (ctr[TURN] - 1) % n_routable(ctr))
    if c.routing == RANDOM:
        return nth_routable(w.qi, ctr, _uniform_index(w.rng, n_routable(ctr)))
    if c.routing == LEAST_KV or c.routing == PREFIX_AFFINITY:
        kv_now(w, e, c, now)
        if c.routing == LEAST_KV:
            return _emptiest_kv(w.qi, ctr, c, False)
        return affine(w, ctr, c, i, False)
    if ctr[READY_N] == 0:
        return least_starting(w.qi, ctr)
    return int(w.loads[1] % c.replicas)  # the fewest running or waiting, the first on ties


@jit
def _uniform_index(rng: np.random.Generator, n: int) -> int:
    """`rng.integers(0, n)` (n < 2**32), its draws and result numpy's, without the array
    numba's `integers` allocates (the kernel runs without numba's allocator)."""
    if n == 1:
        return 0  # no draw, as numpy's bounded integers with a range of one value
    return int(np.int64(buffered_bounded_lemire_uint32(rng.bit_generator, np.int64(n - 1))))


@jit
def _refused(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """The fleet is full: an HTTP 429 with the fleet's Retry-After."""
    w.ri[i, STATUS], w.ri[i, KIND] = L_REJECTED, K_HTTP_429
    w.rf[i, END] = now
    _ended(w, e, c, i, False, now, now, 429, c.retry_after_s)


@jit
def _place(w: State, e: Events, c: Config, r: int, i: int, waited: bool, now: float) -> None:
    """Queue row `i` in replica `r` (`Fleet._place`, `Replica.submit`): its deadline from when
    it was sent (a request that `waited` at the fleet: its send time; else overhead_s ago)."""
    ri, rf, qi = w.ri, w.rf, w.qi
    ri[i, ST], ri[i, REPLICA] = WAITING, r
    ri[i, CACHED_T] = 0
    if c.routing == PREFIX_AFFINITY:
        in_flight(w, c, r, i, True)
    _append(ri, qi, W_P, W_N, W_H, W_T, r, i)
    qi[r, W_LEN] += 1
    sent = rf[i, START] if waited else now - c.overhead_s
    rf[i, DEADLINE] = sent + c.timeout_s
    _push_back(ri, qi, DL_N, DL_H, DL_T, r, i)  # deadlines come in submission order
    if qi[r, J_STOP] >= 0:
        _cut(w, e, c, r, now)
    _load_changed(w.loads, qi, e.ctr, c.max_num_seqs, r)
    if not qi[r, TIMER]:
        qi[r, TIMER] = 1
        qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, now, NORMAL, E_WAKE, r)


@jit
def _dispatch_one(w: State, e: Events, c: Config, i: int, waited: bool, now: float) -> bool:
    """Place row `i` on a replica with a free batch slot, if there is one
    (`Fleet._dispatch_one`: the least loaded, else the router's choice among those free)."""
    qi, ctr, slots = w.qi, e.ctr, c.max_num_seqs
    if ctr[READY_N] == 0:
        return False
    if c.routing == LEAST_KV or c.routing == PREFIX_AFFINITY:
        if not _any_free(qi, ctr, slots):
            return False
        kv_now(w, e, c, now)
        r = _emptiest_kv(qi, ctr, c, True) if c.routing == LEAST_KV else affine(w, ctr, c, i, True)
    elif c.routing != LEAST_OUTSTANDING:  # one of those with a free slot, in fleet order
        free = 0
        for q in range(c.replicas):
            free += qi[q, LIFE] == READY and qi[q, RUN_LEN] + qi[q, W_LEN] < slots
        if free == 0:
            return False
        if c.routing == RANDOM:
            k = _uniform_index(w.rng, free)
        else:
            e.ctr[TURN] += 1
            k = (e.ctr[TURN] - 1) % free
        r = 0
        for q in range(c.replicas):
            if qi[q, LIFE] == READY and qi[q, RUN_LEN] + qi[q, W_LEN] < slots:
                if k == 0:
                    r = q
                    break
                k -= 1
    else:
        r = w.loads[1] % c.replicas
        if qi[r, RUN_LEN] + qi[r, W_LEN] >= slots:
            return False
    _place(w, e, c, r, i, waited, now)
    return True


@jit
def _any_free(qi: np.ndarray, ctr: np.ndarray, slots: int) -> bool:
    """Whether a ready replica has a free batch slot."""
    for q in range(ctr[ROWS]):
        if qi[q, LIFE] == READY and qi[q, RUN_LEN] + qi[q, W_LEN] < slots:
            return True
    return False


@jit
def _emptiest_kv(qi: np.ndarray, ctr: np.ndarray, c: Config, free_only: bool) -> int:
    """The replica using the least of its KV cache, then with the fewest requests, the first on
    ties (`Router.choose`'s least_kv), of those with a free batch slot if `free_only` (-1:
    none)."""
    best, best_used, best_load = -1, 0, 0
    for q in range(c.replicas):
        load = qi[q, RUN_LEN] + qi[q, W_LEN]
        if (free_only and load >= c.max_num_seqs) or not routable(qi, ctr, q):
            continue
        used = c.num_blocks - qi[q, FREE]
        if best < 0 or used < best_used or (used == best_used and load < best_load):
            best, best_used, best_load = q, used, load
    return best


@jit
def _unqueue(w: State, e: Events, i: int) -> None:
    ri, ctr = w.ri, e.ctr
    p, n = ri[i, Q_P], ri[i, Q_N]
    if p >= 0:
        ri[p, Q_N] = n
    else:
        ctr[Q_HEAD] = n
    if n >= 0:
        ri[n, Q_P] = p
    else:
        ctr[Q_TAIL] = p
    ri[i, Q_P] = ri[i, Q_N] = -1
    ctr[Q_LEN] -= 1


@jit
def _released(w: State, e: Events, c: Config, r: int, i: int, now: float) -> None:
    """Row `i` left replica `r`: its prefix no longer in flight there, its load, and the
    central queue's head on a free slot (`Fleet.released`, `_dispatch`)."""
    if c.routing == PREFIX_AFFINITY:
        in_flight(w, c, r, i, False)
    _load_changed(w.loads, w.qi, e.ctr, c.max_num_seqs, r)
    if w.qi[r, RUN_LEN] + w.qi[r, W_LEN] == 0:
        w.qf[r, IDLE_SINCE] = now
    _dispatch(w, e, c, now)


@jit
def _dispatch(w: State, e: Events, c: Config, now: float) -> None:
    while c.central_queue and e.ctr[Q_LEN]:
        i = e.ctr[Q_HEAD]
        if not _dispatch_one(w, e, c, i, True, now):
            return
        _unqueue(w, e, i)


@jit
def _expire_queued(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """A queued request's deadline (`Fleet._expire`): still queued, it times out."""
    if w.ri[i, ST] != QUEUED:
        return
    _unqueue(w, e, i)
    w.ri[i, ST] = ABORTED
    if w.ri[i, STATUS] == L_OK:
        _timed_out(w, e, c, i, now)
    _dispatch(w, e, c, now)


@jit
def _arrivals(w: State, e: Events, c: Config, k: int, now: float) -> None:
    """The arrivals process from opener `k` on: each is sent at its time; returns at the first
    not due yet, its timer set (`_Clients.arrivals`)."""
    openers, rf = w.openers, w.rf
    while k < len(openers):
        i = openers[k]
        at = rf[i, ARRIVAL] + c.overhead_s
        if at > now:
            _schedule(e.t, e.i, e.ctr, now + (at - now), NORMAL, E_ARRIVAL, k)
            return
        _send(w, e, c, i, rf[i, ARRIVAL], rf[i, ARRIVAL], now)
        k += 1


@jit
def _patience(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """Row `i`'s user gave up waiting for a first token (`_Clients._patience`): cancelled at
    its give-up time, withdrawn from its replica (the jump in flight applied up to the step
    running now and cut there, as `DriveLoop.abort` does), and its session goes on."""
    ri, rf, qi = w.ri, w.rf, w.qi
    if not (np.isnan(rf[i, FIRST]) and np.isnan(rf[i, END])):
        return
    give_up = rf[i, INTENDED] + rf[i, PATIENCE]
    ri[i, STATUS], ri[i, KIND] = L_CANCELLED, K_ABANDONED
    rf[i, END] = give_up
    state, r = ri[i, ST], ri[i, REPLICA]
    if state == QUEUED:
        _unqueue(w, e, i)
        ri[i, ST] = ABORTED
    elif state in (RUNNING, WAITING):
        if qi[r, J_STOP] >= 0:
            if state == RUNNING:
                j = _jump_step_at(w, c, r, now)
                _apply(w, e, c, r, j)
                _account(w, c, r, j)
            _cut(w, e, c, r, now)
        if state == RUNNING:
            _leave(w, c, r, i)
        else:
            _unlink(ri, qi, W_P, W_N, W_H, W_T, r, i)
            qi[r, W_LEN] -= 1
        ri[i, ST] = ABORTED
        _released(w, e, c, r, i, now)
    _ended(w, e, c, i, False, give_up, now)
