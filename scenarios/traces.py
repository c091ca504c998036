"""Trace replay: real request traces as arrival times and token counts, replayed at any rate.

The scenario's `traffic.arrival: {type: trace}` (`TraceReplay`) and `workload.lengths`
(`TraceLengths`) read a trace through `scenarios.trace_load.load_trace`.

Replay (`TraceReplay.plan`) treats the trace as periodic: its period is the span from the first
to the last request plus one mean gap, so a window longer than the trace loops it.

Rate scaling keeps the burst structure. Scaling by k superposes floor(k) copies of the trace,
each read from a different offset (copy 0 at start_s, copy j at start_s + P (j + u_j) / m with
u_j uniform in [-1/4, 1/4], m the number of copies), each keeping its own timestamps and
lengths; a fractional part f adds one more copy thinned by independent Bernoulli(f) draws, and
k < 1 thins the trace itself. The mean rate is multiplied by k while every burst keeps its
duration and shape, unlike compressing time (`time_scale`), which shortens bursts too.

Extra copies, and laps of a window longer than the trace, are other users: their rows' prefix
hash ids are renamed, all but the leading blocks that different conversations of the trace
share (a common system prompt, see `shared_prefix_lengths`). A copy of a conversation then
shares what distinct users share, not its own history, and the share of prompt tokens a
prefix cache could serve stays the trace's at any rate_scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from scenarios.base import Strict
from scenarios.plan_budget import check_budget
from scenarios.trace_errors import TraceError
from scenarios.trace_load import load_trace
from scenarios.trace_types import TABLE_FORMATS, TopFunctions, Trace, TraceColumns, TraceFormat


@dataclass(frozen=True, eq=False)
class TracePlan:
    """Planned arrivals from a trace: times in [0, duration_s), sorted; the trace row each came
    from; lengths and hash ids from those rows (None with lengths: workload)."""

    times: np.ndarray
    rows: np.ndarray
    prompt_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    hash_ids: list[tuple[int, ...]] | None = field(default=None)


def block_prefix(
    hash_ids: Sequence[int], prompt_tokens: int, block_tokens: int = 512
) -> tuple[tuple[int, int], ...]:
    """(hash, tokens) prefix segments of a Mooncake-style row: one block of block_tokens per
    hash id, the last one cut to the prompt's length (RequestSpec.prefix's shape)."""
    out: list[tuple[int, int]] = []
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            break
        out.append((int(h), min(block_tokens, left)))
        left -= block_tokens
    return tuple(out)


# ---------------------------------------------------------------- scenario models


class _TraceSource(Strict):
    path: str = Field(min_length=1)
    format: TraceFormat
    columns: TraceColumns | None = None
    functions: tuple[str, ...] | TopFunctions | None = None
    models: tuple[str, ...] | None = None
    log_types: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _options_fit_format(self) -> _TraceSource:
        f = self.format
        if f in TABLE_FORMATS and self.columns is None:
            raise ValueError(f"columns: required for format {f!r}")
        if f not in TABLE_FORMATS and self.columns is not None:
            raise ValueError(f"columns: only for formats csv and jsonl, not {f!r}")
        if self.functions is not None and f != "azure-functions":
            raise ValueError(f"functions: only for format azure-functions, not {f!r}")
        if (self.models or self.log_types) and f != "burstgpt":
            raise ValueError(f"models, log_types: only for format burstgpt, not {f!r}")
        return self

    def resolve(self, base_dir: Path | None = None) -> Path:
        """The trace's file: a relative path is tried under base_dir (the scenario's folder)
        first, then under the current directory."""
        p = Path(self.path).expanduser()
        if p.is_absolute() or base_dir is None:
            return p
        return base_dir / p if (base_dir / p).exists() or not p.exists() else p

    def load(self, base_dir: Path | None = None, seed: int = 0) -> Trace:
        """The parsed trace (see load_trace); TraceError names every place tried."""
        path = self.resolve(base_dir)
        if not path.exists() and base_dir is not None and not Path(self.path).is_absolute():
            raise TraceError(
                self.path,
                [f"{self.path}: no such file under {base_dir} nor under the current directory"],
            )
        return load_trace(
            path,
            self.format,
            self.columns,
            functions=self.functions,
            models=self.models,
            log_types=self.log_types,
            seed=seed,
        )

    def _has_lengths(self) -> bool:
        if self.format == "azure-functions":
            return False
        c = self.columns
        return c is None or (c.prompt_tokens is not None and c.output_tokens is not None)


class TraceReplay(_TraceSource):
    """Arrivals (and, with lengths: trace, token counts) replayed from a trace.

    time_scale multiplies the trace's timeline (0.5 plays it twice as fast, bursts compressed
    too); rate_scale multiplies the rate keeping bursts (see the module docstring); start_s is
    the offset into the trace, in trace seconds (past the end it wraps). The trace loops when
    the window outlasts it. Relative paths resolve against plan's base_dir (the scenario's
    folder) first, then the current directory. Every copy (and lap) but the first renames its
    rows' hash_ids, keeping the blocks the trace's conversations share with each other, so
    scaled traffic shares prefixes as more users of the same services would.
    """

    closed: ClassVar[bool] = False
    type: Literal["trace"]
    time_scale: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    rate_scale: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    start_s: float = Field(0.0, ge=0, le=1e9, allow_inf_nan=False)
    lengths: Literal["trace", "workload"] = "trace"
    block_tokens: int = Field(512, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _lengths_available(self) -> TraceReplay:
        if self.lengths == "trace" and not self._has_lengths():
            raise ValueError(
                "lengths: this trace has no prompt and output token counts; use lengths: workload"
            )
        return self

    def mean_rate(self, duration_s: float, base_dir: Path | None = None) -> float:
        """Requests per second of the replay at rate_scale 1 (reads the trace)."""
        trace = self.load(base_dir)
        return len(trace) / trace.period / self.time_scale * self.rate_scale

    def plan(
        self,
        rng: np.random.Generator,
        duration_s: float,
        rate_scale: float = 1.0,
        base_dir: Path | None = None,
    ) -> TracePlan:
        """Sorted arrivals in [0, duration_s) at rate self.rate_scale * rate_scale."""
        if not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise ValueError(f"rate_scale: must be a finite number > 0, got {rate_scale}")
        if not (duration_s >= 0 and math.isfinite(duration_s)):
            raise ValueError(f"duration_s: must be a finite number >= 0, got {duration_s}")
        seed = int(rng.integers(2**63)) if self.format == "azure-functions" else 0
        trace = self.load(base_dir, seed)
        k = self.rate_scale * rate_scale
        period, window = trace.period, duration_s / self.time_scale
        whole, frac = int(k), k - int(k)
        copies = whole + (frac > 1e-12)
        # rows read before thinning: at least the expected count, and k < 1 reads a whole copy
        check_budget(len(trace) * window / period * copies, f"trace {trace.source}")
        times, rows, users = [], [], []
        laps = _laps(period, window)
        for j in range(copies):
            jitter = rng.uniform(-0.25, 0.25) if j else 0.0
            offset = self.start_s + period * (j + jitter) / copies
            t, r, lap = _window(trace.timestamps, period, offset, window)
            keep_p = 1.0 if j < whole else frac
            if keep_p < 1.0:
                mask = rng.random(t.size) < keep_p
                t, r, lap = t[mask], r[mask], lap[mask]
            times.append(t)
            rows.append(r)
            users.append(j * laps + lap)
        t_all, r_all, u_all = np.concatenate(times), np.concatenate(rows), np.concatenate(users)
        order = np.argsort(t_all, kind="stable")
        t_all, r_all, u_all = t_all[order] * self.time_scale, r_all[order], u_all[order]
        inside = t_all < duration_s
        t_all, r_all, u_all = t_all[inside], r_all[inside], u_all[inside]
        if self.lengths == "workload":
            return TracePlan(t_all, r_all, None, None, None)
        assert trace.prompt_tokens is not None and trace.output_tokens is not None
        hashes = _renamed(trace, r_all, u_all) if trace.hash_ids is not None else None
        return TracePlan(
            t_all, r_all, trace.prompt_tokens[r_all], trace.output_tokens[r_all], hashes
        )


def _laps(period: float, window: float) -> int:
    """Passes over the periodic trace that a window may reach into."""
    return max(1, math.ceil(window / period) + 1)


def _window(
    ts: np.ndarray, period: float, offset: float, window: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (from offset), rows and laps (the pass over the trace, from 0) of the periodic
    trace inside [offset, offset + window)."""
    shift = offset % period
    i0 = int(np.searchsorted(ts, shift))
    rows = np.concatenate([np.arange(i0, ts.size), np.arange(i0)])
    rel = ts[rows] - shift
    rel[ts.size - i0 :] += period
    laps = _laps(period, window)
    t = (rel[None, :] + period * np.arange(laps)[:, None]).ravel()
    r = np.tile(rows, laps)
    lap = np.repeat(np.arange(laps), rows.size)
    inside = t < window
    return t[inside], r[inside], lap[inside]


def _renamed(trace: Trace, rows: np.ndarray, users: np.ndarray) -> list[tuple[int, ...]]:
    """The rows' hash ids as user group `users` sends them: group 0 (the first copy's first
    lap) as the trace has them; group u > 0 with every id past the row's blocks shared across
    conversations moved to a range of its own (above the trace's ids, one per group)."""
    hash_ids, shared = trace.hash_ids, trace.shared_blocks
    assert hash_ids is not None and shared is not None
    if not users.any():
        return [hash_ids[i] for i in rows.tolist()]
    ids = [h for row in hash_ids for h in row]
    low, high = (min(ids), max(ids)) if ids else (0, 0)
    width = high - low + 1
    out = []
    for i, u in zip(rows.tolist(), users.tolist(), strict=True):
        row = hash_ids[i]
        if u == 0 or shared[i] >= len(row):
            out.append(row)
            continue
        move = high + 1 - low + (u - 1) * width
        k = int(shared[i])
        out.append((*row[:k], *(h + move for h in row[k:])))
    return out


class TraceLengths(_TraceSource):
    """(prompt, output) token counts resampled from a trace's rows, keeping their correlation."""

    @model_validator(mode="after")
    def _lengths_available(self) -> TraceLengths:
        if not self._has_lengths():
            raise ValueError("format: this trace has no prompt and output token counts")
        return self

    def sample(
        self, rng: np.random.Generator, n: int, base_dir: Path | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """n (prompt, output) pairs drawn with replacement from whole rows."""
        trace = self.load(base_dir)
        assert trace.prompt_tokens is not None and trace.output_tokens is not None
        idx = rng.integers(0, len(trace), size=n)
        return trace.prompt_tokens[idx].copy(), trace.output_tokens[idx].copy()
