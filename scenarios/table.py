"""Per-request results as columns: one numpy array per field, a row per attempt.

A run's summary is computed from a `RequestTable`, whether the rows came from a load test's
records (`RequestTable.of(records)`) or straight from the simulator, which writes columns and
makes no object per request. A missing time is NaN; a missing count is -1.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, get_args

import numpy as np

from scenarios.records import RequestRecord, Status

STATUSES: tuple[Status, ...] = get_args(Status)
OK = STATUSES.index("ok")


def token_gaps(chunk_times: Sequence[float], chunk_tokens: Sequence[int] | None) -> np.ndarray:
    """Gaps between tokens: a chunk of k tokens after a gap g counts as k gaps of g / k."""
    gaps = np.diff(chunk_times)
    if not chunk_tokens or len(chunk_tokens) != len(chunk_times):
        return gaps
    k = np.asarray(chunk_tokens[1:], dtype=int).clip(1, None)
    return np.repeat(gaps / k, k)


def _max_gap(chunk_times: Sequence[float]) -> float:
    return float(np.diff(chunk_times).max()) if len(chunk_times) > 1 else np.nan


MAX_GAPS = 2_000_000  # ITL samples kept exactly; beyond, a uniform sample of this many


@dataclass(frozen=True)
class TokenColumns:
    """Per row, the token counts that reconcile plan, server and stream (measured runs only)."""

    planned_prompt: np.ndarray  # int64, 0: not planned
    prompt: np.ndarray  # int64, the server's count; -1: none
    cached: np.ndarray  # int64, prompt tokens from the server's prefix cache; -1: not said
    usage: np.ndarray  # bool: the counts are the server's own (`usage`)
    chunks: np.ndarray  # int64, content chunks in the stream
    per_chunk: np.ndarray  # bool: the stream said how many tokens each chunk held

    def rows(self, rows: np.ndarray) -> TokenColumns:
        return TokenColumns(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass(frozen=True)
class RequestTable:
    """Rows of attempts. `gaps` holds successful rows' token gaps (ITL samples), each owned by
    the row `gap_row` names: every gap, or, past MAX_GAPS, a uniform random sample of them,
    `gap_share` of the whole. `max_gap` is a row's longest gap between chunks."""

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
    gap_share: float = 1.0  # the share of all gaps that `gaps` holds
    tokens: TokenColumns | None = None

    def __len__(self) -> int:
        return len(self.start)

    @property
    def gap_count(self) -> int:
        """How many gaps the rows had (`gaps` holds them all, or a sample)."""
        return round(len(self.gaps) / self.gap_share)

    @classmethod
    def of(
        cls, records: Iterable[RequestRecord], max_gaps: int = MAX_GAPS, seed: int = 0
    ) -> RequestTable:
        """The records' columns, built as they stream past: no record is kept, only its
        values (about 100 bytes a row) and its gaps (16 bytes each, at most `max_gaps`)."""
        rows = _Rows(max_gaps, seed)
        for r in records:
            rows.add(r)
        return rows.table()

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
            if f.name not in ("gaps", "gap_row", "examples", "tokens", *_WHOLE)
        }
        return RequestTable(
            **columns,
            gaps=self.gaps[keep],
            gap_row=owner[keep],
            examples=examples,
            **{name: getattr(self, name) for name in _WHOLE},
            tokens=self.tokens.rows(rows) if self.tokens is not None else None,
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
            rows = rows & (self.output_tokens > 1)  # one token: no time per output token
            return (self.end - self.first_token)[rows] / (self.output_tokens[rows] - 1)
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


_WHOLE = ("kinds", "personas", "gap_share")  # not one value per row


class _Rows:
    """A RequestTable's columns, grown one record at a time in typed arrays."""

    FLOATS: ClassVar = ("start", "intended_start", "lateness", "first_token", "end", "max_gap")
    INTS: ClassVar = {"status": "b", "error_kind": "h", "persona": "h", "output_tokens": "q",
            "attempt": "h", "retried": "b", "planned_prompt": "q", "prompt": "q",
            "cached": "q", "usage": "b", "chunks": "q", "per_chunk": "b"}  # fmt: skip

    def __init__(self, max_gaps: int, seed: int) -> None:
        self.cols = {name: array("d") for name in self.FLOATS}
        self.cols.update({name: array(code) for name, code in self.INTS.items()})
        self.kinds: dict[str, int] = {}
        self.personas: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.gaps = _GapSample(max_gaps, seed)
        self.n = 0

    def add(self, r: RequestRecord) -> None:
        nan = math.nan
        values: dict[str, float | int] = {
            "start": r.start,
            "intended_start": r.intended_start,
            "lateness": r.lateness,
            "first_token": nan if r.first_token is None else r.first_token,
            "end": nan if r.end is None else r.end,
            "max_gap": _max_gap(r.chunk_times),
            "status": STATUSES.index(r.status),
            "error_kind": -1 if r.error_kind is None else _code(self.kinds, r.error_kind),
            "persona": _code(self.personas, r.persona),
            "output_tokens": r.output_tokens or 0,
            "attempt": r.attempt,
            "retried": r.retried,
            "planned_prompt": r.planned_prompt_tokens or 0,
            "prompt": -1 if r.prompt_tokens is None else r.prompt_tokens,
            "cached": -1 if r.cached_tokens is None else r.cached_tokens,
            "usage": r.token_source == "usage",
            "chunks": len(r.chunk_times),
            "per_chunk": r.chunk_tokens is not None,
        }
        for name, value in values.items():
            self.cols[name].append(value)
        if r.error_kind and r.error_detail and r.error_kind not in self.examples:
            self.examples[r.error_kind] = r.error_detail
        if r.status == "ok" and len(r.chunk_times) > 1:
            self.gaps.add(self.n, token_gaps(r.chunk_times, r.chunk_tokens))
        self.n += 1

    def table(self) -> RequestTable:
        col = {name: _numpy(a) for name, a in self.cols.items()}
        kinds, kind = _sorted_codes(self.kinds, col["error_kind"])
        personas, persona = _sorted_codes(self.personas, col["persona"])
        gaps, gap_row, share = self.gaps.result()
        return RequestTable(
            **{name: col[name] for name in self.FLOATS},
            status=col["status"],
            error_kind=kind,
            persona=persona,
            output_tokens=col["output_tokens"],
            attempt=col["attempt"],
            retried=col["retried"].astype(bool),
            gaps=gaps,
            gap_row=gap_row,
            kinds=kinds,
            personas=personas,
            examples=tuple(self.examples.items()),
            gap_share=share,
            tokens=TokenColumns(
                planned_prompt=col["planned_prompt"],
                prompt=col["prompt"],
                cached=col["cached"],
                usage=col["usage"].astype(bool),
                chunks=col["chunks"],
                per_chunk=col["per_chunk"].astype(bool),
            ),
        )


def _code(names: dict[str, int], name: str) -> int:
    return names.setdefault(name, len(names))


def _sorted_codes(names: dict[str, int], codes: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Codes given in order of first sight, renumbered into the sorted names (-1 kept)."""
    ordered = tuple(sorted(names))
    renumber = np.full(len(names) + 1, -1, np.int16)  # the last slot maps -1 to -1
    for new, name in enumerate(ordered):
        renumber[names[name]] = new
    return ordered, renumber[codes].astype(np.int16)


class _GapSample:
    """Gaps with their rows: all of them up to `limit`, then a uniform random sample of `limit`
    (each gap gets a random key and the smallest keys stay: bottom-k sampling). It holds at
    most twice `limit` gaps between trims."""

    def __init__(self, limit: int, seed: int) -> None:
        self.limit = limit
        self.rng = np.random.default_rng(seed)
        self.gaps = array("d")
        self.rows = array("q")
        self.keys: array[float] | None = None  # drawn once the gaps outgrow `limit`
        self.seen = 0

    def add(self, row: int, gaps: np.ndarray) -> None:
        self.seen += len(gaps)
        self.gaps.frombytes(gaps.astype(float).tobytes())
        self.rows.frombytes(np.full(len(gaps), row, np.int64).tobytes())
        if self.keys is not None:
            self.keys.frombytes(self.rng.random(len(gaps)).tobytes())
        if len(self.gaps) > 2 * self.limit:
            self._shrink()

    def _shrink(self) -> None:
        if self.keys is None:
            self.keys = array("d", self.rng.random(len(self.gaps)).tobytes())
        keys = np.frombuffer(self.keys, float)
        keep = np.sort(np.argpartition(keys, self.limit)[: self.limit])
        self.gaps = array("d", np.frombuffer(self.gaps, float)[keep].tobytes())
        self.rows = array("q", np.frombuffer(self.rows, np.int64)[keep].tobytes())
        self.keys = array("d", keys[keep].tobytes())

    def result(self) -> tuple[np.ndarray, np.ndarray, float]:
        if len(self.gaps) > self.limit:
            self._shrink()
        gaps, rows = _numpy(self.gaps), _numpy(self.rows)
        return gaps, rows, len(gaps) / self.seen if self.seen else 1.0


def _numpy(values: array[Any]) -> np.ndarray:
    """A typed array's values as a (writable) numpy array of the same type."""
    return (
        np.array(values, dtype=np.dtype(values.typecode))
        if len(values)
        else np.empty(0, np.dtype(values.typecode))
    )
