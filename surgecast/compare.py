"""Candidate runs against baseline runs: each metric's change with a bootstrap interval.

Latencies (ms) by percentile, throughput and goodput (req/s over each run's first send to last
response), the error rate and the cost per million tokens (the run's price per hour over its
span, per million input and output tokens served), each as candidate minus baseline, absolute
and relative, with a percentile interval from a hierarchical bootstrap (runs, then blocks of
requests in time; see `bootstrap`).
A change is significant when its interval excludes 0.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.metrics import LATENCY_METRICS
from scenarios.regress import Budget
from scenarios.slo import Threshold
from scenarios.table import RequestTable
from surgecast.bootstrap import Layout, block_count, interval, mean_draws, quantile_draws, split
from surgecast.bootstrap import total_draws as totals
from surgecast.files import write_whole

QUANTILES = (50, 95, 99)
HIGHER_IS_BETTER = ("throughput", "goodput")
UNITS = {
    "error_rate": "",
    "throughput": "req/s",
    "goodput": "req/s",
    "cost_per_million_tokens": "USD/Mtok",
}


@dataclass(frozen=True)
class Run:
    """One run's final attempts (retried ones dropped), its completion span in seconds and
    what its target cost an hour (US dollars; 0: not priced)."""

    label: str
    table: RequestTable
    span_s: float
    usd_per_hour: float = 0.0

    @classmethod
    def of(cls, label: str, attempts: RequestTable, usd_per_hour: float = 0.0) -> Run:
        table = attempts.select(~attempts.retried)
        if len(table) == 0:
            return cls(label, table, 1e-9, usd_per_hour)
        ends = np.where(np.isnan(table.end), table.start, table.end)
        span = max(float(ends.max() - table.start.min()), 1e-9)
        return cls(label, table, span, usd_per_hour)


def served_tokens(table: RequestTable) -> np.ndarray:
    """Each row's tokens served: its prompt's (the server's count, else the plan's) and its
    answer's, for successful rows; 0 for the others."""
    prompt = table.output_tokens * 0
    if table.tokens is not None:
        prompt = np.where(
            table.tokens.prompt >= 0, table.tokens.prompt, table.tokens.planned_prompt
        )
    return np.where(table.ok, prompt + table.output_tokens, 0)


@dataclass(frozen=True)
class Change:
    """Candidate against baseline for one statistic of one metric."""

    metric: str  # ttft, itl, tpot, e2e, throughput, goodput, error_rate
    stat: str  # p50, p95, p99, avg or rate
    unit: str  # ms, req/s or "" (a fraction)
    baseline: float
    candidate: float
    low: float  # interval of candidate - baseline
    high: float
    rel_low: float  # interval of candidate / baseline - 1 (NaN when the baseline is 0)
    rel_high: float

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline

    @property
    def relative(self) -> float:
        return self.candidate / self.baseline - 1.0 if self.baseline else math.nan

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    @property
    def worse(self) -> int:
        """The sign of a change for the worse: +1 where higher is worse (latency, errors), -1
        where lower is (throughput, goodput)."""
        return -1 if self.metric in HIGHER_IS_BETTER else 1

    def regression(self, relative: bool) -> tuple[float, float, float]:
        """How much worse the candidate is (positive: worse), with its interval."""
        s = self.worse
        if relative:
            lo, hi = s * self.rel_low, s * self.rel_high
            return s * self.relative, min(lo, hi), max(lo, hi)
        lo, hi = s * self.low, s * self.high
        return s * self.delta, min(lo, hi), max(lo, hi)

    @property
    def name(self) -> str:
        return f"{self.metric} {self.stat}"


def _samples(table: RequestTable, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A latency metric's samples (ms) and the row each belongs to (as `table.samples`)."""
    if metric == "itl":
        return table.gaps * 1000.0, table.gap_row
    rows = table.answered
    if metric == "tpot":
        rows = rows & (table.output_tokens > 1)
    return table.samples(metric) * 1000.0, np.flatnonzero(rows)


@dataclass(frozen=True)
class _Side:
    """One side's runs cut into blocks of consecutive starts: each row's block, run by run."""

    runs: tuple[Run, ...]
    row_block: tuple[np.ndarray, ...]  # per run, each row's block (numbered across the side)
    layout: Layout

    @classmethod
    def of(cls, runs: Sequence[Run]) -> _Side:
        row_block, block_run, offset = [], [], 0
        for i, r in enumerate(runs):
            k = block_count(len(r.table))
            start = r.table.start
            if len(start):
                t0, width = float(start.min()), max(float(start.max() - start.min()), 1e-9)
                local = np.minimum(((start - t0) / width * k).astype(np.int64), k - 1)
            else:
                local = np.zeros(0, dtype=np.int64)
            row_block.append(local + offset)
            block_run += [i] * k
            offset += k
        return cls(tuple(runs), tuple(row_block), Layout(np.array(block_run), len(runs)))

    @property
    def blocks(self) -> int:
        return len(self.layout.block_run)

    def latency_blocks(self, metric: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """All samples pooled and sorted, and the samples cut per block."""
        values, blocks = [], []
        for r, rb in zip(self.runs, self.row_block, strict=True):
            v, rows = _samples(r.table, metric)
            values.append(v)
            blocks.append(rb[rows])
        pooled = np.concatenate(values)
        return np.sort(pooled), split(pooled, np.concatenate(blocks), self.blocks)

    def per_block(self, mask_of: Callable[[Run], np.ndarray]) -> np.ndarray:
        """How many rows of each block `mask_of` selects."""
        out = np.zeros(self.blocks)
        for r, rb in zip(self.runs, self.row_block, strict=True):
            out += np.bincount(rb[mask_of(r)], minlength=self.blocks)
        return out

    def sum_per_block(self, values_of: Callable[[Run], np.ndarray]) -> np.ndarray:
        """The sum of `values_of`'s per-row values in each block."""
        out = np.zeros(self.blocks)
        for r, rb in zip(self.runs, self.row_block, strict=True):
            out += np.bincount(rb, weights=values_of(r).astype(float), minlength=self.blocks)
        return out

    def spans(self) -> np.ndarray:
        """Each block's share of its run's span (seconds)."""
        k = np.bincount(self.layout.block_run)
        spans = np.array([r.span_s for r in self.runs])
        return spans[self.layout.block_run] / k[self.layout.block_run]


def _draw_latency(
    blocked: tuple[np.ndarray, list[np.ndarray]], stat: str, picks: np.ndarray
) -> tuple[float, np.ndarray]:
    """`blocked`: the samples pooled and sorted, and cut per block (`_Side.latency_blocks`)."""
    pooled, blocks = blocked
    if stat == "avg":
        return (float(pooled.mean()) if len(pooled) else math.nan), mean_draws(blocks, picks)
    q = 50.0 if stat == "med" else float(stat[1:])
    point = float(np.percentile(pooled, q)) if len(pooled) else math.nan
    return point, quantile_draws(blocks, q, picks, pooled)


def _draw_rate(
    side: _Side, metric: str, limits: dict[str, float], picks: np.ndarray
) -> tuple[float, np.ndarray]:
    ok = side.per_block(lambda r: r.table.ok)
    if metric == "error_rate":
        failed = side.per_block(lambda r: ~r.table.ok)
        f, o = totals(failed, picks), totals(ok, picks)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = f / (f + o)
        total = failed.sum() + ok.sum()
        return (float(failed.sum() / total) if total else math.nan), draws
    if metric == "cost_per_million_tokens":
        return _draw_cost(side, picks)
    if metric == "goodput":
        ok = side.per_block(lambda r: r.table.meets(limits))
    spans = side.spans()
    return float(ok.sum() / spans.sum()), totals(ok, picks) / totals(spans, picks)


def _draw_cost(side: _Side, picks: np.ndarray) -> tuple[float, np.ndarray]:
    """US dollars per million tokens served: each block's share of its run's priced span over
    the block's tokens (input and output of successful requests)."""
    price = np.array([r.usd_per_hour for r in side.runs])[side.layout.block_run]
    usd = side.spans() * price / 3600.0
    tokens = side.sum_per_block(lambda r: served_tokens(r.table))
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = totals(usd, picks) / totals(tokens, picks) * 1e6
    point = float(usd.sum() / tokens.sum() * 1e6) if tokens.sum() > 0 else math.nan
    return point, draws


@dataclass(frozen=True)
class Comparison:
    baseline: tuple[Run, ...]
    candidate: tuple[Run, ...]
    changes: tuple[Change, ...]
    confidence: float
    resamples: int

    def find(self, metric: str, stat: str) -> Change | None:
        return next((c for c in self.changes if c.metric == metric and c.stat == stat), None)


def default_stats() -> list[tuple[str, str]]:
    """What `surgecast compare` shows: p50/p95/p99 of each latency, then the rates."""
    rows = [(m, f"p{q}") for m in LATENCY_METRICS for q in QUANTILES]
    return [*rows, ("throughput", "rate"), ("goodput", "rate"), ("error_rate", "rate")]


def compare(
    baseline: Sequence[Run],
    candidate: Sequence[Run],
    stats: Sequence[tuple[str, str]] | None = None,
    *,
    limits: dict[str, float] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Each (metric, stat) of `stats` (default: `default_stats()`) compared; `limits` are the
    per-request SLO values (ms) goodput counts against."""
    if not baseline or not candidate:
        raise ValueError("compare needs at least one run on each side")
    rng = np.random.default_rng(seed)
    sides = (_Side.of(baseline), _Side.of(candidate))
    picks = [side.layout.picks(resamples, rng) for side in sides]
    changes = []
    blocked: dict[tuple[int, str], tuple[np.ndarray, list[np.ndarray]]] = {}
    for metric, stat in stats or default_stats():
        points, draws = [], []
        for i, (side, pick) in enumerate(zip(sides, picks, strict=True)):
            if metric in LATENCY_METRICS:
                if (i, metric) not in blocked:  # cut once per metric, whatever its stats
                    blocked[(i, metric)] = side.latency_blocks(metric)
                point, draw = _draw_latency(blocked[(i, metric)], stat, pick)
            else:
                point, draw = _draw_rate(side, metric, limits or {}, pick)
            points.append(point)
            draws.append(draw)
        base, cand = draws
        low, high = interval(cand - base, confidence)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(base > 0, cand / np.where(base > 0, base, 1.0) - 1.0, np.nan)
        rel_low, rel_high = interval(rel, confidence) if points[0] else (math.nan, math.nan)
        unit = UNITS.get(metric, "ms")
        changes.append(
            Change(metric, stat, unit, points[0], points[1], low, high, rel_low, rel_high)
        )
    return Comparison(tuple(baseline), tuple(candidate), tuple(changes), confidence, resamples)


def budget_stats(budgets: Sequence[Budget]) -> list[tuple[str, str]]:
    """The (metric, stat) pairs a set of budgets needs."""
    seen: dict[tuple[str, str], None] = {}
    for b in budgets:
        seen[(b.metric, "p50" if b.stat == "med" else b.stat)] = None
    return list(seen)


def goodput_limits(thresholds: Sequence[Threshold]) -> dict[str, float]:
    """Per-request SLO values (ms) that goodput counts against, as the summary takes them."""
    limits: dict[str, float] = {}
    for t in thresholds:
        if t.metric != "error_rate" and t.op in ("<", "<="):
            limits[t.metric] = min(limits.get(t.metric, math.inf), t.value)
    return limits


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "":
        return f"{value:.4f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value * 100:+.1f}%"


def change_rows(comparison: Comparison) -> list[list[str]]:
    """Table rows: metric, baseline, candidate, change, relative change, interval, verdict."""
    rows = []
    for c in comparison.changes:
        unit = f" {c.unit}" if c.unit else ""
        if c.significant:
            verdict = "worse" if c.worse * c.delta > 0 else "better"
        else:
            verdict = "no significant change"
        rows.append(
            [
                c.name,
                _fmt(c.baseline, c.unit) + unit,
                _fmt(c.candidate, c.unit) + unit,
                f"{'+' if c.delta >= 0 else ''}{_fmt(c.delta, c.unit)}",
                _pct(c.relative),
                f"[{_pct(c.rel_low)}, {_pct(c.rel_high)}]"
                if math.isfinite(c.rel_low)
                else f"[{_fmt(c.low, c.unit)}, {_fmt(c.high, c.unit)}]",
                verdict,
            ]
        )
    return rows


HEADERS = ["metric", "baseline", "candidate", "change", "change %", "interval", "verdict"]


def distribution_plot(comparison: Comparison, path: Path) -> Path:
    """Both sides' latency CDFs, one panel per metric, as a PNG."""
    import matplotlib.pyplot as plt

    fig = distribution_figure(comparison)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_whole(path, png.getvalue())


def distribution_figure(comparison: Comparison) -> Any:
    """Both sides' latency CDFs, one panel per metric (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, metric in zip(axes.flat, LATENCY_METRICS, strict=True):
        for runs, label, colour in (
            (comparison.baseline, "baseline", "tab:blue"),
            (comparison.candidate, "candidate", "tab:red"),
        ):
            ms = np.sort(np.concatenate([r.table.samples(metric) for r in runs]) * 1000.0)
            if len(ms):
                ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), color=colour, label=label)
        ax.set_title(f"{metric.upper()} (ms)")
        ax.set_ylabel("share of samples <= x")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(loc="lower right")
    fig.suptitle(
        f"baseline: {', '.join(r.label for r in comparison.baseline)}   candidate: "
        f"{', '.join(r.label for r in comparison.candidate)}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
