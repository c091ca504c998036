"""A parsed trace (`Trace`), and the options that say which formats, columns and rows to read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field

from scenarios.base import Strict

TraceFormat = Literal[
    "azure-llm", "azure-functions", "mooncake", "burstgpt", "csv", "jsonl", "requests"
]
TABLE_FORMATS = ("csv", "jsonl")  # the formats read through a `TraceColumns` mapping


class TraceColumns(Strict):
    """Where a generic csv/jsonl trace keeps each field, and the timestamp's unit."""

    timestamp: str = Field(min_length=1)
    prompt_tokens: str | None = None
    output_tokens: str | None = None
    hash_ids: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "iso"] = "s"


class TopFunctions(Strict):
    """The N azure-functions rows with the most invocations."""

    top: int = Field(ge=1, le=100_000)


FunctionSelect = tuple[str, ...] | TopFunctions  # HashFunction prefixes, or the top N


@dataclass(frozen=True, eq=False)
class Trace:
    """A parsed trace: sorted timestamps in seconds from its first request, per-row lengths and
    prefix-block hash ids where the format has them. Arrays are read-only (they are cached)."""

    timestamps: np.ndarray
    prompt_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    hash_ids: Sequence[tuple[int, ...]] | None
    source: str
    # azure-functions: 60; times are uniform inside each minute and count from the start of
    # the first minute with an invocation, so per-minute counts are kept exactly
    bin_s: float | None = None

    def __len__(self) -> int:
        return int(self.timestamps.size)

    @cached_property
    def shared_blocks(self) -> np.ndarray | None:
        """Per row, how many of its leading hash ids other conversations share too (see
        `shared_prefix_lengths`); None without hash ids."""
        return None if self.hash_ids is None else shared_prefix_lengths(self.hash_ids)

    @property
    def period(self) -> float:
        """The replay loop's period: span plus one mean gap (1 s for a single request); for a
        binned trace, up to the end of its last bin."""
        n, span = len(self), float(self.timestamps[-1])
        if self.bin_s:
            return (math.floor(span / self.bin_s) + 1) * self.bin_s
        return span + span / (n - 1) if n > 1 and span > 0 else max(span, 1.0)


def frozen(a: np.ndarray) -> np.ndarray:
    """`a`, made read-only (a Trace's arrays are shared through the parse cache)."""
    a.setflags(write=False)
    return a


def shared_prefix_lengths(hash_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Per row, the length of its leading run of blocks that different conversations share
    (a common system prompt), as the rows' prefix tree shows it.

    A trace names no conversations. A conversation's next turn repeats the blocks of the turn
    before, but for its last block, cut short then and whole (so another block) now: its
    chain branches there into a leaf and the continuation. Two chains that part and both go
    on past the branch's first block are other contexts: the branch's blocks, and every block
    before them, are shared across conversations; the rest belongs to one conversation.
    """
    nodes: dict[tuple[int, int], int] = {}  # (parent chain, hash id) -> chain
    parent: list[int] = []
    paths: list[list[int]] = []
    for ids in hash_ids:
        chain, path = -1, []
        for h in ids:
            node = nodes.get((chain, h))
            if node is None:
                node = nodes[chain, h] = len(parent)
                parent.append(chain)
            path.append(node)
            chain = node
        paths.append(path)
    up = np.array(parent, dtype=np.int64)
    inner = np.zeros(len(up), bool)  # has a child: the chain goes on
    inner[up[up >= 0]] = True
    going_on = np.bincount(up[(up >= 0) & inner], minlength=len(up))  # children that go on
    shared = going_on >= 2
    for node in np.flatnonzero(shared).tolist():  # a shared chain's ancestors are too
        p = int(up[node])
        while p >= 0 and not shared[p]:  # (a shared one's own are marked in its turn)
            shared[p] = True
            p = int(up[p])
    return np.fromiter((int(shared[p].sum()) if p else 0 for p in paths), np.int64, len(paths))
