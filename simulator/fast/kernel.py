"""The fast core's event loop, compiled by numba: the reference model (`simulator.replay.sim`
over `simulator.engine`) for the fleets it covers (`simulator.fast.sim.unsupported`), on arrays.

Equal records (each request ending the same way at the same times) follow only from applying
the same rules in the same order, so each function here mirrors one of the reference's and says
which: events at one time run in SimPy's order (time, priority, then the order they were
scheduled), a replica plans a step at the loop's top after each step's end or a wake-up, a step
applies as `Scheduler.update` does (decode tokens, blocks due, decodes that finish, prefills),
and each finished request's client handler runs in the order the engine reports it.

A request is a row of two tables (its integers, its times: one cache line or two), a replica a
row of two more; a replica's queues are linked lists through the request rows (a request is in
one replica at a time); the events are a heap in arrays. No object per request and no Python
per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numba import njit

A = Any  # a numpy array (numba compiles the functions for the arrays it is given)

# a request's integers (`State.ri` columns): the plan's, the ledger's, its state in its replica
# (while it decodes, its tokens follow its replica's step counter: GEN at step SINCE, and its
# blocks grow on schedule, one due at each step of its PHASE, as `Scheduler` keeps them), and
# its links in its replica's lists (running in admission order, prefilling, decoding,
# waiting, needing a block, deadlines in submission order, the step in flight's prefills) and
# in the fleet's central queue; its attempt, and its retry policy (retries at most, and which
# answers it retries: R_429 | R_500)
(PROMPT, MAXT, OK_NEXT, FAIL_NEXT, STATUS, KIND, OUTPUT, ST, GEN, COMP, BLOCKS, SCHED, PRE,
 DEC, NEED, REPLICA, SINCE, PHASE, RUN_P, RUN_N, PF_P, PF_N, DC_P, DC_N, W_P, W_N, ND_P, ND_N,
 DL_N, SP_N, Q_P, Q_N, ATTEMPT, R_MAX, R_ON) = range(35)  # fmt: skip
RI_COLUMNS = 35
# a request's times (`State.rf`): the plan's (an opener's arrival; a follow-up's think time and
# the time after which it is not sent; how long its user waits for a first token), the
# ledger's, its client's deadline, a follow-up's time
(ARRIVAL, THINK, NOT_AFTER, PATIENCE, INTENDED, START, FIRST, END, DEADLINE, DUE, AT, BACKOFF,
 MAX_BACKOFF, JITTER, MAX_RETRY_AFTER) = range(15)  # fmt: skip
RF_COLUMNS = 15
R_429, R_500 = 1, 2
# a replica's integers (`State.qi`): its lists' heads, tails and lengths, its free blocks, the
# context its decodes attend over, a timer pending, preemptions and the tokens they discarded,
# the steps it applied, the earliest step at which a decode may finish, its timer event (the
# order it was scheduled in: an older one was cut short), the wake-up steps in `State.wakes`,
# and the jump in flight (see `_plan_jump`): its last step, the steps applied, the context of
# its first step, the step counted in its usage; the requests it holds beyond its batch slots
(RUN_H, RUN_T, RUN_LEN, PF_H, PF_T, DC_H, DC_T, DC_LEN, W_H, W_T, W_LEN, ND_H, ND_T, DL_H,
 DL_T, SP_H, SP_T, FREE, DECODE_CTX, TIMER, PREEMPTED, RECOMPUTED, STEPS, NEXT_WAKE, TIMER_SEQ,
 WAKES, J_STOP, J_DONE, J_CTX, J_COUNTED, OVER) = range(31)  # fmt: skip
QI_COLUMNS = 31
# a replica's usage (`State.qf`, simulator.engine.drive.Usage)
BUSY_S, KV_S, KV_PEAK, FULL_S, J_T0 = range(5)  # and when the jump in flight began
QF_COLUMNS = 5

# a request in its replica (the reference scheduler's statuses; NONE before it is placed)
NONE, WAITING, RUNNING, FINISHED, ABORTED, QUEUED = 0, 1, 2, 3, 4, 5  # QUEUED: at the fleet
# the ledger's statuses and error kinds (simulator.replay.ledger)
L_UNSENT, L_OK, L_ERROR, L_CANCELLED, L_TIMEOUT, L_REJECTED = -1, 0, 1, 2, 3, 4
K_ABANDONED, K_CONTEXT_LENGTH, K_HTTP_429, K_HTTP_500, K_TIMED_OUT = 0, 1, 2, 3, 4
# events (`Events.i` columns: priority, order scheduled, kind, subject): the arrivals process
# starting, its timer for the next opener, a replica's step end or wake-up, a follow-up's send,
# a user's patience running out, a queued request's timer starting (a SimPy process) and its
# deadline
PRI, SEQ, EVENT, ARG = range(4)
E_START, E_ARRIVAL, E_STEP_END, E_WAKE, E_SEND, E_PATIENCE, E_QUEUED, E_EXPIRE = range(8)
URGENT, NORMAL = 0, 1  # SimPy's priorities (a process's start is urgent)
# the counters in `Events.ctr`, and the fleet's central queue (head, tail, length) and the
# requests its replicas hold beyond their batch slots, the fault draws used, the attempts
# retried
SIZE, COUNT, CHUNKS, TURN, Q_HEAD, Q_TAIL, Q_LEN, OVER_ALL, FAULTS_DRAWN, RETRIED = range(10)
# a run of steady decode steps is one event (`simulator.engine.drive`: MAX_JUMP, MIN_JUMP)
MAX_JUMP, MIN_JUMP = 4096, 3
# routing policies and step-cost models
LEAST_OUTSTANDING, ROUND_ROBIN = 0, 1
LINEAR, TABLE, ROOFLINE = 0, 1, 2


class Config(NamedTuple):
    replicas: int
    max_num_seqs: int
    max_batched_tokens: int
    chunked: bool
    num_blocks: int
    block_size: int
    overhead_s: float
    timeout_s: float
    until: float
    routing: int
    cost_kind: int
    cost: A  # f8[6]: the cost model's numbers (see `step_seconds`)
    xs: A  # f8: a step table's batch sizes
    ys: A  # f8: ... and its step times
    keep_chunks: bool
    jumps: bool  # a run of steady decode steps as one event (the reference's default)
    central_queue: bool  # requests wait at the fleet for a free batch slot
    admission_limit: int  # requests waiting beyond which one is refused (429); -1: none
    retry_after_s: float  # the fleet's 429s' Retry-After (NaN: none)
    faults: bool  # `State.faults` says each send's injected fault
    fault_retry_after_s: float  # the injected 429s' Retry-After


class State(NamedTuple):
    ri: A  # i8[n, RI_COLUMNS]
    rf: A  # f8[n, RF_COLUMNS]
    qi: A  # i8[replicas, QI_COLUMNS]
    qf: A  # f8[replicas, QF_COLUMNS]
    openers: A  # i8: the users' first requests, by arrival
    loads: A  # i8[2 x leaves]: a tree of the replicas' (load, index), its root the least
    phases: A  # i8[replicas, block_size]: decodes whose next block is due at steps % size
    wakes: A  # i8[replicas, room]: a heap of the steps at which decodes were due to finish
    draws: A  # f8[n, retries]: each request's retry jitter draws, in order
    faults: A  # i8: each send's injected fault in the order sends come (0, R_429, R_500)


class Events(NamedTuple):
    t: A  # f8[room]
    i: A  # i8[room, 4]
    ctr: A  # i8[8]: the heap's size, events scheduled, chunk times kept, round robin's turn...
    chunk_row: A
    chunk_t: A
    finished: A  # scratch: a step's finished rows
    scratch: A  # scratch: a list's rows
    retried: A  # f8[room, 7]: attempts retried (row, intended, start, end, attempt, status,
    # kind: the ledger's `retried`)


def state(n: int, replicas: int, num_blocks: int, block_size: int, max_num_seqs: int) -> State:
    """Fresh tables for `n` requests (the plan's columns still to fill) and `replicas`."""
    ri = np.zeros((n, RI_COLUMNS), np.int64)
    ri[:, PHASE:] = -1
    ri[:, [OK_NEXT, FAIL_NEXT, KIND]] = -1
    ri[:, [ATTEMPT, R_MAX, R_ON]] = 0
    ri[:, STATUS] = L_UNSENT
    rf = np.zeros((n, RF_COLUMNS))
    rf[:, INTENDED:] = np.nan
    qi = np.full((replicas, QI_COLUMNS), -1, np.int64)
    qi[:, [RUN_LEN, DC_LEN, W_LEN, DECODE_CTX, PREEMPTED, RECOMPUTED, STEPS]] = 0
    qi[:, NEXT_WAKE] = np.iinfo(np.int64).max
    qi[:, [WAKES, J_DONE, J_CTX, OVER]] = 0
    qi[:, FREE], qi[:, TIMER] = num_blocks, 1  # each replica starts with its wake-up pending
    leaves = 1 << max(replicas - 1, 0).bit_length()
    loads = np.full(2 * leaves, np.iinfo(np.int64).max, np.int64)
    loads[leaves : leaves + replicas] = np.arange(replicas)  # load 0 each
    for i in range(leaves - 1, 0, -1):
        loads[i] = min(loads[2 * i], loads[2 * i + 1])
    qf = np.zeros((replicas, QF_COLUMNS))
    phases = np.zeros((replicas, block_size), np.int64)
    wakes = np.zeros((replicas, 4 * max_num_seqs + 16), np.int64)
    empty = np.empty(0, np.int64)
    return State(ri, rf, qi, qf, empty, loads, phases, wakes, np.zeros((n, 1)), empty)


def events(n: int, replicas: int, max_num_seqs: int, chunk_room: int, retries: int = 0) -> Events:
    """The event heap's room: a timer per replica (and one cut short), the arrivals', and a
    follow-up, a patience timer and two queue timers per request."""
    room = 4 * n + 2 * replicas + 4  # and a timer cut short per replica
    counters = np.array([0, 0, 0, 0, -1, -1, 0, 0, 0, 0], np.int64)  # the queue's ends: none
    scratch = max_num_seqs + 1
    return Events(
        np.empty(room), np.empty((room, 4), np.int64), counters, np.empty(chunk_room, np.int64),
        np.empty(chunk_room), np.empty(scratch, np.int64), np.empty(scratch, np.int64),
        np.empty((retries, 7)),
    )  # fmt: skip


# the event heap


@njit(cache=True)
def _before(t: A, ei: A, a: int, b: int) -> bool:
    if t[a] != t[b]:
        return bool(t[a] < t[b])
    if ei[a, PRI] != ei[b, PRI]:
        return bool(ei[a, PRI] < ei[b, PRI])
    return bool(ei[a, SEQ] < ei[b, SEQ])


@njit(cache=True)
def _swap(t: A, ei: A, a: int, b: int) -> None:
    t[a], t[b] = t[b], t[a]
    for k in range(4):
        ei[a, k], ei[b, k] = ei[b, k], ei[a, k]


@njit(cache=True)
def _schedule(times: A, ei: A, ctr: A, t: float, pri: int, kind: int, arg: int) -> None:
    """Add an event, ordered after every one scheduled before it at its time and priority
    (the heap: `Events.t`, `.i`, `.ctr`)."""
    i = ctr[SIZE]
    times[i] = t
    ei[i, PRI], ei[i, SEQ], ei[i, EVENT], ei[i, ARG] = pri, ctr[COUNT], kind, arg
    ctr[SIZE] += 1
    ctr[COUNT] += 1
    while i > 0:
        p = (i - 1) >> 1
        if not _before(times, ei, i, p):
            break
        _swap(times, ei, i, p)
        i = p


@njit(cache=True)
def _take(times: A, ei: A, ctr: A) -> int:
    """Move the earliest event past the heap's end; its index."""
    last = ctr[SIZE] - 1
    _swap(times, ei, 0, last)
    ctr[SIZE] = last
    i = 0
    while True:
        c = 2 * i + 1
        if c >= last:
            break
        if c + 1 < last and _before(times, ei, c + 1, c):
            c += 1
        if not _before(times, ei, c, i):
            break
        _swap(times, ei, i, c)
        i = c
    return last


# the least loaded replica: a tree whose leaves are load x replicas + index (the fewest
# running or waiting, the first on ties), each node the least of its two


@njit(cache=True)
def _load_changed(tree: A, qi: A, ctr: A, slots: int, r: int) -> None:
    load = qi[r, RUN_LEN] + qi[r, W_LEN]
    over = max(load - slots, 0)
    ctr[OVER_ALL] += over - qi[r, OVER]
    qi[r, OVER] = over
    i = len(tree) // 2 + r
    tree[i] = load * len(qi) + r
    i >>= 1
    while i:
        a, b = tree[2 * i], tree[2 * i + 1]
        least = a if a < b else b
        if tree[i] == least:
            break
        tree[i] = least
        i >>= 1


# lists through the request rows: columns P and N of `ri` link them, columns H and T of
# replica r's row of `qi` are the list's head and tail


@njit(cache=True)
def _unlink(ri: A, qi: A, p_: int, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    p, n = ri[s, p_], ri[s, n_]
    if p >= 0:
        ri[p, n_] = n
    else:
        qi[r, h_] = n
    if n >= 0:
        ri[n, p_] = p
    else:
        qi[r, t_] = p
    ri[s, p_] = ri[s, n_] = -1


@njit(cache=True)
def _append(ri: A, qi: A, p_: int, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    p = qi[r, t_]
    ri[s, p_], ri[s, n_] = p, -1
    if p >= 0:
        ri[p, n_] = s
    else:
        qi[r, h_] = s
    qi[r, t_] = s


@njit(cache=True)
def _prepend(ri: A, qi: A, p_: int, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    n = qi[r, h_]
    ri[s, p_], ri[s, n_] = -1, n
    if n >= 0:
        ri[n, p_] = s
    else:
        qi[r, t_] = s
    qi[r, h_] = s


@njit(cache=True)
def _rows_of(ri: A, head: int, n_: int, out: A) -> int:
    """A list's rows, in order, into `out`; how many."""
    m, s = 0, head
    while s >= 0:
        out[m] = s
        m += 1
        s = ri[s, n_]
    return m


# the step-cost models (simulator.engine.stepcost), each expression in its order


@njit(cache=True)
def step_seconds(c: Config, decode: int, prefill: int, context: int) -> float:
    p = c.cost
    if c.cost_kind == LINEAR:
        return float(p[0] + p[1] * decode + p[2] * prefill + p[3] * context)
    if c.cost_kind == ROOFLINE:
        tokens = decode + prefill
        compute = p[1] * tokens + p[4] * context
        memory = p[2] + p[3] * context
        return float(p[0] + p[5] * tokens + (compute if compute >= memory else memory))
    xs, ys, d = c.xs, c.ys, float(decode)
    n = len(xs)
    if n == 1:
        base = ys[0]
    else:
        i = int(np.searchsorted(xs, d, side="right")) - 1
        i = min(max(i, 0), n - 2)
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        if d > xs[n - 1]:
            i, slope = i + 1, max(slope, 0.0)
        elif d < xs[0]:
            slope = max(slope, 0.0)
        base = max(ys[i] + slope * (d - xs[i]), 0.0)
    return float(base + p[2] * prefill + p[3] * context)


# the clients (simulator.replay.sim._Clients, scenarios.users)


@njit(cache=True)
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
        return
    due = end + rf[nxt, THINK]
    if due > rf[nxt, NOT_AFTER]:
        return  # the window closed
    rf[nxt, DUE] = rf[nxt, AT] = due
    at = due + c.overhead_s
    _schedule(e.t, e.i, e.ctr, now + (at - now if at > now else 0.0), NORMAL, E_SEND, nxt)


@njit(cache=True)
def _timed_out(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """The client stopped at its deadline: what came after it was never seen."""
    ri, rf = w.ri, w.rf
    end = rf[i, START] + c.timeout_s
    rf[i, END] = end
    ri[i, STATUS], ri[i, KIND] = L_TIMEOUT, K_TIMED_OUT
    if rf[i, FIRST] > end:
        rf[i, FIRST] = np.nan
    _ended(w, e, c, i, False, end, now)


@njit(cache=True)
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
        if c.routing == ROUND_ROBIN:
            e.ctr[TURN] += 1
            r = (e.ctr[TURN] - 1) % c.replicas
        else:  # the fewest running or waiting, the first on ties
            r = w.loads[1] % c.replicas
        slots_full = qi[r, RUN_LEN] + qi[r, W_LEN] >= c.max_num_seqs
        if slots_full and 0 <= c.admission_limit <= e.ctr[OVER_ALL] + e.ctr[Q_LEN]:
            _refused(w, e, c, i, now)
            return
        _place(w, e, c, r, i, False, now)
    give_up = intended + rf[i, PATIENCE]  # the user cancels with no first token by then
    if give_up < np.inf and ri[i, ATTEMPT] == 0:
        _schedule(e.t, e.i, e.ctr, now + max(0.0, give_up - now), NORMAL, E_PATIENCE, i)


@njit(cache=True)
def _refused(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """The fleet is full: an HTTP 429 with the fleet's Retry-After."""
    w.ri[i, STATUS], w.ri[i, KIND] = L_REJECTED, K_HTTP_429
    w.rf[i, END] = now
    _ended(w, e, c, i, False, now, now, 429, c.retry_after_s)


@njit(cache=True)
def _place(w: State, e: Events, c: Config, r: int, i: int, waited: bool, now: float) -> None:
    """Queue row `i` in replica `r` (`Fleet._place`, `Replica.submit`): its deadline from when
    it was sent (a request that `waited` at the fleet: its send time; else overhead_s ago)."""
    ri, rf, qi = w.ri, w.rf, w.qi
    ri[i, ST], ri[i, REPLICA] = WAITING, r
    _append(ri, qi, W_P, W_N, W_H, W_T, r, i)
    qi[r, W_LEN] += 1
    sent = rf[i, START] if waited else now - c.overhead_s
    rf[i, DEADLINE] = sent + c.timeout_s
    ri[i, DL_N] = -1  # deadlines come in submission order: a queue
    if qi[r, DL_T] >= 0:
        ri[qi[r, DL_T], DL_N] = i
    else:
        qi[r, DL_H] = i
    qi[r, DL_T] = i
    if qi[r, J_STOP] >= 0:
        _cut(w, e, c, r, now)
    _load_changed(w.loads, qi, e.ctr, c.max_num_seqs, r)
    if not qi[r, TIMER]:
        qi[r, TIMER] = 1
        qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, now, NORMAL, E_WAKE, r)


@njit(cache=True)
def _dispatch_one(w: State, e: Events, c: Config, i: int, waited: bool, now: float) -> bool:
    """Place row `i` on a replica with a free batch slot, if there is one
    (`Fleet._dispatch_one`: the least loaded, or round robin over those free)."""
    qi, slots = w.qi, c.max_num_seqs
    if c.routing == ROUND_ROBIN:
        free = 0
        for q in range(c.replicas):
            free += qi[q, RUN_LEN] + qi[q, W_LEN] < slots
        if free == 0:
            return False
        e.ctr[TURN] += 1
        k = (e.ctr[TURN] - 1) % free
        r = 0
        for q in range(c.replicas):
            if qi[q, RUN_LEN] + qi[q, W_LEN] < slots:
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


@njit(cache=True)
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


@njit(cache=True)
def _released(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """A request left replica `r`: its load, and the central queue's head on a free slot
    (`Fleet.released`, `_dispatch`)."""
    _load_changed(w.loads, w.qi, e.ctr, c.max_num_seqs, r)
    _dispatch(w, e, c, now)


@njit(cache=True)
def _dispatch(w: State, e: Events, c: Config, now: float) -> None:
    while c.central_queue and e.ctr[Q_LEN]:
        i = e.ctr[Q_HEAD]
        if not _dispatch_one(w, e, c, i, True, now):
            return
        _unqueue(w, e, i)


@njit(cache=True)
def _expire_queued(w: State, e: Events, c: Config, i: int, now: float) -> None:
    """A queued request's deadline (`Fleet._expire`): still queued, it times out."""
    if w.ri[i, ST] != QUEUED:
        return
    _unqueue(w, e, i)
    w.ri[i, ST] = ABORTED
    if w.ri[i, STATUS] == L_OK:
        _timed_out(w, e, c, i, now)
    _dispatch(w, e, c, now)


@njit(cache=True)
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


# the engine (simulator.engine.scheduler, simulator.engine.drive)


@njit(cache=True)
def _gen(ri: A, qi: A, r: int, s: int) -> int:
    """Output tokens so far (a decode's follow its replica's steps)."""
    if ri[s, DEC]:
        return int(ri[s, GEN] + qi[r, STEPS] - ri[s, SINCE])
    return int(ri[s, GEN])


@njit(cache=True)
def _fix_blocks(ri: A, qi: A, phases: A, r: int, s: int, block_size: int) -> None:
    """A decode's blocks counted explicitly again (`Scheduler._fix_blocks`)."""
    if ri[s, PHASE] >= 0:
        tokens = ri[s, PROMPT] + _gen(ri, qi, r, s)
        ri[s, BLOCKS] = -(-tokens // block_size)
        phases[r, ri[s, PHASE]] -= 1
        ri[s, PHASE] = -1


@njit(cache=True)
def _grow(ri: A, qi: A, phases: A, r: int, s: int, block_size: int) -> None:
    """A decode's block for its next token's KV, if it needs one (or it waits for one), then
    its blocks grow on schedule (`Scheduler._grow`)."""
    tokens = ri[s, PROMPT] + _gen(ri, qi, r, s)
    if tokens > ri[s, BLOCKS] * block_size:
        if qi[r, FREE] == 0:
            ri[s, NEED] = 1
            _append(ri, qi, ND_P, ND_N, ND_H, ND_T, r, s)
            return
        qi[r, FREE] -= 1
        ri[s, BLOCKS] += 1
    phase = (qi[r, STEPS] + 1 - tokens) % block_size
    ri[s, PHASE] = phase
    phases[r, phase] += 1


@njit(cache=True)
def _leave(ri: A, qi: A, phases: A, r: int, s: int, block_size: int) -> None:
    """Take a running request out of its replica's running lists and free its blocks."""
    _unlink(ri, qi, RUN_P, RUN_N, RUN_H, RUN_T, r, s)
    qi[r, RUN_LEN] -= 1
    if ri[s, DEC]:
        _fix_blocks(ri, qi, phases, r, s, block_size)
        ri[s, GEN] = _gen(ri, qi, r, s)
        ri[s, DEC] = 0
        ri[s, COMP] = ri[s, PROMPT] + ri[s, GEN] - 1
        _unlink(ri, qi, DC_P, DC_N, DC_H, DC_T, r, s)
        qi[r, DC_LEN] -= 1
        qi[r, DECODE_CTX] -= ri[s, PROMPT] + ri[s, GEN]
        if ri[s, NEED]:
            ri[s, NEED] = 0
            _unlink(ri, qi, ND_P, ND_N, ND_H, ND_T, r, s)
    else:
        _unlink(ri, qi, PF_P, PF_N, PF_H, PF_T, r, s)
    qi[r, FREE] += ri[s, BLOCKS]
    ri[s, BLOCKS] = 0


@njit(cache=True)
def _allocate(ri: A, qi: A, block_size: int, r: int, s: int, tokens: int) -> bool:
    """Blocks for `tokens` tokens, all or none (`BlockManager.allocate`, no prefix cache)."""
    need = -(-tokens // block_size) - ri[s, BLOCKS]
    if need < 0:
        need = 0
    if need > qi[r, FREE]:
        return False
    qi[r, FREE] -= need
    ri[s, BLOCKS] += need
    return True


@njit(cache=True)
def _make_room(ri: A, qi: A, phases: A, block_size: int, r: int, s: int, upto: int) -> int:
    """Blocks for `s` up to `upto` tokens, preempting the newest running until they fit
    (`Scheduler._make_room`): 1 done, 0 done after preempting, -1 `s` itself had to go."""
    done = 1
    while not _allocate(ri, qi, block_size, r, s, upto):
        v = qi[r, RUN_T]
        _leave(ri, qi, phases, r, v, block_size)
        qi[r, RECOMPUTED] += ri[v, COMP]
        ri[v, COMP] = 0
        ri[v, PRE] += 1
        qi[r, PREEMPTED] += 1
        ri[v, ST] = WAITING
        _prepend(ri, qi, W_P, W_N, W_H, W_T, r, v)
        qi[r, W_LEN] += 1
        done = 0
        if v == s:
            return -1
    return done


@njit(cache=True)
def _keep_chunk(e: Events, s: int, now: float) -> None:
    n = e.ctr[CHUNKS]
    e.chunk_row[n], e.chunk_t[n] = s, now
    e.ctr[CHUNKS] = n + 1


@njit(cache=True)
def _finish(ri: A, qi: A, phases: A, finished: A, r: int, s: int, n: int, bs: int) -> int:
    ri[s, ST] = FINISHED
    _leave(ri, qi, phases, r, s, bs)
    finished[n] = s
    return n + 1


@njit(cache=True, inline="always")
def _update(w: State, e: Events, c: Config, r: int, now: float) -> int:
    """Apply replica `r`'s step, ended now (`Scheduler.update`): every decode gains a token and
    the blocks that become due, the decodes at their last token finish, then each prefill
    computes its chunk (the last one emits a token). How many finished (`Events.finished`)."""
    ri, rf, qi, phases, finished, bs = w.ri, w.rf, w.qi, w.phases, e.finished, c.block_size
    n_fin = 0
    qi[r, STEPS] += 1  # every decode gains its token
    steps = qi[r, STEPS]
    _wakes_past(w.wakes, qi, r, steps)
    qi[r, DECODE_CTX] += qi[r, DC_LEN]
    if c.keep_chunks:
        s = qi[r, DC_H]
        while s >= 0:
            _keep_chunk(e, s, now)
            s = ri[s, DC_N]
    phase = steps % bs
    due = phases[r, phase]
    if due:
        if due <= qi[r, FREE]:  # a block each
            qi[r, FREE] -= due
        else:  # too few: one by one, oldest first
            s = qi[r, RUN_H]
            while s >= 0:
                if ri[s, DEC] and ri[s, PHASE] == phase:
                    _fix_blocks(ri, qi, phases, r, s, bs)
                    ri[s, BLOCKS] -= 1  # the count included the block it has yet to get
                    _grow(ri, qi, phases, r, s, bs)
                s = ri[s, RUN_N]
    if steps >= qi[r, NEXT_WAKE]:  # the decodes at their last token, in decoding order
        wake = np.iinfo(np.int64).max
        s = qi[r, DC_H]
        while s >= 0:
            nxt = ri[s, DC_N]
            last = ri[s, SINCE] + ri[s, MAXT] - ri[s, GEN]
            if last <= steps:
                n_fin = _finish(ri, qi, phases, finished, r, s, n_fin, bs)
            elif last < wake:
                wake = last
            s = nxt
        qi[r, NEXT_WAKE] = wake
    s = qi[r, SP_H]
    while s >= 0:
        nxt = ri[s, SP_N]
        ri[s, SP_N] = -1
        if ri[s, ST] == RUNNING:
            ri[s, COMP] += ri[s, SCHED]
            if ri[s, COMP] >= ri[s, PROMPT] + ri[s, GEN]:
                ri[s, GEN] += 1
                if c.keep_chunks:
                    _keep_chunk(e, s, now)
                if ri[s, GEN] == 1:
                    rf[s, FIRST] = now
                if ri[s, GEN] >= ri[s, MAXT]:
                    n_fin = _finish(ri, qi, phases, finished, r, s, n_fin, bs)
                else:  # it decodes from now on (`Scheduler._start_decoding`)
                    _unlink(ri, qi, PF_P, PF_N, PF_H, PF_T, r, s)
                    _append(ri, qi, DC_P, DC_N, DC_H, DC_T, r, s)
                    ri[s, DEC], ri[s, SINCE] = 1, steps
                    qi[r, DC_LEN] += 1
                    qi[r, DECODE_CTX] += ri[s, PROMPT] + ri[s, GEN]
                    last = steps + ri[s, MAXT] - ri[s, GEN]
                    if last < qi[r, NEXT_WAKE]:
                        qi[r, NEXT_WAKE] = last
                    _wake_push(w.wakes, qi, r, last)
                    _grow(ri, qi, phases, r, s, bs)
        s = nxt
    qi[r, SP_H] = qi[r, SP_T] = -1
    return n_fin


@njit(cache=True, inline="always")
def _on_finish(w: State, e: Events, c: Config, r: int, s: int, now: float) -> None:
    """`_Clients.on_finish`: answered, or timed out when the step ended past its deadline;
    then its replica released it."""
    if now > w.rf[s, START] + c.timeout_s:
        _timed_out(w, e, c, s, now)
    else:
        w.rf[s, END] = now
        w.ri[s, OUTPUT] = w.ri[s, GEN]
        _ended(w, e, c, s, True, now, now)
    _released(w, e, c, r, now)


@njit(cache=True, inline="always")
def _expire(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """Abort each request whose deadline passed (`DriveLoop._expire`); its client times out."""
    ri, rf, qi = w.ri, w.rf, w.qi
    while qi[r, DL_H] >= 0 and rf[qi[r, DL_H], DEADLINE] <= now:
        s = qi[r, DL_H]
        qi[r, DL_H] = ri[s, DL_N]
        if qi[r, DL_H] < 0:
            qi[r, DL_T] = -1
        if ri[s, ST] == RUNNING:
            _leave(ri, qi, w.phases, r, s, c.block_size)
        elif ri[s, ST] == WAITING:
            _unlink(ri, qi, W_P, W_N, W_H, W_T, r, s)
            qi[r, W_LEN] -= 1
        else:
            continue
        ri[s, ST] = ABORTED
        if ri[s, STATUS] == L_OK:
            _timed_out(w, e, c, s, now)
        _released(w, e, c, r, now)


@njit(cache=True)
def _add_to_step(ri: A, qi: A, r: int, s: int) -> None:
    ri[s, SP_N] = -1
    if qi[r, SP_T] >= 0:
        ri[qi[r, SP_T], SP_N] = s
    else:
        qi[r, SP_H] = s
    qi[r, SP_T] = s


@njit(cache=True, inline="always")
def _plan(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """Plan replica `r`'s next step and set its end (`Scheduler.schedule`, `Engine.plan_step`,
    the drive loop's usage)."""
    ri, qi, qf, phases, scratch, bs = w.ri, w.qi, w.qf, w.phases, e.scratch, c.block_size
    preempted = False
    if qi[r, ND_H] >= 0:  # decodes whose blocks are full: a block, or room made
        m = _rows_of(ri, qi[r, ND_H], ND_N, scratch)
        for j in range(m):
            s = scratch[j]
            if ri[s, ST] != RUNNING:
                continue
            if qi[r, FREE] > 0:
                qi[r, FREE] -= 1
                ri[s, BLOCKS] += 1
                done = 1
            else:
                done = _make_room(ri, qi, phases, bs, r, s, ri[s, PROMPT] + _gen(ri, qi, r, s))
                preempted = preempted or done < 1
            if done >= 0:
                ri[s, NEED] = 0
                _unlink(ri, qi, ND_P, ND_N, ND_H, ND_T, r, s)
                _grow(ri, qi, phases, r, s, bs)
    budget = c.max_batched_tokens - qi[r, DC_LEN]
    prefill = context = n_prefill = 0
    m = _rows_of(ri, qi[r, PF_H], PF_N, scratch) if qi[r, PF_H] >= 0 else 0
    for j in range(m):  # prompts in progress, each its next chunk
        s = scratch[j]
        if budget <= 0:
            break
        if ri[s, ST] != RUNNING:  # preempted making room for an older one
            continue
        remaining = ri[s, PROMPT] + ri[s, GEN] - ri[s, COMP]
        n = remaining if remaining < budget else budget
        upto = ri[s, COMP] + n
        if upto > ri[s, BLOCKS] * bs:
            done = _make_room(ri, qi, phases, bs, r, s, upto)
            preempted = preempted or done < 1
            if done < 0:
                break
        ri[s, SCHED] = n
        budget -= n
        prefill += n
        context += upto
        _add_to_step(ri, qi, r, s)
        n_prefill += 1
    decode = qi[r, DC_LEN]
    context += qi[r, DECODE_CTX]
    while (  # admissions, in order, while they fit (`Scheduler._admit`)
        not preempted and qi[r, W_H] >= 0 and budget > 0 and qi[r, RUN_LEN] < c.max_num_seqs
    ):
        s = qi[r, W_H]
        tokens = ri[s, PROMPT] + ri[s, GEN]
        if tokens > budget and not c.chunked and n_prefill:
            break  # without chunking a prompt goes whole (alone, when over the budget)
        n = tokens if tokens <= budget or not c.chunked else budget
        # a preempted request takes its whole context's blocks
        if not _allocate(ri, qi, bs, r, s, tokens if ri[s, PRE] else n):
            break
        _unlink(ri, qi, W_P, W_N, W_H, W_T, r, s)
        qi[r, W_LEN] -= 1
        ri[s, ST] = RUNNING
        ri[s, COMP] = 0
        ri[s, SCHED] = n
        _append(ri, qi, RUN_P, RUN_N, RUN_H, RUN_T, r, s)
        qi[r, RUN_LEN] += 1
        _append(ri, qi, PF_P, PF_N, PF_H, PF_T, r, s)
        _add_to_step(ri, qi, r, s)
        n_prefill += 1
        budget -= n
        prefill += n
        context += n
    seconds = step_seconds(c, decode, prefill, context)
    steady = qi[r, PF_H] < 0 and qi[r, ND_H] < 0  # and nothing to admit (`Scheduler.steady`)
    steady = steady and (qi[r, W_H] < 0 or qi[r, RUN_LEN] >= c.max_num_seqs)
    jump = c.jumps and n_prefill == 0 and not preempted and steady
    if jump and _plan_jump(w, e, c, r, now, decode, context):
        return
    kv = (c.num_blocks - qi[r, FREE]) / c.num_blocks
    qf[r, BUSY_S] += seconds
    qf[r, KV_S] += kv * seconds
    if kv > qf[r, KV_PEAK]:
        qf[r, KV_PEAK] = kv
    if qi[r, RUN_LEN] >= c.max_num_seqs:
        qf[r, FULL_S] += seconds
    qi[r, TIMER_SEQ] = e.ctr[COUNT]
    _schedule(e.t, e.i, e.ctr, now + seconds, NORMAL, E_STEP_END, r)


# the heap of steps at which decodes were due to finish (`Scheduler._wake_steps`: a decode
# preempted or aborted leaves its step there until it passes)


@njit(cache=True)
def _wake_push(wakes: A, qi: A, r: int, step: int) -> None:
    i = qi[r, WAKES]
    if i == wakes.shape[1]:
        return  # full: quiet steps fall back on NEXT_WAKE, which never passes a finish
    wakes[r, i] = step
    qi[r, WAKES] = i + 1
    while i > 0:
        p = (i - 1) >> 1
        if wakes[r, p] <= wakes[r, i]:
            break
        wakes[r, p], wakes[r, i] = wakes[r, i], wakes[r, p]
        i = p


@njit(cache=True)
def _wakes_past(wakes: A, qi: A, r: int, steps: int) -> None:
    """Drop the wake-up steps that have come."""
    while qi[r, WAKES] and wakes[r, 0] <= steps:
        last = qi[r, WAKES] - 1
        wakes[r, 0] = wakes[r, last]
        qi[r, WAKES] = last
        i = 0
        while True:
            c = 2 * i + 1
            if c >= last:
                break
            if c + 1 < last and wakes[r, c + 1] < wakes[r, c]:
                c += 1
            if wakes[r, i] <= wakes[r, c]:
                break
            wakes[r, i], wakes[r, c] = wakes[r, c], wakes[r, i]
            i = c


# jumps: a steady batch (only decodes, nothing to admit) repeats its step until a decode
# finishes or the blocks fall short; those steps are one event, their effects applied in bulk,
# and a request sent to the replica meanwhile cuts the jump at the step in flight
# (`DriveLoop._plan_jump`, `_apply`, `_account`, `_cut`, `settle`)


@njit(cache=True)
def _quiet_steps(w: State, c: Config, r: int) -> int:
    """Of the next MAX_JUMP steps, how many run up to and including the first that changes
    the batch (`Scheduler.quiet_steps`)."""
    qi, bs = w.qi, c.block_size
    steps = qi[r, STEPS]
    _wakes_past(w.wakes, qi, r, steps)
    n = MAX_JUMP
    if qi[r, WAKES] and w.wakes[r, 0] - steps < n:
        n = w.wakes[r, 0] - steps
    n = min(n, qi[r, NEXT_WAKE] - steps)  # the same, unless the heap overflowed
    free = qi[r, FREE]
    if qi[r, DC_LEN] * (n // bs + 1) <= free:
        return int(n)
    for i in range(1, n + 1):
        free -= w.phases[r, (steps + i) % bs]
        if free < 0:
            return i
    return int(n)


@njit(cache=True)
def _jump_step_s(w: State, c: Config, r: int, i: int) -> float:
    """Step `i` of the jump in flight: its duration (its context grows a token a decode)."""
    decode = w.qi[r, DC_LEN]
    return step_seconds(c, decode, 0, w.qi[r, J_CTX] + i * decode)


@njit(cache=True)
def _jump_end(w: State, c: Config, r: int, i: int) -> float:
    """When step `i` of the jump in flight ends (its steps' times summed in order)."""
    t = w.qf[r, J_T0]
    for k in range(i + 1):
        t += _jump_step_s(w, c, r, k)
    return float(t)


@njit(cache=True)
def _jump_step_at(w: State, c: Config, r: int, at: float) -> int:
    """The first step of the jump in flight, from those not applied, ending at `at` or
    later (bisect_left over its ends)."""
    qi = w.qi
    t = w.qf[r, J_T0]
    for k in range(qi[r, J_STOP] + 1):
        t += _jump_step_s(w, c, r, k)
        if k >= qi[r, J_DONE] and t >= at:
            return k
    return int(qi[r, J_STOP] + 1)


@njit(cache=True)
def _plan_jump(
    w: State, e: Events, c: Config, r: int, now: float, decode: int, context: int
) -> bool:
    """Set the jump from the planned step on, if its batch is quiet long enough; False: no
    jump. A deadline ends it at the step running then."""
    qi, rf = w.qi, w.rf
    n = _quiet_steps(w, c, r)
    if n < MIN_JUMP:
        return False
    deadline = rf[qi[r, DL_H], DEADLINE] if qi[r, DL_H] >= 0 else np.inf
    t = now
    for i in range(n):
        t += step_seconds(c, decode, 0, context + i * decode)
        if t >= deadline:
            if i < 1:
                return False
            n = i + 1
            break
    qi[r, J_STOP], qi[r, J_DONE], qi[r, J_CTX], qi[r, J_COUNTED] = n - 1, 0, context, -1
    w.qf[r, J_T0] = now
    qi[r, TIMER_SEQ] = e.ctr[COUNT]
    _schedule(e.t, e.i, e.ctr, t, NORMAL, E_STEP_END, r)
    return True


@njit(cache=True)
def _apply(w: State, e: Events, c: Config, r: int, upto: int) -> None:
    """Apply the jump's steps before `upto`, none of which changes the batch: each decode's
    token (counted by the step counter), the blocks due, the usage (`DriveLoop._apply`)."""
    ri, qi, qf, phases = w.ri, w.qi, w.qf, w.phases
    done = qi[r, J_DONE]
    if upto <= done:
        return
    t = qf[r, J_T0]
    for k in range(done):
        t += _jump_step_s(w, c, r, k)
    used = c.num_blocks - qi[r, FREE]
    full = qi[r, RUN_LEN] >= c.max_num_seqs
    decode, bs = qi[r, DC_LEN], c.block_size
    fraction = 0.0
    for k in range(done, upto):
        seconds = _jump_step_s(w, c, r, k)
        t += seconds
        fraction = used / c.num_blocks
        qf[r, BUSY_S] += seconds
        qf[r, KV_S] += fraction * seconds
        if full:
            qf[r, FULL_S] += seconds
        qi[r, STEPS] += 1
        used += phases[r, qi[r, STEPS] % bs]
        qi[r, DECODE_CTX] += decode
        if c.keep_chunks:
            s = qi[r, DC_H]
            while s >= 0:
                _keep_chunk(e, s, t)
                s = ri[s, DC_N]
    if fraction > qf[r, KV_PEAK]:
        qf[r, KV_PEAK] = fraction
    qi[r, FREE] = c.num_blocks - used
    qi[r, J_DONE] = upto


@njit(cache=True)
def _account(w: State, c: Config, r: int, i: int) -> None:
    """Count the jump's step `i` in the usage, once, with the KV use it ran with."""
    qi, qf = w.qi, w.qf
    if qi[r, J_COUNTED] == i:
        return
    qi[r, J_COUNTED] = i
    seconds = _jump_step_s(w, c, r, i)
    kv = (c.num_blocks - qi[r, FREE]) / c.num_blocks
    qf[r, BUSY_S] += seconds
    qf[r, KV_S] += kv * seconds
    if kv > qf[r, KV_PEAK]:
        qf[r, KV_PEAK] = kv
    if qi[r, RUN_LEN] >= c.max_num_seqs:
        qf[r, FULL_S] += seconds


@njit(cache=True)
def _cut(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """A request came: the jump ends with the step in flight, its timer moved there."""
    j = _jump_step_at(w, c, r, now)
    if j < w.qi[r, J_STOP]:
        w.qi[r, J_STOP] = j
        w.qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, _jump_end(w, c, r, j), NORMAL, E_STEP_END, r)


@njit(cache=True)
def _land(w: State, e: Events, c: Config, r: int) -> None:
    """The jump's last step ended: the steps before it applied, it counted; `_update` then
    applies it as any step."""
    last = w.qi[r, J_STOP]
    _apply(w, e, c, r, last)
    _account(w, c, r, last)
    w.qi[r, J_STOP] = -1


@njit(cache=True)
def _settle(w: State, e: Events, c: Config, now: float) -> None:
    """At the end of the run: each jump's steps that ended before `now` applied, the one
    running then counted, as stepping would have (`DriveLoop.settle`)."""
    for r in range(c.replicas):
        if w.qi[r, J_STOP] >= 0:
            j = _jump_step_at(w, c, r, now)
            _apply(w, e, c, r, j)
            if j <= w.qi[r, J_STOP]:
                _account(w, c, r, j)
            w.qi[r, J_STOP] = -1


@njit(cache=True)
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
            _leave(ri, qi, w.phases, r, i, c.block_size)
        else:
            _unlink(ri, qi, W_P, W_N, W_H, W_T, r, i)
            qi[r, W_LEN] -= 1
        ri[i, ST] = ABORTED
        _released(w, e, c, r, now)
    _ended(w, e, c, i, False, give_up, now)


@njit(cache=True, inline="always")
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


@njit(cache=True)
def run(w: State, e: Events, c: Config) -> None:
    """Run the fleet until `c.until` (SimPy's `run(until)`: events at that time do not run)."""
    for r in range(c.replicas):  # each replica's first wake-up, made with the fleet
        w.qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, 0.0, NORMAL, E_WAKE, r)
    _schedule(e.t, e.i, e.ctr, 0.0, URGENT, E_START, 0)
    times, ei, ctr, openers, rf = e.t, e.i, e.ctr, w.openers, w.rf
    while ctr[SIZE] > 0 and times[0] < c.until:
        i = _take(times, ei, ctr)
        now, kind, arg = times[i], ei[i, EVENT], ei[i, ARG]
        if kind in (E_STEP_END, E_WAKE):
            if ei[i, SEQ] == w.qi[arg, TIMER_SEQ]:  # else a timer a cut jump left behind
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
        elif kind == E_ARRIVAL:  # the timer for opener `arg`: it is sent, then the next ones
            opener = openers[arg]
            _send(w, e, c, opener, rf[opener, ARRIVAL], rf[opener, ARRIVAL], now)
            _arrivals(w, e, c, arg + 1, now)
        else:
            _arrivals(w, e, c, 0, now)
    _settle(w, e, c, c.until)


def _fresh_cache() -> None:
    """Keep numba's cache of these functions only for this source. Its index pickles their
    argument types, and loading an index that names a type this file no longer has raises
    (a checkout updated over an older cache): so a stamp of the source's hash sits beside the
    cache, and another stamp clears it. Where the cache cannot be written, numba keeps none."""
    cache = getattr(run, "_cache", None)  # no numba dispatcher with NUMBA_DISABLE_JIT
    if cache is None:
        return
    folder = Path(cache._cache_path)  # numba's own choice of folder (private, numba pinned)
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp = folder / "kernel.source-sha256"
    with contextlib.suppress(OSError):
        if stamp.read_text() == digest:
            return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("kernel.*.nbi"), *folder.glob("kernel.*.nbc")]:
            old.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kernel.source.")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, stamp)


_fresh_cache()
