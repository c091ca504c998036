"""Drawing arrival times: exact non-homogeneous Poisson arrivals by thinning, renewal processes,
and piecewise-linear rate curves (their thinning segments and their integral)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# A rate function: plan seconds (array) -> requests per second (array), at rate_scale 1.
RateFn = Callable[[np.ndarray], np.ndarray]
# Thinning segments: (start, end, upper bound of the rate on [start, end)).
Segment = tuple[float, float, float]


def thin(rng: np.random.Generator, segments: Sequence[Segment], rate: RateFn | None) -> np.ndarray:
    """Exact non-homogeneous Poisson arrivals: on each segment a homogeneous Poisson process at
    the segment's bound, each point kept with probability rate(t) / bound (Lewis-Shedler);
    `rate` None keeps every point (a piecewise-constant rate)."""
    if not segments:
        return np.empty(0)
    seg = np.asarray(segments, dtype=float).reshape(-1, 3)
    length = np.maximum(seg[:, 1] - seg[:, 0], 0.0)
    counts = rng.poisson(seg[:, 2] * length)
    starts = np.repeat(seg[:, 0], counts)
    t = starts + rng.random(counts.sum()) * np.repeat(length, counts)
    if rate is None:
        t.sort()
        return t
    bound = np.repeat(seg[:, 2], counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep_p = np.where(bound > 0, rate(t) / bound, 0.0)
    t = t[rng.random(t.size) < keep_p]
    t.sort()
    return t


def renewal(
    duration_s: float, rate: float, first: float, draw: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Arrivals of a renewal process whose first arrival is at `first` and whose later gaps come
    from `draw(n)`; chunks are drawn until the window is covered."""
    expected = rate * duration_s
    chunk = int(expected + 8 * math.sqrt(expected + 1) + 16)
    parts = [np.array([first])]
    end = first
    while end < duration_s:
        t = end + np.cumsum(draw(chunk))
        parts.append(t)
        end = float(t[-1])
    out = np.concatenate(parts)
    return out[out < duration_s]


def piecewise_linear(
    times: np.ndarray, rates: np.ndarray, duration_s: float
) -> tuple[list[Segment], RateFn]:
    """Thinning segments and rate function of the curve through (times, rates), holding the
    last rate after the last point."""
    segments: list[Segment] = []
    for i in range(len(times)):
        a = float(times[i])
        b = float(times[i + 1]) if i + 1 < len(times) else duration_s
        if a >= duration_s:
            break
        hi = float(max(rates[i], rates[i + 1])) if i + 1 < len(times) else float(rates[i])
        segments.append((a, min(b, duration_s), hi))

    def rate(t: np.ndarray) -> np.ndarray:
        return np.interp(t, times, rates)

    return segments, rate


def linear_integral(times: np.ndarray, rates: np.ndarray, duration_s: float) -> float:
    """Integral over [0, duration_s] of the curve through (times, rates), last rate held."""
    grid = np.union1d(times[times < duration_s], [duration_s])
    vals = np.interp(grid, times, rates)
    return float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
