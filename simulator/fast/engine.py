"""One replica's engine on the fast core's tables (`simulator.engine.scheduler`, `.kvcache`,
`.core`): a step's plan (decodes' blocks, prompt chunks, admissions, within the token budget;
preemption of the newest) and its effects when it ends. A decode's tokens and blocks follow its
replica's step counter, as `Scheduler` keeps them."""

from __future__ import annotations

import numpy as np

from simulator.fast.costs import add_usage, step_seconds
from simulator.fast.jumps import _plan_jump
from simulator.fast.layout import (
    BLOCKS,
    CACHED_T,
    COMP,
    COUNT,
    DC_H,
    DC_LEN,
    DC_N,
    DC_P,
    DC_T,
    DEC,
    DECODE_CTX,
    E_STEP_END,
    FINISHED,
    FIRST,
    FREE,
    GEN,
    KLEN,
    MAXT,
    NCACHED,
    ND_H,
    ND_N,
    ND_P,
    ND_T,
    NEED,
    NEXT_WAKE,
    NORMAL,
    PF_H,
    PF_N,
    PF_P,
    PF_T,
    PHASE,
    PRE,
    PREEMPTED,
    PROMPT,
    RECOMPUTED,
    RUN_H,
    RUN_LEN,
    RUN_N,
    RUN_P,
    RUN_T,
    RUNNING,
    SCHED,
    SINCE,
    SP_H,
    SP_N,
    SP_T,
    ST,
    STEPS,
    TIMER_SEQ,
    W_H,
    W_LEN,
    W_N,
    W_P,
    W_T,
    WAITING,
    A,
    Config,
    Events,
    State,
    jit,
)
from simulator.fast.prefix import cached_run, evict, register, release, revived, take_hits
from simulator.fast.queues import (
    _append,
    _keep_chunk,
    _prepend,
    _push_back,
    _rows_of,
    _schedule,
    _unlink,
    _wake_push,
    _wakes_past,
)


@jit
def _gen(ri: A, qi: A, r: int, s: int) -> int:
    """Output tokens so far (a decode's follow its replica's steps)."""
    if ri[s, DEC]:
        return int(ri[s, GEN] + qi[r, STEPS] - ri[s, SINCE])
    return int(ri[s, GEN])


@jit
def _fix_blocks(ri: A, qi: A, phases: A, r: int, s: int, block_size: int) -> None:
    """A decode's blocks counted explicitly again (`Scheduler._fix_blocks`)."""
    if ri[s, PHASE] >= 0:
        tokens = ri[s, PROMPT] + _gen(ri, qi, r, s)
        ri[s, BLOCKS] = -(-tokens // block_size)
        phases[r, ri[s, PHASE]] -= 1
        ri[s, PHASE] = -1


@jit(inline="always")
def _grow(w: State, r: int, s: int, block_size: int) -> None:
    """A decode's block for its next token's KV, if it needs one (or it waits for one), then
    its blocks grow on schedule (`Scheduler._grow`)."""
    ri, qi = w.ri, w.qi
    tokens = ri[s, PROMPT] + _gen(ri, qi, r, s)
    if tokens > ri[s, BLOCKS] * block_size:
        if qi[r, FREE] == 0:
            ri[s, NEED] = 1
            _append(ri, qi, ND_P, ND_N, ND_H, ND_T, r, s)
            return
        qi[r, FREE] -= 1
        evict(w, r)
        ri[s, BLOCKS] += 1
    phase = (qi[r, STEPS] + 1 - tokens) % block_size
    ri[s, PHASE] = phase
    w.phases[r, phase] += 1


@jit(inline="always")
def _leave(w: State, c: Config, r: int, s: int) -> None:
    """Take a running request out of its replica's running lists and free its blocks."""
    ri, qi, phases, block_size = w.ri, w.qi, w.phases, c.block_size
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
    release(w, r, s)


@jit(inline="always")
def _allocate(w: State, c: Config, r: int, s: int, tokens: int, hits: int) -> bool:
    """Blocks for `tokens` tokens, taking its first `hits` prefix blocks from the cache, all
    or none (`BlockManager.allocate`)."""
    ri, qi = w.ri, w.qi
    need = -(-tokens // c.block_size) - ri[s, BLOCKS] - hits
    if need < 0:
        need = 0
    back = revived(w, s, hits) if hits else 0
    if need + back > qi[r, FREE]:
        return False
    if hits:
        take_hits(w, r, s, hits)
    qi[r, FREE] -= need + back
    ri[s, BLOCKS] += need + hits
    evict(w, r)
    return True


@jit
def _make_room(w: State, c: Config, r: int, s: int, upto: int) -> int:
    """Blocks for `s` up to `upto` tokens, preempting the newest running until they fit
    (`Scheduler._make_room`): 1 done, 0 done after preempting, -1 `s` itself had to go."""
    ri, qi = w.ri, w.qi
    done = 1
    while not _allocate(w, c, r, s, upto, 0):
        v = qi[r, RUN_T]
        _leave(w, c, r, v)
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


@jit(inline="always")
def _finish(w: State, c: Config, finished: A, r: int, s: int, n: int) -> int:
    w.ri[s, ST] = FINISHED
    _leave(w, c, r, s)
    finished[n] = s
    return n + 1


@jit(inline="always")
def _update(w: State, e: Events, c: Config, r: int, now: float) -> int:
    """Apply replica `r`'s step, ended now (`Scheduler.update`): every decode gains a token and
    the blocks that become due, the decodes at their last token finish, then each prefill
    computes its chunk (the last one emits a token). How many finished (`Events.finished`)."""
    return _prefills_step(w, e, c, r, now, _decodes_step(w, e, c, r, now))


@jit(inline="always")
def _decodes_step(w: State, e: Events, c: Config, r: int, now: float) -> int:
    """The decodes' part of a step's end: their tokens, the blocks due, those that finish."""
    ri, qi, phases, finished, bs = w.ri, w.qi, w.phases, e.finished, c.block_size
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
            evict(w, r)
        else:  # too few: one by one, oldest first
            s = qi[r, RUN_H]
            while s >= 0:
                if ri[s, DEC] and ri[s, PHASE] == phase:
                    _fix_blocks(ri, qi, phases, r, s, bs)
                    ri[s, BLOCKS] -= 1  # the count included the block it has yet to get
                    _grow(w, r, s, bs)
                s = ri[s, RUN_N]
    if steps >= qi[r, NEXT_WAKE]:  # the decodes at their last token, in decoding order
        wake = np.iinfo(np.int64).max
        s = qi[r, DC_H]
        while s >= 0:
            nxt = ri[s, DC_N]
            last = ri[s, SINCE] + ri[s, MAXT] - ri[s, GEN]
            if last <= steps:
                n_fin = _finish(w, c, finished, r, s, n_fin)
            elif last < wake:
                wake = last
            s = nxt
        qi[r, NEXT_WAKE] = wake
    return n_fin


@jit(inline="always")
def _prefills_step(w: State, e: Events, c: Config, r: int, now: float, n_fin: int) -> int:
    """The prompts' part of a step's end: each chunk computed; a prompt done emits its token
    and decodes from now on, or finishes (`n_fin` finished before it)."""
    ri, rf, qi, finished, bs = w.ri, w.rf, w.qi, e.finished, c.block_size
    steps = qi[r, STEPS]
    s = qi[r, SP_H]
    while s >= 0:
        nxt = ri[s, SP_N]
        ri[s, SP_N] = -1
        if ri[s, ST] == RUNNING:
            ri[s, COMP] += ri[s, SCHED]
            if ri[s, NCACHED] < ri[s, KLEN]:
                register(w, c, r, s, ri[s, COMP])
            if ri[s, COMP] >= ri[s, PROMPT] + ri[s, GEN]:
                ri[s, GEN] += 1
                if c.keep_chunks:
                    _keep_chunk(e, s, now)
                if ri[s, GEN] == 1:
                    rf[s, FIRST] = now
                if ri[s, GEN] >= ri[s, MAXT]:
                    n_fin = _finish(w, c, finished, r, s, n_fin)
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
                    _grow(w, r, s, bs)
        s = nxt
    qi[r, SP_H] = qi[r, SP_T] = -1
    return n_fin


@jit(inline="always")
def _plan(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """Plan replica `r`'s next step and set its end (`Scheduler.schedule`, `Engine.plan_step`,
    the drive loop's usage): the decodes' blocks, the prompts' next chunks, then admissions if
    nothing was preempted, within the step's token budget; a steady batch jumps."""
    qi = w.qi
    preempted = _room_for_decodes(w, e, c, r)
    budget, prefill, context, n_prefill, cut = _prompt_chunks(w, e, c, r)
    preempted = preempted or cut
    decode = qi[r, DC_LEN]
    context += qi[r, DECODE_CTX]
    if not preempted:
        taken, attended, n_admitted = _admit(w, c, r, budget, n_prefill)
        prefill, context, n_prefill = prefill + taken, context + attended, n_prefill + n_admitted
    seconds = step_seconds(c, decode, prefill, context)
    steady = qi[r, PF_H] < 0 and qi[r, ND_H] < 0  # and nothing to admit (`Scheduler.steady`)
    steady = steady and (qi[r, W_H] < 0 or qi[r, RUN_LEN] >= c.max_num_seqs)
    jump = c.jumps and n_prefill == 0 and not preempted and steady
    if jump and _plan_jump(w, e, c, r, now, decode, context):
        return
    add_usage(w, c, r, seconds)
    qi[r, TIMER_SEQ] = e.ctr[COUNT]
    _schedule(e.t, e.i, e.ctr, now + seconds, NORMAL, E_STEP_END, r)


@jit(inline="always")
def _room_for_decodes(w: State, e: Events, c: Config, r: int) -> bool:
    """Decodes whose blocks are full: a block each, or room made by preempting the newest;
    whether any was preempted."""
    ri, qi, scratch, bs = w.ri, w.qi, e.scratch, c.block_size
    preempted = False
    if qi[r, ND_H] < 0:
        return preempted
    m = _rows_of(ri, qi[r, ND_H], ND_N, scratch)
    for j in range(m):
        s = scratch[j]
        if ri[s, ST] != RUNNING:
            continue
        if qi[r, FREE] > 0:
            qi[r, FREE] -= 1
            evict(w, r)
            ri[s, BLOCKS] += 1
            done = 1
        else:
            done = _make_room(w, c, r, s, ri[s, PROMPT] + _gen(ri, qi, r, s))
            preempted = preempted or done < 1
        if done >= 0:
            ri[s, NEED] = 0
            _unlink(ri, qi, ND_P, ND_N, ND_H, ND_T, r, s)
            _grow(w, r, s, bs)
    return preempted


@jit(inline="always")
def _prompt_chunks(w: State, e: Events, c: Config, r: int) -> tuple[int, int, int, int, bool]:
    """Prompts in progress, each its next chunk within the budget left by the decodes: (budget
    left, tokens, context, prompts, whether any was preempted making room)."""
    ri, qi, scratch, bs = w.ri, w.qi, e.scratch, c.block_size
    budget = c.max_batched_tokens - qi[r, DC_LEN]
    prefill = context = n_prefill = 0
    preempted = False
    m = _rows_of(ri, qi[r, PF_H], PF_N, scratch) if qi[r, PF_H] >= 0 else 0
    for j in range(m):
        s = scratch[j]
        if budget <= 0:
            break
        if ri[s, ST] != RUNNING:  # preempted making room for an older one
            continue
        remaining = ri[s, PROMPT] + ri[s, GEN] - ri[s, COMP]
        n = remaining if remaining < budget else budget
        upto = ri[s, COMP] + n
        if upto > ri[s, BLOCKS] * bs:
            done = _make_room(w, c, r, s, upto)
            preempted = preempted or done < 1
            if done < 0:
                break
        ri[s, SCHED] = n
        budget -= n
        prefill += n
        context += upto
        _push_back(ri, qi, SP_N, SP_H, SP_T, r, s)
        n_prefill += 1
    return budget, prefill, context, n_prefill, preempted


@jit(inline="always")
def _admit(w: State, c: Config, r: int, budget: int, n_prefill: int) -> tuple[int, int, int]:
    """Admit waiting requests in order while slots, the budget and the blocks allow, each
    starting past the prefix blocks the cache holds for it (`Scheduler._admit`): (their tokens
    this step, the context they attend over, how many)."""
    ri, qi, bs = w.ri, w.qi, c.block_size
    taken = attended = admitted = 0
    while qi[r, W_H] >= 0 and budget > 0 and qi[r, RUN_LEN] < c.max_num_seqs:
        s = qi[r, W_H]
        tokens = ri[s, PROMPT] + ri[s, GEN]
        hits = cached_run(w, c, r, s) if ri[s, KLEN] else 0
        while hits and hits * bs >= tokens:
            hits -= 1  # compute at least the last token, to sample from it
        cached = hits * bs
        remaining = tokens - cached
        if remaining > budget and not c.chunked and n_prefill + admitted:
            break  # without chunking a prompt goes whole (alone, when over the budget)
        n = remaining if remaining <= budget or not c.chunked else budget
        # a preempted request takes its whole context's blocks
        if not _allocate(w, c, r, s, tokens if ri[s, PRE] else cached + n, hits):
            break
        _unlink(ri, qi, W_P, W_N, W_H, W_T, r, s)
        qi[r, W_LEN] -= 1
        ri[s, ST] = RUNNING
        ri[s, COMP] = cached
        if not ri[s, PRE]:
            ri[s, CACHED_T] = cached
        ri[s, SCHED] = n
        _append(ri, qi, RUN_P, RUN_N, RUN_H, RUN_T, r, s)
        qi[r, RUN_LEN] += 1
        _append(ri, qi, PF_P, PF_N, PF_H, PF_T, r, s)
        _push_back(ri, qi, SP_N, SP_H, SP_T, r, s)
        admitted += 1
        budget -= n
        taken += n
        attended += cached + n
    return taken, attended, admitted
