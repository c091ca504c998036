"""Per-request results as columns: one numpy array per field, a row per attempt.

A run's summary is computed from a `RequestTable`, whether the rows came from a load test's
records (`RequestTable.of(records)`) or straight from the simulator, which writes columns and
makes no object per request. A missing time is NaN; a missing count is -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import get_args

import numpy as np

from scenarios.records import RequestRecord, Status

STATUSES: tuple[Status, ...] = get_args(Status)
OK = STATUSES.index("ok")


def _codes(values: Sequence[str | None]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Values as int16 codes into the sorted distinct names (-1 for None)."""
    names = tuple(sorted({v for v in values if v is not None}))
    index = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((-1 if v is None else index[v] for v in values), np.int16, len(values))
    return codes, names


def token_gaps(chunk_times: Sequence[float], chunk_tokens: Sequence[int] | None) -> np.ndarray:
    """Gaps between tokens: a chunk of k tokens after a gap g counts as k gaps of g / k."""
    gaps = np.diff(chunk_times)
    if not chunk_tokens or len(chunk_tokens) != len(chunk_times):
        return gaps
    k = np.asarray(chunk_tokens[1:], dtype=int).clip(1, None)
    return np.repeat(gaps / k, k)


def _max_gap(chunk_times: Sequence[float]) -> float:
    return float(np.diff(chunk_times).max()) if len(chunk_times) > 1 else np.nan


@dataclass(frozen=True)
class RequestTable:
    """Rows of attempts. `gaps` holds every successful row's token gaps (ITL samples), each
    owned by the row `gap_row` names; `max_gap` is a row's longest gap between chunks."""

    start: np.ndarray  # seconds from the run's start
    intended_start: np.ndarray
    lateness: np.ndarray  # how late the sender was (a measured run's schedule lag)
    first_token: np.ndarray  # NaN: none
    end: np.ndarray  # NaN: none
    status: np.ndarray  # int8 index into STATUSES
    error_kind: np.ndarray  # int16 index into kinds, -1: none
    persona: np.ndarray  # int16 index into personas
    output_tokens: np.ndarray  # int64, 0: none
    attempt: np.ndarray  # int16
    retried: np.ndarray  # bool: this attempt failed and was tried again
    max_gap: np.ndarray  # NaN: fewer than two chunks
    gaps: np.ndarray
    gap_row: np.ndarray  # int64
    kinds: tuple[str, ...] = ()
    personas: tuple[str, ...] = ("default",)
    examples: tuple[tuple[str, str], ...] = ()  # (error kind, first detail), in row order

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> RequestTable:
        def times(name: str) -> np.ndarray:
            values = (getattr(r, name) for r in records)
            return np.fromiter((np.nan if v is None else v for v in values), float, len(records))

        kind, kinds = _codes([r.error_kind for r in records])
        persona, personas = _codes([r.persona for r in records])
        gaps = [
            token_gaps(r.chunk_times, r.chunk_tokens) if r.status == "ok" else np.empty(0)
            for r in records
        ]
        examples: dict[str, str] = {}
        for r in records:
            if r.error_kind and r.error_detail and r.error_kind not in examples:
                examples[r.error_kind] = r.error_detail
        n = len(records)
        return cls(
            start=times("start"),
            intended_start=times("intended_start"),
            lateness=np.fromiter((r.lateness for r in records), float, n),
            first_token=times("first_token"),
            end=times("end"),
            status=np.fromiter((STATUSES.index(r.status) for r in records), np.int8, n),
            error_kind=kind,
            persona=persona,
            output_tokens=np.fromiter((r.output_tokens or 0 for r in records), np.int64, n),
            attempt=np.fromiter((r.attempt for r in records), np.int16, n),
            retried=np.fromiter((r.retried for r in records), bool, n),
            max_gap=np.fromiter((_max_gap(r.chunk_times) for r in records), float, n),
            gaps=np.concatenate(gaps) if gaps else np.empty(0),
            gap_row=np.repeat(np.arange(n), [len(g) for g in gaps]),
            kinds=kinds,
            personas=personas,
            examples=tuple(examples.items()),
        )

    def select(self, mask: np.ndarray) -> RequestTable:
        """The rows where `mask` holds (their gaps with them; row numbers renumbered)."""
        rows = np.flatnonzero(mask)
        renumber = np.full(len(self) + 1, -1, dtype=np.int64)
        renumber[rows] = np.arange(len(rows))
        owner = renumber[self.gap_row] if len(self.gap_row) else self.gap_row
        keep = owner >= 0
        present = set(self.error_kind[rows].tolist())
        examples = tuple((k, d) for k, d in self.examples if self.kinds.index(k) in present)
        columns = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if f.name not in ("gaps", "gap_row", "kinds", "personas", "examples")
        }
        return RequestTable(
            **columns,
            gaps=self.gaps[keep],
            gap_row=owner[keep],
            kinds=self.kinds,
            personas=self.personas,
            examples=examples,
        )

    @property
    def ok(self) -> np.ndarray:
        return self.status == OK

    @property
    def answered(self) -> np.ndarray:
        """Successful rows with a first token and an end: those latency metrics sample."""
        return self.ok & ~np.isnan(self.first_token) & ~np.isnan(self.end)

    def samples(self, metric: str) -> np.ndarray:
        """Samples in seconds of one metric over successful requests."""
        if metric == "itl":
            return self.gaps
        rows = self.answered
        if metric == "ttft":
            return (self.first_token - self.start)[rows]
        if metric == "ttft_intended":
            return (self.first_token - self.intended_start)[rows]
        if metric == "e2e":
            return (self.end - self.start)[rows]
        if metric == "e2e_intended":
            return (self.end - self.intended_start)[rows]
        if metric == "tpot":
            rows = rows & (self.output_tokens > 1)
            return ((self.end - self.first_token) / (self.output_tokens - 1))[rows]
        raise ValueError(f"unknown metric {metric!r}")

    def meets(self, limits: dict[str, float]) -> np.ndarray:
        """Goodput's per-request test: each latency metric within its SLO value (ms)."""
        good = self.answered
        with np.errstate(invalid="ignore", divide="ignore"):
            values = {
                "ttft": self.first_token - self.start,
                "e2e": self.end - self.start,
                "tpot": np.where(
                    self.output_tokens > 1,
                    (self.end - self.first_token) / (self.output_tokens - 1),
                    0.0,
                ),
                "itl": np.nan_to_num(self.max_gap, nan=0.0),
            }
        for metric, limit in limits.items():
            value = values.get(metric)
            if value is not None:
                good = good & (value * 1000.0 <= limit)
        return good
