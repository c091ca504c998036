"""Vectorised bootstrap draws over runs, then blocks of time within each run.

Requests of one run are not independent: a burst of arrivals slows every request around it, so
resampling single requests makes intervals too narrow. Each resample therefore picks runs with
replacement (a hierarchical, or cluster, bootstrap: one run is always itself), then each picked
run's blocks of time with replacement (a block bootstrap over requests: about sqrt(n), at most
64, blocks of consecutive starts). Blocks narrow the gap but do not close it: a run's overall
load moves all of its latencies together, which only repeated runs show (benchmarks/gate.py
measures how often an interval excludes 0 with no change, one run a side and several).
A resample is a multiplicity per block; a percentile of it is found by bisection over the pooled
sorted samples, so nothing the size of a run is copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_BLOCKS = 64  # enough for the spread of a mean of blocks; more only costs time


def block_count(requests: int) -> int:
    """Blocks a run of `requests` is cut into: about sqrt(n), as a block bootstrap's rule, at
    most MAX_BLOCKS."""
    return min(max(1, math.ceil(math.sqrt(requests))), MAX_BLOCKS)


@dataclass(frozen=True)
class Layout:
    """Which run each block belongs to, across one side's runs (blocks numbered run by run)."""

    block_run: np.ndarray  # run index of each block
    runs: int

    def picks(self, resamples: int, rng: np.random.Generator) -> np.ndarray:
        """(resamples, blocks) multiplicities: runs picked, then blocks within each copy."""
        per_run = np.bincount(self.block_run, minlength=self.runs)
        if self.runs == 1:
            chosen = np.ones((resamples, 1), dtype=np.int64)
        else:
            chosen = rng.multinomial(self.runs, np.full(self.runs, 1.0 / self.runs), resamples)
        out = np.zeros((resamples, len(self.block_run)), dtype=np.int64)
        for r in range(self.runs):
            cols = np.flatnonzero(self.block_run == r)
            k = per_run[r]
            out[:, cols] = rng.multinomial(chosen[:, r] * k, np.full(k, 1.0 / k))
        return out


def split(values: np.ndarray, block: np.ndarray, blocks: int) -> list[np.ndarray]:
    """`values` cut by `block` (each value's block index) into sorted arrays, one per block."""
    order = np.argsort(block, kind="stable")
    edges = np.searchsorted(block[order], np.arange(blocks + 1))
    ordered = values[order]
    return [np.sort(ordered[edges[i] : edges[i + 1]]) for i in range(blocks)]


def quantile_draws(
    blocks: Sequence[np.ndarray], q: float, picks: np.ndarray, pooled: np.ndarray | None = None
) -> np.ndarray:
    """Draws of the q-th percentile (0-100, the k-th smallest of the resample, k = ceil(q n));
    `pooled`: every block's samples, sorted (computed when not given)."""
    if pooled is None:
        pooled = np.sort(np.concatenate(blocks)) if blocks else np.empty(0)
    if len(pooled) == 0:
        return np.full(len(picks), np.nan)
    sizes = np.array([len(b) for b in blocks], dtype=np.int64)
    n = picks @ sizes
    need = np.clip(np.ceil(q / 100.0 * n), 1, None)
    lo = np.zeros(len(picks), dtype=np.int64)
    hi = np.full(len(picks), len(pooled) - 1, dtype=np.int64)
    used = [j for j in range(len(blocks)) if sizes[j]]
    while np.any(lo < hi):  # the smallest pooled value with `need` resampled values at or under it
        mid = (lo + hi) // 2
        x = pooled[mid]
        below = np.zeros(len(picks), dtype=np.int64)
        for j in used:
            below += picks[:, j] * np.searchsorted(blocks[j], x, side="right")
        enough = below >= need
        active = lo < hi  # a resample with no samples (n = 0) never has enough: keep it in range
        hi = np.where(active & enough, mid, hi)
        lo = np.where(active & ~enough, mid + 1, lo)
    return np.where(n > 0, pooled[lo], np.nan)


def mean_draws(blocks: Sequence[np.ndarray], picks: np.ndarray) -> np.ndarray:
    """Draws of the mean."""
    sums = np.array([b.sum() for b in blocks])
    sizes = np.array([len(b) for b in blocks], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (picks @ sums) / (picks @ sizes)


def total_draws(per_block: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Draws of a total (a count, a span) given per block."""
    return (picks @ np.asarray(per_block, dtype=float)).astype(float)


def interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaNs when there are none)."""
    finite = draws[np.isfinite(draws)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
