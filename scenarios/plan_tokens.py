"""What a plan's tokens say: the share of its prompt tokens a prefix cache could serve, and
warnings when the served tokens disagree with the plan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scenarios.metrics import Summary, output_count_warning, unplanned_cache_warning
from scenarios.plan import RequestSpec


def token_warnings(
    summary: Summary, plan: Sequence[RequestSpec], common_prefix_tokens: float
) -> list[str]:
    """What the served tokens say against the plan: a prefix cache serving more than the plan
    shares (with `common_prefix_tokens` every conversation begins with), chunks that are not
    tokens."""
    mean_prompt = sum(s.prompt_tokens for s in plan) / max(len(plan), 1)
    planned_share = shareable_prompt_share(plan) + common_prefix_tokens / max(mean_prompt, 1)
    found = (
        unplanned_cache_warning(summary.tokens, planned_share),
        output_count_warning(summary.tokens),
    )
    return [w for w in found if w]


def shareable_prompt_share(plan: Sequence[RequestSpec]) -> float:
    """Share of the plan's prompt tokens that an ideal prefix cache could serve: the prefix
    segments whose chain (the segment and all before it) an earlier request already sent."""
    total = sum(s.prompt_tokens for s in plan)
    return int(shareable_tokens(plan).sum()) / total if total else 0.0


def shareable_tokens(plan: Sequence[RequestSpec]) -> np.ndarray:
    """Per request of `plan` (in its order), the prompt tokens an ideal prefix cache could
    serve it: its prefix segments whose chain an earlier request (by arrival) already sent."""
    nodes: dict[tuple[int, tuple[int, int]], int] = {}  # (parent chain, segment) -> chain
    out = np.zeros(len(plan), np.int64)
    for i in sorted(range(len(plan)), key=lambda i: plan[i].arrival):
        chain = -1  # the empty chain
        for segment in plan[i].prefix:
            node = nodes.get((chain, segment))
            if node is None:
                node = nodes[chain, segment] = len(nodes)
            else:
                out[i] += segment[1]
            chain = node
    return out
