"""How many requests per second one replica completes at most: its saturation throughput."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scenarios.plan import RequestSpec
from simulator.engine.core import EngineConfig


def saturation_throughput(engine: EngineConfig, plan: Sequence[RequestSpec]) -> float:
    """Requests/s one replica completes when saturated: a full batch (as many sequences as
    max_num_seqs and the KV cache hold, each at its mean footprint) decoding the plan's mean
    output, plus each request's prefill, priced by the engine's step-cost model."""
    if not plan:
        return math.inf
    prompt = float(np.mean([s.prompt_tokens for s in plan]))
    output = max(float(np.mean([s.max_tokens for s in plan])), 1.0)
    footprint = prompt + output / 2.0  # KV tokens a sequence holds, on average over its life
    batch = max(1, min(engine.max_num_seqs, int(engine.kv_cache_tokens // max(footprint, 1.0))))
    context = int(batch * footprint)
    step = engine.cost.duration(batch, 0, context)
    prefill = engine.cost.duration(batch, round(prompt), context) - step  # one prompt's share
    seconds = output * step + batch * prefill  # for `batch` requests, start to end
    return batch / seconds if seconds > 0 else math.inf
