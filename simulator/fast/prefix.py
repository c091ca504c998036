"""The prefix cache on the fast core's tables (`simulator.engine.kvcache.BlockManager`'s
shared blocks): each replica's cached blocks, ref-counted, those no request holds kept in
least-recently-freed order until a new block needs their space.

A request's full prefix blocks are the key ids `State.keys[KOFF : KOFF + KLEN]` (the plan's
`prefix_block_keys`, numbered in Python); it holds the first NCACHED of them shared. A block
cached on replica r is an entry (`State.entries`: its key, refs, and its neighbours in r's list
of evictable ones) found by `State.cache[key id * replicas + r]`.
"""

from __future__ import annotations

from numba import njit

from simulator.fast.layout import (
    BLOCKS,
    CACHED,
    E_FIELDS,
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
    Config,
    State,
)


@njit(cache=True)
def _entry(w: State, c: Config, r: int, s: int, j: int) -> int:
    """The entry of request `s`'s `j`-th prefix block on replica `r` (-1: not cached)."""
    return w.cache.get(w.keys[w.ri[s, KOFF] + j] * c.replicas + r, -1)


@njit(cache=True)
def cached_run(w: State, c: Config, r: int, s: int) -> int:
    """How many of `s`'s leading prefix blocks replica `r` caches (`BlockManager.cached_run`)."""
    n = 0
    while n < w.ri[s, KLEN] and _entry(w, c, r, s, n) >= 0:
        n += 1
    return n


@njit(cache=True)
def revived(w: State, c: Config, r: int, s: int, hits: int) -> int:
    """Of `s`'s first `hits` cached blocks, those no request holds (counted free)."""
    n = 0
    for j in range(hits):
        n += w.entries[_entry(w, c, r, s, j) * E_FIELDS + E_REF] == 0
    return n


@njit(cache=True)
def take_hits(w: State, c: Config, r: int, s: int, hits: int) -> None:
    """`s` holds its first `hits` prefix blocks, cached on `r`, shared (out of the evictable)."""
    ents = w.entries
    for j in range(hits):
        e = _entry(w, c, r, s, j)
        if ents[e * E_FIELDS + E_REF] == 0:
            _unlink(w, r, e)
        ents[e * E_FIELDS + E_REF] += 1
    w.ri[s, NCACHED] = hits


@njit(cache=True)
def register(w: State, c: Config, r: int, s: int, computed: int) -> None:
    """Offer `s`'s computed full prefix blocks past those it shares to `r`'s cache; one another
    request cached already stays its own, and the run stops there (`BlockManager.register`)."""
    ri, ents = w.ri, w.entries
    i, stop = ri[s, NCACHED], min(ri[s, KLEN], computed // c.block_size)
    while i < stop:
        key = w.keys[ri[s, KOFF] + i] * c.replicas + r
        if key in w.cache:
            break
        e = len(ents) // E_FIELDS
        if w.spare[0] >= 0:  # an evicted entry's place
            e = w.spare[0]
            w.spare[0] = ents[e * E_FIELDS + E_NEXT]
        else:
            for _ in range(E_FIELDS):
                ents.append(-1)
        ents[e * E_FIELDS + E_KEY], ents[e * E_FIELDS + E_REF] = key, 1
        w.cache[key] = e
        w.qi[r, CACHED] += 1
        i += 1
    ri[s, NCACHED] = i


@njit(cache=True)
def release(w: State, c: Config, r: int, s: int) -> None:
    """`s` leaves replica `r` (`BlockManager.free`): its own blocks free, and each shared one
    that no other request holds now (cached, evictable: a chain's tail before its head)."""
    ri, ents = w.ri, w.entries
    released = ri[s, BLOCKS] - ri[s, NCACHED]
    for j in range(ri[s, NCACHED] - 1, -1, -1):
        e = _entry(w, c, r, s, j)
        ents[e * E_FIELDS + E_REF] -= 1
        if ents[e * E_FIELDS + E_REF] == 0:
            ents[e * E_FIELDS + E_PREV], ents[e * E_FIELDS + E_NEXT] = w.qi[r, EV_T], -1
            if w.qi[r, EV_T] >= 0:
                ents[w.qi[r, EV_T] * E_FIELDS + E_NEXT] = e
            else:
                w.qi[r, EV_H] = e
            w.qi[r, EV_T] = e
            w.qi[r, EV_LEN] += 1
            released += 1
    ri[s, NCACHED] = 0
    w.qi[r, FREE] += released
    ri[s, BLOCKS] = 0


@njit(cache=True)
def evict(w: State, r: int) -> None:
    """Drop the least recently freed cached blocks while they outnumber the free ones (their
    space is taken)."""
    qi, ents = w.qi, w.entries
    while qi[r, EV_LEN] > qi[r, FREE]:
        e = qi[r, EV_H]
        _unlink(w, r, e)
        del w.cache[ents[e * E_FIELDS + E_KEY]]
        qi[r, CACHED] -= 1
        ents[e * E_FIELDS + E_NEXT] = w.spare[0]
        w.spare[0] = e


@njit(cache=True)
def _unlink(w: State, r: int, e: int) -> None:
    """Entry `e` out of replica `r`'s evictable list."""
    qi, ents = w.qi, w.entries
    prev, nxt = ents[e * E_FIELDS + E_PREV], ents[e * E_FIELDS + E_NEXT]
    if prev >= 0:
        ents[prev * E_FIELDS + E_NEXT] = nxt
    else:
        qi[r, EV_H] = nxt
    if nxt >= 0:
        ents[nxt * E_FIELDS + E_PREV] = prev
    else:
        qi[r, EV_T] = prev
    qi[r, EV_LEN] -= 1


@njit(cache=True)
def in_flight(w: State, c: Config, r: int, s: int, change: int) -> None:
    """`s` was placed on replica `r` (`change` 1) or left it (-1): prefix_affinity counts its
    prefix blocks there as cached meanwhile (`Router.placed`, `released`)."""
    for j in range(w.ri[s, KLEN]):
        key = w.keys[w.ri[s, KOFF] + j] * c.replicas + r
        n = w.flying.get(key, 0) + change
        if n:
            w.flying[key] = n
        else:
            del w.flying[key]


@njit(cache=True)
def affine(w: State, c: Config, s: int, free_only: bool) -> int:
    """Where prefix_affinity sends `s` (`Router._affine`), of the replicas with a free batch
    slot if `free_only` (-1: none): the one caching or with in flight the longest run of its
    prefix blocks, the least loaded of those, if the run covers `affinity_min_match` of its
    prompt and that replica is not full; else the least loaded (then caching the fewest)."""
    qi = w.qi
    least = -1
    for q in range(c.replicas):
        load = qi[q, RUN_LEN] + qi[q, W_LEN]
        if free_only and load >= c.max_num_seqs:
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
        if free_only and load >= c.max_num_seqs:
            continue
        held = _held(w, c, q, s)
        if held > most or (held == most and held and load < qi[best, RUN_LEN] + qi[best, W_LEN]):
            best, most = q, held
    if most * c.block_size < c.affinity_min_match * w.ri[s, PROMPT]:
        return least
    best_load = qi[best, RUN_LEN] + qi[best, W_LEN]
    full = best_load >= c.affinity_overload * c.max_num_seqs
    return least if full and qi[least, RUN_LEN] + qi[least, W_LEN] < best_load else best


@njit(cache=True)
def _held(w: State, c: Config, r: int, s: int) -> int:
    """How many of `s`'s leading prefix blocks replica `r` caches or has in flight."""
    n = 0
    while n < w.ri[s, KLEN]:
        key = w.keys[w.ri[s, KOFF] + n] * c.replicas + r
        if key not in w.cache and key not in w.flying:
            break
        n += 1
    return n
