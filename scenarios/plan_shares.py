"""One plan split among generator workers: each worker's share (a session stays on one worker)
and a digest that checks every worker built the same plan."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from scenarios.plan import RequestSpec


def plan_digest(plan: Sequence[RequestSpec]) -> str:
    """Identifies a plan by its requests and their planned times (not their text)."""
    h = hashlib.sha256()
    for s in plan:
        h.update(f"{s.id}|{s.arrival:.9f}|{s.after}|{s.prompt_tokens}|{s.max_tokens}\n".encode())
    return h.hexdigest()[:16]


def plan_share(plan: Sequence[RequestSpec], index: int, count: int) -> list[RequestSpec]:
    """Worker `index`'s share of `count`: every count-th opening request in arrival order, from
    the index-th, with every request that follows from it (a session stays on one worker)."""
    ordered = sorted(plan, key=lambda s: s.arrival)
    root: dict[str, str] = {}
    opener = 0
    owner: dict[str, int] = {}
    for s in ordered:  # a follow-up's arrival is after the turn it follows
        if s.after is None:
            root[s.id] = s.id
            owner[s.id] = opener % count
            opener += 1
        else:
            root[s.id] = root[s.after]
    return [s for s in ordered if owner[root[s.id]] == index]
