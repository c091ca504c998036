"""Step-cost rows from streams that write several tokens per chunk.

When a server batches its stream output (vLLM's `--stream-interval`), a chunk's arrival ends
the last of the k steps that made its k tokens, and the steps in between are not seen. Each
interval between two chunks of one request is then one row: it took k steps, so it lasted
k x base + per_seq x (the batch sizes of those steps, summed) + per_token x (the prompt tokens
prefilled in them). The batch size is the number of requests decoding at the time (first token
seen, not yet ended), averaged over the interval; the prefill is the prompts of the requests
whose first token came within it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scenarios.records import RequestRecord


def several_per_chunk(records: Sequence[RequestRecord]) -> bool:
    return any(r.chunk_tokens and max(r.chunk_tokens) > 1 for r in records)


class _Decoding:
    """How many requests decode at each time, and its integral over any interval."""

    def __init__(self, records: Sequence[RequestRecord]):
        begin = [r.first_token for r in records if r.first_token is not None and r.end]
        end = [r.end for r in records if r.first_token is not None and r.end]
        t = np.concatenate([begin, end]).astype(float)
        step = np.concatenate([np.ones(len(begin)), -np.ones(len(end))])
        order = np.argsort(t, kind="stable")
        self.t = t[order]
        self.n = np.cumsum(step[order])  # decoding just after each event
        self.area = np.concatenate([[0.0], np.cumsum(np.diff(self.t) * self.n[:-1])])

    def integral(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._area_at(b) - self._area_at(a)

    def _area_at(self, x: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.t, x, side="right") - 1
        inside = j >= 0
        jj = np.clip(j, 0, None)
        return np.where(inside, self.area[jj] + (x - self.t[jj]) * self.n[jj], 0.0)


def chunk_rows(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): one row per interval between two chunks of a request; x's columns are steps,
    decoding sequences summed over those steps, prompt tokens prefilled in them."""
    decoding = _Decoding(records)
    firsts = sorted(
        (r.first_token, r.prompt_tokens or 0) for r in records if r.first_token is not None
    )
    first_t = np.array([t for t, _ in firsts])
    prompts = np.concatenate([[0.0], np.cumsum([p for _, p in firsts])])
    a_, b_, k_ = [], [], []
    for r in records:
        sizes = r.chunk_tokens or [1] * len(r.chunk_times)
        if len(sizes) != len(r.chunk_times):
            continue
        a_.extend(r.chunk_times[:-1])
        b_.extend(r.chunk_times[1:])
        k_.extend(sizes[1:])
    a, b, k = np.asarray(a_), np.asarray(b_), np.asarray(k_, dtype=float)
    if not len(a):
        return np.empty((0, 3)), np.empty(0)
    span = b - a
    keep = span > 0
    a, b, k, span = a[keep], b[keep], k[keep], span[keep]
    batch = k * decoding.integral(a, b) / span
    prefilled = (
        prompts[np.searchsorted(first_t, b, "right")]
        - prompts[np.searchsorted(first_t, a, "right")]
    )
    return np.column_stack([k, batch, prefilled]), span
