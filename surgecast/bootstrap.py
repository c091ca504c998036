"""Vectorised bootstrap draws of a statistic over runs, then requests within them.

Each resample picks runs with replacement (a hierarchical, or cluster, bootstrap; one run is
always itself), then requests from the runs picked. Draws are exact without materialising a
resample: the k-th smallest of N resampled values is the pooled weighted empirical quantile at a
Beta(k, N - k + 1) point, so a resample costs O(runs x log requests) whatever the run's size.
Requests are drawn from the pool of picked runs rather than run by run (slightly wider).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Side:
    """One side of a comparison: per run, its samples (sorted) and its counts."""

    samples: tuple[np.ndarray, ...]  # sorted, one array per run

    @classmethod
    def of(cls, runs: Sequence[np.ndarray]) -> Side:
        return cls(tuple(np.sort(np.asarray(r, dtype=float)) for r in runs))

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(s) for s in self.samples], dtype=np.int64)


def run_picks(runs: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, runs) multiplicities: how often each run is picked in each resample."""
    if runs == 1:
        return np.ones((resamples, 1), dtype=np.int64)
    return rng.multinomial(runs, np.full(runs, 1.0 / runs), size=resamples)


def quantile_draws(side: Side, q: float, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the q-th percentile (0-100): one per row of `picks`."""
    pooled = np.sort(np.concatenate(side.samples))
    if len(pooled) == 0:
        return np.full(len(picks), np.nan)
    n = picks @ side.sizes  # resample size, per resample
    k = np.clip(np.ceil(q / 100.0 * n), 1, n)
    point = rng.beta(k, n - k + 1)  # where the k-th smallest of n uniforms falls
    need = point * n
    lo = np.zeros(len(picks), dtype=np.int64)
    hi = np.full(len(picks), len(pooled) - 1, dtype=np.int64)
    while np.any(lo < hi):  # smallest pooled index whose weighted count reaches `need`
        mid = (lo + hi) // 2
        below = sum(
            picks[:, r] * np.searchsorted(s, pooled[mid], side="right")
            for r, s in enumerate(side.samples)
        )
        enough = below >= need
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid + 1)
    return pooled[lo]


def mean_draws(side: Side, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the mean (a request resample's mean from its normal limit)."""
    sums = np.array([s.sum() for s in side.samples])
    squares = np.array([(s**2).sum() for s in side.samples])
    n = picks @ side.sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (picks @ sums) / n
        var = (picks @ squares) / n - mean**2
        return mean + rng.standard_normal(len(picks)) * np.sqrt(np.clip(var, 0, None) / n)


def count_draws(counts: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-bootstrap draws of a count summed over the picked runs (`counts`: per run)."""
    return rng.poisson(picks @ np.asarray(counts, dtype=float)).astype(float)


def interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaNs when there are none)."""
    finite = draws[np.isfinite(draws)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
