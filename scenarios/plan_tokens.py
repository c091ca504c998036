"""What a plan's tokens say: the share of its prompt tokens a prefix cache could serve, and
warnings when the served tokens disagree with the plan."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def shareable_prompt_share(plan: Iterable[RequestSpec]) -> float:
    """Share of the plan's prompt tokens that an ideal prefix cache could serve: the prefix
    segments whose chain (the segment and all before it) an earlier request already sent."""
    seen: set[tuple[tuple[int, int], ...]] = set()
    shareable = total = 0
    for spec in sorted(plan, key=lambda s: s.arrival):
        total += spec.prompt_tokens
        for i, (_, tokens) in enumerate(spec.prefix):
            chain = spec.prefix[: i + 1]
            if chain in seen:
                shareable += tokens
            else:
                seen.add(chain)
    return shareable / total if total else 0.0
