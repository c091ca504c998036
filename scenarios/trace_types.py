"""A parsed trace (`Trace`), and the options that say which formats, columns and rows to read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
