"""The prefix cache on the fast core's tables (`simulator.engine.kvcache.BlockManager`'s
shared blocks): each replica's cached blocks, ref-counted, those no request holds kept in
least-recently-freed order until a new block needs their space; and for prefix_affinity routing
the prefix blocks of the requests in flight on each replica (`Router.placed`).

All of it lives in one array, `State.prefix` (`parts`). A request's full prefix blocks are the
key ids `ids[KOFF : KOFF + KLEN]` (the plan's `prefix_block_keys`, numbered in Python). A block
cached or in flight on replica r is an entry, a row of `entries` (its key, the requests holding
it (-1: not cached), its neighbours in r's list of evictable ones, the requests in flight with
it) found by key id << ROW_BITS | r in a hash table (`tkeys`, `tvalues`: linear probing, at
most half full); `memo` keeps, beside each key, its entry while the request holds it (no
lookup to let go of it).
"""

from __future__ import annotations

import numpy as np

from simulator.fast.layout import (
    BLOCKS,
    CACHED,
    E_FIELDS,
    E_FLY,
    E_KEY,
    E_NEXT,
    E_PREV,
    E_REF,
    EV_H,
    EV_LEN,
    EV_T,
    FREE,
    KLEN,
    KOFF,
    NCACHED,
    PROMPT,
    RUN_LEN,
    W_LEN,
    A,
    Config,
    State,
    jit,
)
from simulator.fast.queues import _append as append
from simulator.fast.queues import _unlink as unlink
from simulator.fast.scaling import routable

# `State.prefix`, one array (grown whole between events, `sim._grown`): a header
# (the first dropped entry's row (-1: none), the rows used, the keys in the table, and the
# sizes of the parts that follow), then the requests' key ids, the memo beside them, the hash
# table's keys and values, and the entries (`parts`)
SPARE, USED, KEYS, NKEYS, TSIZE, ROWS = range(6)
HEADER = 6
ROW_BITS = 24  # a table key is a key id, then a replica's row in its low bits


def views(p: A) -> tuple[A, A, A, A, A]:
    """`State.prefix`'s parts: key ids, memo, the table's keys and values, the entries (`parts`
    in the kernel; Python calls this, for numpy's views)."""
    n, size, rows = p[NKEYS], p[TSIZE], p[ROWS]
    a = HEADER + 2 * n + 2 * size
    ents = p[a : a + rows * E_FIELDS].reshape((rows, E_FIELDS))
    return (
        p[HEADER : HEADER + n],
        p[HEADER + n : HEADER + 2 * n],
        p[a - 2 * size : a - size],
        p[a - size : a],
        ents,
    )


parts = jit(inline="always")(views)


def pack(ids: A, memo: A, tkeys: A, tvalues: A, entries: A, header: A) -> A:
    """One `State.prefix` of these parts (the header's first three numbers from `header`)."""
    head = np.array([*header[:3], len(ids), len(tkeys), len(entries)], np.int64)
    return np.concatenate([head, ids, memo, tkeys, tvalues, entries.ravel()])


@jit
def _key(ids: A, ri: A, r: int, s: int, j: int) -> int:
    """The table's key of request `s`'s `j`-th prefix block on replica `r`."""
    return int(ids[ri[s, KOFF] + j] << ROW_BITS | r)


@jit
def _home(key: int, mask: int) -> int:
    """Where `key` starts its probe (Fibonacci hashing: the top bits of key x 2^64 / phi)."""
    return int(np.uint64(key) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)) & mask


@jit
def _find(keys: A, values: A, key: int) -> int:
    """The entry of `key` in the hash table (-1: none)."""
    mask = len(keys) - 1
    i = _home(key, mask)
    while keys[i] >= 0:
        if keys[i] == key:
            return int(values[i])
        i = (i + 1) & mask
    return -1


@jit
def _insert(keys: A, values: A, key: int, value: int) -> None:
    mask = len(keys) - 1
    i = _home(key, mask)
    while keys[i] >= 0:
        i = (i + 1) & mask
    keys[i], values[i] = key, value


@jit
def _remove(keys: A, values: A, key: int) -> None:
    """`key` out of the table: the keys after it in its run moved back (no tombstones)."""
    mask = len(keys) - 1
    i = _home(key, mask)
    while keys[i] != key:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if keys[j] < 0:
            break
        home = _home(keys[j], mask)
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            keys[i], values[i] = keys[j], values[j]
            i = j
    keys[i] = -1


@jit
def _new_entry(w: State, tkeys: A, tvalues: A, ents: A, key: int) -> int:
    """An entry for `key` (which has none), neither cached nor in flight. The kernel pauses
    for bigger tables before an event could run out of room (`room_for_an_event`)."""
    spare = w.prefix
    if spare[SPARE] >= 0:  # a dropped entry's row
        e = spare[SPARE]
        spare[SPARE] = ents[e, E_NEXT]
    else:
        e = spare[USED]
        if e == len(ents):
            raise RuntimeError("fast core: more prefix block entries than an event may add")
        spare[USED] += 1
    ents[e, E_KEY], ents[e, E_REF], ents[e, E_FLY] = key, -1, 0
    _insert(tkeys, tvalues, key, e)
    spare[KEYS] += 1
    return int(e)


@jit
def room_for_an_event(w: State, c: Config) -> bool:
    """Whether the entries and the hash table (at most half full) hold the most one event may
    add (`Config.prefix_headroom`)."""
    wanted = w.prefix[KEYS] + c.prefix_headroom
    return bool(wanted <= w.prefix[ROWS] and 2 * wanted <= w.prefix[TSIZE])


@jit
def rehash(keys: A, values: A, into_keys: A, into_values: A) -> None:
    """The table's keys into a bigger one."""
    for i in range(len(keys)):
        if keys[i] >= 0:
            _insert(into_keys, into_values, keys[i], values[i])


@jit
def _drop(w: State, keys: A, values: A, ents: A, e: int) -> None:
    """Entry `e`, neither cached nor in flight any more, gone (its row kept for another)."""
    _remove(keys, values, ents[e, E_KEY])
    w.prefix[KEYS] -= 1
    ents[e, E_NEXT] = w.prefix[SPARE]
    w.prefix[SPARE] = e


@jit
def cached_run(w: State, c: Config, r: int, s: int) -> int:
    """How many of `s`'s leading prefix blocks replica `r` caches (`BlockManager.cached_run`);
    their entries kept in the memo."""
    ids, memo, keys, values, ents = parts(w.prefix)
    n, first = 0, w.ri[s, KOFF]
    while n < w.ri[s, KLEN]:
        e = _find(keys, values, _key(ids, w.ri, r, s, n))
        if e < 0 or ents[e, E_REF] < 0:
            break
        memo[first + n] = e
        n += 1
    return n


@jit
def revived(w: State, s: int, hits: int) -> int:
    """Of the first `hits` blocks `cached_run` found, those no request holds (counted free)."""
    n, first = 0, w.ri[s, KOFF]
    _, memo, _, _, ents = parts(w.prefix)
    for j in range(hits):
        n += ents[memo[first + j], E_REF] == 0
    return n


@jit
def take_hits(w: State, r: int, s: int, hits: int) -> None:
    """`s` holds the first `hits` blocks `cached_run` found, shared (out of the evictable)."""
    first = w.ri[s, KOFF]
    _, memo, _, _, ents = parts(w.prefix)
    for j in range(hits):
        e = memo[first + j]
        if ents[e, E_REF] == 0:
            _unlink(w.qi, ents, r, e)
        ents[e, E_REF] += 1
    w.ri[s, NCACHED] = hits


@jit
def register(w: State, c: Config, r: int, s: int, computed: int) -> None:
    """Offer `s`'s computed full prefix blocks past those it shares to `r`'s cache; one another
    request cached already stays its own, and the run stops there (`BlockManager.register`)."""
    ri = w.ri
    i, stop = ri[s, NCACHED], min(ri[s, KLEN], computed // c.block_size)
    ids, memo, keys, values, ents = parts(w.prefix)
    while i < stop:
        key = _key(ids, w.ri, r, s, i)
        e = _find(keys, values, key)
        if e < 0:
            e = _new_entry(w, keys, values, ents, key)
        elif ents[e, E_REF] >= 0:
            break
        ents[e, E_REF] = 1
        w.qi[r, CACHED] += 1
        memo[ri[s, KOFF] + i] = e
        i += 1
    ri[s, NCACHED] = i


@jit(inline="always")
def release(w: State, r: int, s: int) -> None:
    """`s` leaves replica `r` (`BlockManager.free`): its own blocks free, and each shared one
    that no other request holds now (cached, evictable: a chain's tail before its head)."""
    if w.ri[s, NCACHED]:
        _release_shared(w, r, s)
    else:
        w.qi[r, FREE] += w.ri[s, BLOCKS]
        w.ri[s, BLOCKS] = 0


@jit
def _release_shared(w: State, r: int, s: int) -> None:
    ri, qi = w.ri, w.qi
    _, memo, _, _, ents = parts(w.prefix)
    released = ri[s, BLOCKS] - ri[s, NCACHED]
    for j in range(ri[s, NCACHED] - 1, -1, -1):
        e = memo[ri[s, KOFF] + j]
        ents[e, E_REF] -= 1
        if ents[e, E_REF] == 0:
            append(ents, qi, E_PREV, E_NEXT, EV_H, EV_T, r, e)
            qi[r, EV_LEN] += 1
            released += 1
    ri[s, NCACHED] = 0
    qi[r, FREE] += released
    ri[s, BLOCKS] = 0


@jit(inline="always")
def evict(w: State, r: int) -> None:
    """Drop the least recently freed cached blocks while they outnumber the free ones (their
    space is taken)."""
    if w.qi[r, EV_LEN] > w.qi[r, FREE]:
        _evict(w, r)


@jit
def _evict(w: State, r: int) -> None:
    qi = w.qi
    _, _, keys, values, ents = parts(w.prefix)
    while qi[r, EV_LEN] > qi[r, FREE]:
        e = qi[r, EV_H]
        _unlink(qi, ents, r, e)
        qi[r, CACHED] -= 1
        ents[e, E_REF] = -1
        if ents[e, E_FLY] == 0:
            _drop(w, keys, values, ents, e)


@jit
def _unlink(qi: A, ents: A, r: int, e: int) -> None:
    """Entry `e` out of replica `r`'s evictable list."""
    unlink(ents, qi, E_PREV, E_NEXT, EV_H, EV_T, r, e)
    qi[r, EV_LEN] -= 1


@jit
def in_flight(w: State, c: Config, r: int, s: int, placed: bool) -> None:
    """`s` was placed on replica `r` or left it: prefix_affinity counts its prefix blocks
    there as cached meanwhile (`Router.placed`, `released`)."""
    first = w.ri[s, KOFF]
    ids, memo, keys, values, ents = parts(w.prefix)
    for j in range(w.ri[s, KLEN]):
        if placed:
            key = _key(ids, w.ri, r, s, j)
            e = _find(keys, values, key)
            if e < 0:
                e = _new_entry(w, keys, values, ents, key)
            memo[first + j] = e
            ents[e, E_FLY] += 1
        else:
            e = memo[first + j]
            ents[e, E_FLY] -= 1
            if ents[e, E_FLY] == 0 and ents[e, E_REF] < 0:
                _drop(w, keys, values, ents, e)


@jit
def affine(w: State, ctr: A, c: Config, s: int, free_only: bool) -> int:
    """Where prefix_affinity sends `s` (`Router._affine`), of the replicas with a free batch
    slot if `free_only` (-1: none): the one caching or with in flight the longest run of its
    prefix blocks, the least loaded of those, if the run covers `affinity_min_match` of its
    prompt and that replica is not full; else the least loaded (then caching the fewest)."""
    qi = w.qi
    least = -1
    for q in range(c.replicas):
        load = qi[q, RUN_LEN] + qi[q, W_LEN]
        if (free_only and load >= c.max_num_seqs) or not routable(qi, ctr, q):
            continue
        if least < 0:
            least = q
            continue
        most = qi[least, RUN_LEN] + qi[least, W_LEN]
        if load < most or (load == most and qi[q, CACHED] < qi[least, CACHED]):
            least = q
    if least < 0 or w.ri[s, KLEN] == 0:
        return least
    best, most = least, 0
    for q in range(c.replicas):
        load = qi[q, RUN_LEN] + qi[q, W_LEN]
        if (free_only and load >= c.max_num_seqs) or not routable(qi, ctr, q):
            continue
        held = _held(w, c, q, s)
        if held > most or (held == most and held and load < qi[best, RUN_LEN] + qi[best, W_LEN]):
            best, most = q, held
    if most * c.block_size < c.affinity_min_match * w.ri[s, PROMPT]:
        return least
    best_load = qi[best, RUN_LEN] + qi[best, W_LEN]
    full = best_load >= c.affinity_overload * c.max_num_seqs
    return least if full and qi[least, RUN_LEN] + qi[least, W_LEN] < best_load else best


@jit
def _held(w: State, c: Config, r: int, s: int) -> int:
    """How many of `s`'s leading prefix blocks replica `r` caches or has in flight."""
    ids, _, keys, values, _ = parts(w.prefix)
    n = 0
    while n < w.ri[s, KLEN] and _find(keys, values, _key(ids, w.ri, r, s, n)) >= 0:
        n += 1
    return n
