"""The fast core's data structures, in arrays: the event heap (SimPy's order: time, priority,
the order scheduled), the lists through the request rows, the tree of the replicas' loads, the
heap of steps at which decodes were due to finish, and the buffer of token times."""

from __future__ import annotations

import numpy as np

from simulator.fast.layout import (
    ARG,
    CHUNKS,
    COUNT,
    EVENT,
    LIFE,
    OVER,
    OVER_ALL,
    PRI,
    READY,
    RUN_LEN,
    SEQ,
    SIZE,
    W_LEN,
    WAKES,
    A,
    Events,
    jit,
)


@jit
def _before(t: A, ei: A, a: int, b: int) -> bool:
    if t[a] != t[b]:
        return bool(t[a] < t[b])
    if ei[a, PRI] != ei[b, PRI]:
        return bool(ei[a, PRI] < ei[b, PRI])
    return bool(ei[a, SEQ] < ei[b, SEQ])


@jit
def _swap(t: A, ei: A, a: int, b: int) -> None:
    t[a], t[b] = t[b], t[a]
    for k in range(4):
        ei[a, k], ei[b, k] = ei[b, k], ei[a, k]


@jit
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


@jit
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


@jit
def _load_changed(tree: A, qi: A, ctr: A, slots: int, r: int) -> None:
    load = qi[r, RUN_LEN] + qi[r, W_LEN]
    over = max(load - slots, 0)
    ctr[OVER_ALL] += over - qi[r, OVER]
    qi[r, OVER] = over
    i = len(tree) // 2 + r
    tree[i] = load * len(qi) + r if qi[r, LIFE] == READY else np.iinfo(np.int64).max
    i >>= 1
    while i:
        a, b = tree[2 * i], tree[2 * i + 1]
        least = a if a < b else b
        if tree[i] == least:
            break
        tree[i] = least
        i >>= 1


@jit
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


@jit
def _append(ri: A, qi: A, p_: int, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    p = qi[r, t_]
    ri[s, p_], ri[s, n_] = p, -1
    if p >= 0:
        ri[p, n_] = s
    else:
        qi[r, h_] = s
    qi[r, t_] = s


@jit
def _prepend(ri: A, qi: A, p_: int, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    n = qi[r, h_]
    ri[s, p_], ri[s, n_] = -1, n
    if n >= 0:
        ri[n, p_] = s
    else:
        qi[r, t_] = s
    qi[r, h_] = s


@jit
def _rows_of(ri: A, head: int, n_: int, out: A) -> int:
    """A list's rows, in order, into `out`; how many."""
    m, s = 0, head
    while s >= 0:
        out[m] = s
        m += 1
        s = ri[s, n_]
    return m


@jit
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


@jit
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


@jit
def _keep_chunk(e: Events, s: int, now: float) -> None:
    n = e.ctr[CHUNKS]
    e.chunk_row[n], e.chunk_t[n] = s, now
    e.ctr[CHUNKS] = n + 1


@jit
def _push_back(ri: A, qi: A, n_: int, h_: int, t_: int, r: int, s: int) -> None:
    """Append row `s` to replica `r`'s one-way list (next column N, head H, tail T)."""
    ri[s, n_] = -1
    if qi[r, t_] >= 0:
        ri[qi[r, t_], n_] = s
    else:
        qi[r, h_] = s
    qi[r, t_] = s
