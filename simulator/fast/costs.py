"""The step-cost models (`simulator.engine.stepcost`), each expression in its order, so a step
costs what the reference's costs to the last bit; and what the steps cost a replica (its
usage)."""

from __future__ import annotations

import numpy as np

from simulator.fast.layout import (
    BUSY_S,
    FREE,
    FULL_S,
    KV_PEAK,
    KV_S,
    LINEAR,
    ROOFLINE,
    RUN_LEN,
    Config,
    State,
    jit,
)


@jit
def step_seconds(c: Config, decode: int, prefill: int, context: int) -> float:
    p = c.cost
    if c.cost_kind == LINEAR:
        return float(p[0] + p[1] * decode + p[2] * prefill + p[3] * context)
    if c.cost_kind == ROOFLINE:
        tokens = decode + prefill
        compute = p[1] * tokens + p[4] * context
        memory = p[2] + p[3] * context
        return float(p[0] + p[5] * tokens + (compute if compute >= memory else memory))
    n = (len(p) - 6) // 2
    xs, ys, d = p[6 : 6 + n], p[6 + n :], float(decode)
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


@jit
def add_usage(w: State, c: Config, r: int, seconds: float) -> None:
    """Count a step of replica `r` in its usage with the KV use and slots it runs with
    (`simulator.engine.drive.Usage.add`)."""
    qi, qf = w.qi, w.qf
    kv = (c.num_blocks - qi[r, FREE]) / c.num_blocks
    qf[r, BUSY_S] += seconds
    qf[r, KV_S] += kv * seconds
    if kv > qf[r, KV_PEAK]:
        qf[r, KV_PEAK] = kv
    if qi[r, RUN_LEN] >= c.max_num_seqs:
        qf[r, FULL_S] += seconds
