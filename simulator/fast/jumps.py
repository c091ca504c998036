"""Jumps: a steady batch (only decodes, nothing to admit) repeats its step until a decode
finishes or the blocks fall short; those steps are one event, their effects applied in bulk, and
a request sent to the replica meanwhile cuts the jump at the step in flight (`DriveLoop.
_plan_jump`, `_apply`, `_account`, `_cut`, `settle`): the reference's events, one for one."""

from __future__ import annotations

import numpy as np

from simulator.fast.costs import add_usage, step_seconds
from simulator.fast.layout import (
    BUSY_S,
    COUNT,
    DC_H,
    DC_LEN,
    DC_N,
    DEADLINE,
    DECODE_CTX,
    DL_H,
    E_STEP_END,
    FREE,
    FULL_S,
    J_COUNTED,
    J_CTX,
    J_DONE,
    J_STOP,
    J_TD,
    KV_PEAK,
    KV_S,
    MAX_JUMP,
    MIN_JUMP,
    NEXT_WAKE,
    NORMAL,
    ROWS,
    RUN_LEN,
    STEPS,
    TIMER_SEQ,
    WAKES,
    Config,
    Events,
    State,
    jit,
)
from simulator.fast.prefix import evict
from simulator.fast.queues import _keep_chunk, _schedule, _wakes_past


@jit
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


@jit
def _jump_step_s(w: State, c: Config, r: int, i: int) -> float:
    """Step `i` of the jump in flight: its duration (its context grows a token a decode)."""
    decode = w.qi[r, DC_LEN]
    return step_seconds(c, decode, 0, w.qi[r, J_CTX] + i * decode)


@jit
def _jump_end(w: State, c: Config, r: int, i: int) -> float:
    """When step `i` (not applied yet) of the jump in flight ends (its steps' times summed in
    order, from when it began: the sums the reference's accumulate makes)."""
    t = w.qf[r, J_TD]
    for k in range(w.qi[r, J_DONE], i + 1):
        t += _jump_step_s(w, c, r, k)
    return float(t)


@jit
def _jump_step_at(w: State, c: Config, r: int, at: float) -> int:
    """The first step of the jump in flight, from those not applied, ending at `at` or
    later (bisect_left over its ends)."""
    qi = w.qi
    t = w.qf[r, J_TD]
    for k in range(qi[r, J_DONE], qi[r, J_STOP] + 1):
        t += _jump_step_s(w, c, r, k)
        if t >= at:
            return k
    return int(qi[r, J_STOP] + 1)


@jit
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
    w.qf[r, J_TD] = now
    qi[r, TIMER_SEQ] = e.ctr[COUNT]
    _schedule(e.t, e.i, e.ctr, t, NORMAL, E_STEP_END, r)
    return True


@jit
def _apply(w: State, e: Events, c: Config, r: int, upto: int) -> None:
    """Apply the jump's steps before `upto`, none of which changes the batch: each decode's
    token (counted by the step counter), the blocks due, the usage (`DriveLoop._apply`)."""
    ri, qi, qf, phases = w.ri, w.qi, w.qf, w.phases
    done = qi[r, J_DONE]
    if upto <= done:
        return
    t = qf[r, J_TD]
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
    evict(w, r)
    qi[r, J_DONE] = upto
    qf[r, J_TD] = t


@jit
def kv_now(w: State, e: Events, c: Config, now: float) -> None:
    """Before a choice that reads the replicas' KV caches: each jump in flight applied up to
    its steps ended before now, as stepping would have them (`Fleet._kv_now`)."""
    for r in range(e.ctr[ROWS]):
        if w.qi[r, J_STOP] >= 0:
            _apply(w, e, c, r, _jump_step_at(w, c, r, now))


@jit
def _account(w: State, c: Config, r: int, i: int) -> None:
    """Count the jump's step `i` in the usage, once, with the KV use it ran with."""
    qi = w.qi
    if qi[r, J_COUNTED] == i:
        return
    qi[r, J_COUNTED] = i
    add_usage(w, c, r, _jump_step_s(w, c, r, i))


@jit
def _cut(w: State, e: Events, c: Config, r: int, now: float) -> None:
    """A request came: the jump ends with the step in flight, its timer moved there."""
    j = _jump_step_at(w, c, r, now)
    if j < w.qi[r, J_STOP]:
        w.qi[r, J_STOP] = j
        w.qi[r, TIMER_SEQ] = e.ctr[COUNT]
        _schedule(e.t, e.i, e.ctr, _jump_end(w, c, r, j), NORMAL, E_STEP_END, r)


@jit
def _land(w: State, e: Events, c: Config, r: int) -> None:
    """The jump's last step ended: the steps before it applied, it counted; `_update` then
    applies it as any step."""
    last = w.qi[r, J_STOP]
    _apply(w, e, c, r, last)
    _account(w, c, r, last)
    w.qi[r, J_STOP] = -1


@jit
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
