"""The fast core's tables (a request is a row of two tables, its integers and its times; a
replica a row of two more; a replica's queues are linked lists through the request rows, a
request being in one replica at a time), its configuration, and fresh tables for a run. The
functions over them, compiled by numba, are in the package's other modules; `kernel` runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, overload

import numpy as np
from numba import njit

A = Any  # a numpy array (numba compiles the functions for the arrays it is given)

F = TypeVar("F", bound=Callable[..., Any])


@overload
def jit(fn: F) -> F: ...
@overload
def jit(*, inline: str) -> Callable[[F], F]: ...
def jit(fn: Any = None, *, inline: str = "never") -> Any:
    """numba's njit as the kernel's functions use it: cached beside the sources, and without
    numba's reference counts (`_nrt`, an option of the pinned numba): the kernel allocates
    nothing, and counting each array of the State and Events at every call that passes them
    took 4/5 of its time."""
    options: dict[str, Any] = {"cache": True, "_nrt": False, "inline": inline}
    compiles = njit(**options)
    return compiles if fn is None else compiles(fn)


# a request's integers (`State.ri` columns): the plan's, the ledger's, its state in its replica
# (while it decodes, its tokens follow its replica's step counter: GEN at step SINCE, and its
# blocks grow on schedule, one due at each step of its PHASE, as `Scheduler` keeps them), and
# its links in its replica's lists (running in admission order, prefilling, decoding,
# waiting, needing a block, deadlines in submission order, the step in flight's prefills) and
# in the fleet's central queue; its attempt, and its retry policy (retries at most, and which
# answers it retries: R_429 | R_500); its prefix blocks' keys (`simulator.fast.prefix`), how
# many of them it holds shared, and its prompt tokens the prefix cache served
(PROMPT, MAXT, OK_NEXT, FAIL_NEXT, STATUS, KIND, OUTPUT, ST, GEN, COMP, BLOCKS, SCHED, PRE,
 DEC, NEED, REPLICA, SINCE, PHASE, RUN_P, RUN_N, PF_P, PF_N, DC_P, DC_N, W_P, W_N, ND_P, ND_N,
 DL_N, SP_N, Q_P, Q_N, ATTEMPT, R_MAX, R_ON, KOFF, KLEN, NCACHED, CACHED_T) = range(39)  # fmt: skip
RI_COLUMNS = 39
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
# its first step, the step counted in its usage; the requests it holds beyond its batch slots;
# its evictable cached prefix blocks (a list's ends and length) and the blocks it caches; its
# life in the fleet (a row is a replica the run had, in the order they came: `fleet.Member`),
# and whether its drive loop has its cold start's sleep still to come
(RUN_H, RUN_T, RUN_LEN, PF_H, PF_T, DC_H, DC_T, DC_LEN, W_H, W_T, W_LEN, ND_H, ND_T, DL_H,
 DL_T, SP_H, SP_T, FREE, DECODE_CTX, TIMER, PREEMPTED, RECOMPUTED, STEPS, NEXT_WAKE, TIMER_SEQ,
 WAKES, J_STOP, J_DONE, J_CTX, J_COUNTED, OVER, EV_H, EV_T, EV_LEN, CACHED, LIFE,
 COLD) = range(37)  # fmt: skip
QI_COLUMNS = 37
ABSENT, STARTING, READY, GONE = 0, 1, 2, 3  # a row's LIFE: not yet a replica, ..., removed
# a prefix block's entry on a replica (a row of `State.entries[0]`): its key (key id << ROW_BITS |
# replica), the requests holding it (-1: not cached), its neighbours in its
# replica's list of evictable ones, the requests in flight there with it (prefix_affinity)
E_KEY, E_REF, E_PREV, E_NEXT, E_FLY = range(5)
E_FIELDS = 5
# a replica's usage (`State.qf`, simulator.engine.drive.Usage), when the jump in flight's
# first step not applied yet began, its cold start's seconds, when it was added and removed,
# since when it is idle
BUSY_S, KV_S, KV_PEAK, FULL_S, J_TD, COLD_S, CREATED, REMOVED, IDLE_SINCE = range(9)
QF_COLUMNS = 9

# a request in its replica (the reference scheduler's statuses; NONE before it is placed)
NONE, WAITING, RUNNING, FINISHED, ABORTED, QUEUED = 0, 1, 2, 3, 4, 5  # QUEUED: at the fleet
# the ledger's statuses and error kinds (simulator.replay.ledger)
L_UNSENT, L_OK, L_ERROR, L_CANCELLED, L_TIMEOUT, L_REJECTED = -1, 0, 1, 2, 3, 4
K_ABANDONED, K_CONTEXT_LENGTH, K_HTTP_429, K_HTTP_500, K_TIMED_OUT = 0, 1, 2, 3, 4
# events (`Events.i` columns: priority, order scheduled, kind, subject): the arrivals process
# starting, its timer for the next opener, a replica's step end or wake-up, a follow-up's send,
# a user's patience running out, a queued request's timer starting (a SimPy process) and its
# deadline; the autoscaler's process starting and its timer, a cold replica's warm-up process
# starting and its timer
PRI, SEQ, EVENT, ARG = range(4)
(E_START, E_ARRIVAL, E_STEP_END, E_WAKE, E_SEND, E_PATIENCE, E_QUEUED, E_EXPIRE, E_SCALER,
 E_TICK, E_WARM, E_READY) = range(12)  # fmt: skip
URGENT, NORMAL = 0, 1  # SimPy's priorities (a process's start is urgent)
# the counters in `Events.ctr`, and the fleet's central queue (head, tail, length) and the
# requests its replicas hold beyond their batch slots, the fault draws used, the attempts
# retried; the users not done yet (the autoscaler runs while there are), the rows made
# replicas, the replicas present and those ready, cold starts, the points of the replica
# count's log (`Events.counts`), the autoscaler's window (`Events.window`: its first and how
# many)
(SIZE, COUNT, CHUNKS, TURN, Q_HEAD, Q_TAIL, Q_LEN, OVER_ALL, FAULTS_DRAWN, RETRIED, OUTSTANDING,
 ROWS, MEMBERS, READY_N, COLD_STARTS, COUNTS, WIN_H, WIN_N) = range(18)  # fmt: skip
# a run of steady decode steps is one event (`simulator.engine.drive`: MAX_JUMP, MIN_JUMP)
MAX_JUMP, MIN_JUMP = 4096, 3
# the autoscaler's metrics, and its numbers' places in `Config.scaler`
IN_FLIGHT, QUEUE, KV = 0, 1, 2
S_METRIC, S_TARGET, S_INTERVAL, S_STABILISATION, S_MIN, S_MAX, S_KEEP_ALIVE = range(7)
# routing policies and step-cost models
LEAST_OUTSTANDING, ROUND_ROBIN, RANDOM, LEAST_KV, PREFIX_AFFINITY = 0, 1, 2, 3, 4
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
    cost: A  # f8[6 + 2n]: the cost model's numbers (see `step_seconds`), then a step table's
    # n batch sizes and their n step times
    keep_chunks: bool
    jumps: bool  # a run of steady decode steps as one event (the reference's default)
    central_queue: bool  # requests wait at the fleet for a free batch slot
    admission_limit: int  # requests waiting beyond which one is refused (429); -1: none
    retry_after_s: float  # the fleet's 429s' Retry-After (NaN: none)
    faults: bool  # `State.faults` says each send's injected fault
    fault_retry_after_s: float  # the injected 429s' Retry-After
    affinity_overload: float  # prefix_affinity: a replica this full (x slots) yields ...
    affinity_min_match: float  # ... and a cached run this short (a share of the prompt) too
    prefix_headroom: int  # the most prefix block entries one event may add (0: no prefixes)
    autoscale: bool  # an autoscaler: `replicas` is then the rows the replicas may take
    scaler: A  # f8[7]: its metric (IN_FLIGHT, QUEUE, KV), target, interval_s, stabilisation_s,
    # min_replicas, max_replicas, keep_alive_s


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
    rng: Any  # random routing's generator (`Router`'s: numba draws from it as numpy does)
    prefix: A  # i8: the prefix blocks' key ids, entries and hash table (`simulator.fast.prefix`)


class Events(NamedTuple):
    t: A  # f8[room]
    i: A  # i8[room, 4]
    ctr: A  # i8[18]: the heap's size, events scheduled, chunk times kept, round robin's turn...
    chunk_row: A
    chunk_t: A
    finished: A  # scratch: a step's finished rows
    scratch: A  # scratch: a list's rows
    retried: A  # f8[room, 7]: attempts retried (row, intended, start, end, attempt, status,
    # error kind)
    window: A  # f8[room, 2]: the autoscaler's recent (time, replicas wanted), a ring
    counts: A  # f8[room, 2]: (time, replicas present) at each change, from the start


def state(
    n: int, rows: int, num_blocks: int, block_size: int, max_num_seqs: int, replicas: int
) -> State:
    """Fresh tables for `n` requests (the plan's columns still to fill) and `rows` replicas,
    the first `replicas` of them ready (the others for an autoscaler to add)."""
    ri = np.zeros((n, RI_COLUMNS), np.int64)
    ri[:, PHASE:] = -1
    ri[:, [OK_NEXT, FAIL_NEXT, KIND]] = -1
    ri[:, [ATTEMPT, R_MAX, R_ON]] = 0
    ri[:, STATUS] = L_UNSENT
    ri[:, [KOFF, KLEN, NCACHED, CACHED_T]] = 0
    rf = np.zeros((n, RF_COLUMNS))
    rf[:, INTENDED:] = np.nan
    qi, qf, phases, wakes = replica_rows(rows, num_blocks, block_size, max_num_seqs)
    qi[:replicas, LIFE] = READY
    qi[:replicas, TIMER] = 1  # each starts with its wake-up pending
    empty = np.empty(0, np.int64)
    rng = np.random.default_rng(0)
    # no prefix blocks (`simulator.fast.prefix.pack`): a header, a table of one empty slot
    prefix = np.array([-1, 0, 0, 0, 1, 0, -1, 0], np.int64)
    loads = load_tree(qi)
    return State(ri, rf, qi, qf, empty, loads, phases, wakes, np.zeros((n, 1)), empty, rng, prefix)


def replica_rows(
    rows: int, num_blocks: int, block_size: int, max_num_seqs: int
) -> tuple[A, A, A, A]:
    """Fresh replicas' rows, none a replica yet: `State.qi`, `.qf`, `.phases`, `.wakes`."""
    qi = np.full((rows, QI_COLUMNS), -1, np.int64)
    qi[:, [RUN_LEN, DC_LEN, W_LEN, DECODE_CTX, PREEMPTED, RECOMPUTED, STEPS]] = 0
    qi[:, NEXT_WAKE] = np.iinfo(np.int64).max
    qi[:, [WAKES, J_DONE, J_CTX, OVER, EV_LEN, CACHED, TIMER, COLD]] = 0
    qi[:, FREE], qi[:, LIFE] = num_blocks, ABSENT
    qf = np.zeros((rows, QF_COLUMNS))
    qf[:, REMOVED] = np.nan
    phases = np.zeros((rows, block_size), np.int64)
    wakes = np.zeros((rows, 4 * max_num_seqs + 16), np.int64)
    return qi, qf, phases, wakes


def load_tree(qi: A) -> A:
    """The tree of the ready replicas' (load, row) (`queues._load_changed`), its root the
    least; others at the largest integer."""
    rows = len(qi)
    leaves = 1 << max(rows - 1, 0).bit_length()
    loads = np.full(2 * leaves, np.iinfo(np.int64).max, np.int64)
    ready = np.flatnonzero(qi[:, LIFE] == READY)
    loads[leaves + ready] = (qi[ready, RUN_LEN] + qi[ready, W_LEN]) * rows + ready
    for i in range(leaves - 1, 0, -1):
        loads[i] = min(loads[2 * i], loads[2 * i + 1])
    return loads


def events(
    n: int,
    rows: int,
    max_num_seqs: int,
    chunk_room: int,
    retries: int = 0,
    window: int = 0,
) -> Events:
    """The event heap's room: per replica row its timer, one cut short, a warm-up's two, the
    arrivals' and the autoscaler's, and a follow-up, a patience timer and two queue timers per
    request; the autoscaler's `window` of recent counts, and room to log each row's coming
    and going."""
    room = 4 * n + 4 * rows + 4
    counters = np.zeros(18, np.int64)
    counters[[Q_HEAD, Q_TAIL]] = -1  # the central queue's ends: none
    scratch = max_num_seqs + 1
    return Events(
        np.empty(room), np.empty((room, 4), np.int64), counters, np.empty(chunk_room, np.int64),
        np.empty(chunk_room), np.empty(scratch, np.int64), np.empty(scratch, np.int64),
        np.empty((retries, 7)), np.empty((window, 2)), np.empty((2 * rows + 1, 2)),
    )  # fmt: skip
