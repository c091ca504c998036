"""What happened to each simulated request, kept as columns (no object per request).

A `Ledger` has a row per planned request, for its latest attempt, in typed arrays; an attempt
that got a 429 and was retried moves to a short list of its own. At the end it becomes a
`RequestTable` (what summaries and forecasts read) and, only when asked, `RequestRecord`s (what
a run folder stores).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord
from scenarios.table import STATUSES, RequestTable, TokenColumns

OK, ERROR, CANCELLED, TIMEOUT, REJECTED = (
    STATUSES.index(s) for s in ("ok", "error", "cancelled", "timeout", "rejected")
)
UNSENT = -1
# sorted, as RequestTable keeps them
KINDS = ("abandoned", "context_length", "http_429", "http_500", "timeout")
ABANDONED, CONTEXT_LENGTH, HTTP_429, HTTP_500, TIMED_OUT = range(len(KINDS))
HTTP_STATUS = {HTTP_429: 429, HTTP_500: 500}
DETAILS = {
    HTTP_429: "rate limited: the fleet's admission queue is full, or the target injected a 429",
    HTTP_500: "internal error injected by the target",
}


def _array(code: str, values: np.ndarray) -> array:
    """`values` as an `array.array` of typecode `code` (a ledger column)."""
    out = array(code)
    out.frombytes(np.ascontiguousarray(values, np.dtype(code)).tobytes())
    return out


class Ledger:
    """Rows indexed by the request's place in the plan; `chunks` (if kept) by the same index."""

    def __init__(self, plan: Sequence[RequestSpec], keep_chunks: bool):
        n = len(plan)
        self.plan = plan
        self.index = {spec.id: i for i, spec in enumerate(plan)}
        if len(self.index) < n:  # rows are found by id: a second one would share the first's
            again = next(s.id for i, s in enumerate(plan) if self.index[s.id] != i)
            raise ValueError(f"the plan repeats request id {again!r}: each needs its own")
        nan = array("d", [math.nan])
        self.intended, self.start, self.first, self.end = nan * n, nan * n, nan * n, nan * n
        self.status = array("b", [UNSENT]) * n
        self.kind = array("h", [-1]) * n
        self.output = array("q", [0]) * n
        self.attempt = array("h", [0]) * n
        self.cached = array("q", [-1]) * n  # prompt tokens from the prefix cache; -1: not known
        self.chunks: dict[int, list[float]] | None = {} if keep_chunks else None
        # (row, intended, start, end, attempt, status, kind) of failed attempts that were retried
        self.retried: list[tuple[int, float, float, float, int, int, int]] = []

    def load(
        self,
        intended: np.ndarray,
        start: np.ndarray,
        first: np.ndarray,
        end: np.ndarray,
        status: np.ndarray,
        kind: np.ndarray,
        output: np.ndarray,
        attempt: np.ndarray,
        cached: np.ndarray,
        chunks: dict[int, list[float]] | None,
    ) -> None:
        """Take a whole run's latest attempts at once (the fast core's; `retried` holds the
        others)."""
        self.intended, self.start = _array("d", intended), _array("d", start)
        self.first, self.end = _array("d", first), _array("d", end)
        self.status, self.kind = _array("b", status), _array("h", kind)
        self.output, self.cached = _array("q", output), _array("q", cached)
        self.attempt = _array("h", attempt)
        if self.chunks is not None:
            self.chunks = chunks or {}

    def send(self, i: int, intended: float, start: float, attempt: int) -> None:
        self.intended[i], self.start[i], self.attempt[i] = intended, start, attempt
        self.first[i] = self.end[i] = math.nan
        self.status[i], self.kind[i] = OK, -1
        self.cached[i] = -1
        if self.chunks is not None:
            self.chunks[i] = []

    def fail(self, i: int, status: int, kind: int, end: float) -> None:
        self.status[i], self.kind[i], self.end[i] = status, kind, end

    def retry(self, i: int) -> None:
        """The latest attempt (a 429 or 500) is retried: keep it apart, the row takes the next."""
        kept = (self.intended[i], self.start[i], self.end[i], self.attempt[i])
        self.retried.append((i, *kept, self.status[i], self.kind[i]))

    def time_out(self, i: int, end: float) -> None:
        """The client stopped at its deadline `end`: what came after it was never seen."""
        self.fail(i, TIMEOUT, TIMED_OUT, end)
        if self.first[i] > end:
            self.first[i] = math.nan
        if self.chunks is not None:
            self.chunks[i] = [t for t in self.chunks[i] if t <= end]

    def close(self, timeout_s: float) -> None:
        """At the end of a run: a request still unanswered (or answered late) timed out."""
        start, end, status = (
            np.frombuffer(a, a.typecode) for a in (self.start, self.end, self.status)
        )
        late = (status == OK) & ~(end - start <= timeout_s)  # NaN end: never answered
        for i in np.flatnonzero(late).tolist():
            self.time_out(i, self.start[i] + timeout_s)

    def _rows(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every attempt's row in plan order (retried attempts before the last): their request
        indices and columns."""
        sent = np.flatnonzero(np.frombuffer(self.status, np.int8) != UNSENT)
        cols: dict[str, np.ndarray] = {
            "intended_start": np.frombuffer(self.intended)[sent],
            "start": np.frombuffer(self.start)[sent],
            "lateness": (np.frombuffer(self.start) - np.frombuffer(self.intended))[sent],
            "first_token": np.frombuffer(self.first)[sent],
            "end": np.frombuffer(self.end)[sent],
            "status": np.frombuffer(self.status, np.int8)[sent],
            "error_kind": np.frombuffer(self.kind, np.int16)[sent],
            "output_tokens": np.frombuffer(self.output, np.int64)[sent],
            "attempt": np.frombuffer(self.attempt, np.int16)[sent],
            "retried": np.zeros(len(sent), bool),
            "cached": np.frombuffer(self.cached, np.int64)[sent],
        }
        rows: np.ndarray = sent
        if self.retried:
            r = np.array(self.retried, dtype=float).T
            extra = {
                "intended_start": r[1],
                "start": r[2],
                "lateness": r[2] - r[1],
                "first_token": np.full(len(r[0]), np.nan),
                "end": r[3],
                "status": r[5].astype(np.int8),
                "error_kind": r[6].astype(np.int16),
                "output_tokens": np.zeros(len(r[0]), np.int64),
                "attempt": r[4].astype(np.int16),
                "retried": np.ones(len(r[0]), bool),
                "cached": np.full(len(r[0]), -1, np.int64),
            }
            rows = np.concatenate([sent, r[0].astype(np.int64)])
            order = np.lexsort((np.concatenate([cols["attempt"], extra["attempt"]]), rows))
            cols = {k: np.concatenate([cols[k], extra[k]])[order] for k in cols}
            rows = rows[order]
        return rows, cols

    def table(self) -> RequestTable:
        rows, cols = self._rows()
        tokens = self._tokens(rows, cols)
        names = tuple(sorted({s.persona for s in self.plan}))
        code = {name: i for i, name in enumerate(names)}
        persona = np.fromiter((code[s.persona] for s in self.plan), np.int16, len(self.plan))
        gaps, gap_row, max_gap = self._gaps(rows, cols["status"] == OK)
        seen = set(np.unique(cols["error_kind"]).tolist())
        examples = tuple((KINDS[k], detail) for k, detail in DETAILS.items() if k in seen)
        return RequestTable(
            **cast(dict[str, Any], cols),
            persona=persona[rows],
            max_gap=max_gap,
            gaps=gaps,
            gap_row=gap_row,
            kinds=KINDS,
            personas=names,
            examples=examples,
            tokens=tokens,
        )

    def _tokens(self, rows: np.ndarray, cols: dict[str, np.ndarray]) -> TokenColumns:
        """The token columns a simulated run's records would give (RequestTable.of): the
        plan's prompt tokens, the prefix cache's share of them, no server usage."""
        prompt = np.fromiter((s.prompt_tokens for s in self.plan), np.int64, len(self.plan))
        chunks = np.zeros(len(rows), np.int64)
        if self.chunks is not None:
            for j in np.flatnonzero(~cols["retried"]).tolist():
                chunks[j] = len(self.chunks.get(int(rows[j]), ()))
        none = np.zeros(len(rows), bool)
        return TokenColumns(
            planned_prompt=prompt[rows],
            prompt=prompt[rows],
            cached=cols.pop("cached"),
            usage=none,
            chunks=chunks,
            per_chunk=none,
        )

    def _gaps(self, rows: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Successful rows' gaps between tokens, their owners, and each row's longest gap."""
        max_gap = np.full(len(rows), np.nan)
        if self.chunks is None:
            return np.empty(0), np.empty(0, np.int64), max_gap
        pieces, owners = [], []
        for j in np.flatnonzero(ok).tolist():
            times = self.chunks.get(int(rows[j]), [])
            if len(times) > 1:
                gap = np.diff(times)
                pieces.append(gap)
                owners.append(np.full(len(gap), j))
                max_gap[j] = gap.max()
        if not pieces:
            return np.empty(0), np.empty(0, np.int64), max_gap
        return np.concatenate(pieces), np.concatenate(owners), max_gap

    def records(self) -> list[RequestRecord]:
        """The rows as records, as the load generator writes them."""
        rows, cols = self._rows()
        out = []
        for j, i in enumerate(rows.tolist()):
            spec, kind = self.plan[i], int(cols["error_kind"][j])
            first, end = float(cols["first_token"][j]), float(cols["end"][j])
            chunks = (
                self.chunks.get(i, []) if self.chunks is not None and not cols["retried"][j] else []
            )
            output, cached = int(cols["output_tokens"][j]), int(cols["cached"][j])
            out.append(
                RequestRecord(
                    id=spec.id,
                    intended_start=float(cols["intended_start"][j]),
                    start=float(cols["start"][j]),
                    first_token=None if math.isnan(first) else first,
                    end=None if math.isnan(end) else end,
                    chunk_times=list(chunks),
                    prompt_tokens=spec.prompt_tokens,
                    output_tokens=output if output else None,
                    token_source="plan",
                    status=STATUSES[int(cols["status"][j])],
                    error_kind=KINDS[kind] if kind >= 0 else None,
                    http_status=HTTP_STATUS.get(kind),
                    error_detail=DETAILS.get(kind),
                    source="simulated",
                    persona=spec.persona,
                    session=spec.session,
                    turn=spec.turn,
                    attempt=int(cols["attempt"][j]),
                    retried=bool(cols["retried"][j]),
                    planned_prompt_tokens=spec.prompt_tokens,
                    regenerate=spec.regenerate,
                    cached_tokens=cached if cached >= 0 else None,
                )
            )
        return out
