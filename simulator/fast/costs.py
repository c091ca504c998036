"""The step-cost models (`simulator.engine.stepcost`), each expression in its order, so a step
costs what the reference's costs to the last bit."""

from __future__ import annotations

import numpy as np
from numba import njit

from simulator.fast.layout import (
    LINEAR,
    ROOFLINE,
    Config,
)


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
