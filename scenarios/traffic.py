"""Arrival processes named like k6 executors.

Every open-loop process has `plan(rng, duration_s, rate_scale)`: sorted arrival times in
[0, duration_s), deterministic for the generator's seed, with `rate_scale` multiplying the
arrival rate. Time-varying processes are exact non-homogeneous Poisson processes, drawn by
thinning on short segments, each against an upper bound of the rate on that segment.
`ClosedUsers` is the one closed-loop type: its plan gives each user's first send time only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from scenarios.base import Strict
from scenarios.plan_budget import check_budget
from scenarios.seconds import Seconds, SecondsDistribution, SecondsOrZero
from scenarios.thinning import Segment, linear_integral, piecewise_linear, renewal, thin

MAX_RATE = 1e6  # requests per second, any single rate field

Rate = Annotated[float, Field(gt=0, le=MAX_RATE, allow_inf_nan=False)]
RateOrZero = Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]


def _check_window(duration_s: float, rate_scale: float) -> None:
    if not (duration_s >= 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration_s: must be a finite number >= 0, got {duration_s}")
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError(f"rate_scale: must be a finite number > 0, got {rate_scale}")


class _Open(Strict, ABC):
    """An open-loop arrival process: each kind says its mean rate and draws its arrivals."""

    closed: ClassVar[bool] = False

    @abstractmethod
    def mean_rate(self, duration_s: float) -> float:
        """Expected requests per second over [0, duration_s) at rate_scale 1."""

    @abstractmethod
    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        """Sorted arrivals in [0, duration_s) at `scale` times the rate."""

    def plan(
        self, rng: np.random.Generator, duration_s: float, rate_scale: float = 1.0
    ) -> np.ndarray:
        """Sorted arrival times (seconds) in [0, duration_s); `rate_scale` multiplies the rate."""
        _check_window(duration_s, rate_scale)
        if duration_s == 0:
            return np.empty(0)
        check_budget(self.mean_rate(duration_s) * duration_s * rate_scale, self._tag())
        return self._plan(rng, duration_s, rate_scale)

    def _tag(self) -> str:
        return str(getattr(self, "type", type(self).__name__))


# ---------------------------------------------------------------- homogeneous processes


class ConstantArrivalRate(_Open):
    """k6's constant-arrival-rate: evenly spaced arrivals at 0, 1/rate, 2/rate, ... (CV 0)."""

    type: Literal["constant-arrival-rate"]
    rate: Rate

    def mean_rate(self, duration_s: float) -> float:
        return self.rate

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        r = self.rate * scale
        t = np.arange(math.ceil(duration_s * r) + 1) / r
        return t[t < duration_s]


class PoissonArrival(_Open):
    """Poisson arrivals: exponential gaps of mean 1/rate (CV 1)."""

    type: Literal["poisson"]
    rate: Rate

    def mean_rate(self, duration_s: float) -> float:
        return self.rate

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        r = self.rate * scale
        first = rng.exponential(1.0 / r)  # memoryless: stationary from the start
        return renewal(duration_s, r, first, lambda n: rng.exponential(1.0 / r, size=n))


class GammaArrival(_Open):
    """Gamma gaps with shape = burstiness and mean 1/rate, as `vllm bench serve --burstiness`:
    1 is Poisson, below 1 burstier; gap CV = 1/sqrt(burstiness). Started in equilibrium."""

    type: Literal["gamma"]
    rate: Rate
    burstiness: float = Field(gt=0, le=1000, allow_inf_nan=False)

    def mean_rate(self, duration_s: float) -> float:
        return self.rate

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        r = self.rate * scale
        k, theta = self.burstiness, 1.0 / (r * self.burstiness)
        # equilibrium start: the gap covering 0 is length-biased (Gamma(k + 1)), 0 uniform in it
        first = rng.gamma(k + 1, theta) * rng.random()
        return renewal(duration_s, r, first, lambda n: rng.gamma(k, theta, size=n))


class OnOffArrival(_Open):
    """Two-state Markov-modulated Poisson process: Poisson at rate_on (rate_off) during on (off)
    sojourns, exponential with means mean_on_s and mean_off_s; the first state is drawn from the
    stationary distribution. `rate_scale` multiplies both rates, not the sojourns."""

    type: Literal["on-off"]
    rate_on: Rate
    rate_off: RateOrZero = 0.0
    mean_on_s: Seconds
    mean_off_s: Seconds

    def mean_rate(self, duration_s: float) -> float:
        cycle = self.mean_on_s + self.mean_off_s
        return (self.rate_on * self.mean_on_s + self.rate_off * self.mean_off_s) / cycle

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        cycle = self.mean_on_s + self.mean_off_s
        check_budget(2 * duration_s / cycle, "on-off: state switches")
        on = bool(rng.random() < self.mean_on_s / cycle)  # stationary first state
        segments: list[Segment] = []
        t = 0.0
        while t < duration_s:
            n = int(2 * (duration_s - t) / cycle) + 16
            is_on = (np.arange(n) % 2 == 0) == on
            ends = t + np.cumsum(rng.exponential(np.where(is_on, self.mean_on_s, self.mean_off_s)))
            starts = np.concatenate([[t], ends[:-1]])
            rates = np.where(is_on, self.rate_on, self.rate_off) * scale
            m = int(np.searchsorted(starts, duration_s))
            segments.extend(
                zip(starts[:m], np.minimum(ends[:m], duration_s), rates[:m], strict=True)
            )
            on = (n % 2 == 0) == on  # the state after the last sojourn drawn
            t = float(ends[-1])
        return thin(rng, segments, None)


# ---------------------------------------------------------------- time-varying processes


class DiurnalShape(Strict):
    """A sinusoid between trough_rate and peak_rate with the peak at peak_at_s (curve time)."""

    peak_rate: Rate
    trough_rate: RateOrZero
    period_s: Seconds = 86400.0
    peak_at_s: SecondsOrZero = 50400.0

    @model_validator(mode="after")
    def _order(self) -> DiurnalShape:
        if self.trough_rate > self.peak_rate:
            raise ValueError(
                f"trough_rate: must be <= peak_rate ({self.peak_rate}), got {self.trough_rate}"
            )
        return self


class DiurnalArrival(_Open):
    """A daily curve as a non-homogeneous Poisson process: `points` [[t_s, rate], ...]
    (piecewise linear, first at 0, last rate held) or a sinusoidal `shape`. The curve's
    rates are requests per second of the plan; `time_compression` c plays curve time c*t at
    plan time t, so a 86,400 s curve takes 86,400/c s."""

    type: Literal["diurnal"]
    points: tuple[tuple[SecondsOrZero, RateOrZero], ...] | None = Field(
        None, min_length=1, max_length=100_000
    )
    shape: DiurnalShape | None = None
    time_compression: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_curve(self) -> DiurnalArrival:
        if (self.points is None) == (self.shape is None):
            raise ValueError("give exactly one of points or shape")
        if self.points is not None:
            ts = [p[0] for p in self.points]
            if ts[0] != 0:
                raise ValueError(f"points[0]: the first point must be at t_s 0, got {ts[0]}")
            for i in range(1, len(ts)):
                if ts[i] <= ts[i - 1]:
                    raise ValueError(
                        f"points[{i}]: t_s must increase, got {ts[i]} after {ts[i - 1]}"
                    )
            if max(p[1] for p in self.points) <= 0:
                raise ValueError("points: at least one rate must be > 0")
        return self

    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.points is not None
        arr = np.asarray(self.points, dtype=float)
        return arr[:, 0] / self.time_compression, arr[:, 1]

    def _sine(self, t: np.ndarray) -> np.ndarray:
        s = self.shape
        assert s is not None
        mid, amp = (s.peak_rate + s.trough_rate) / 2, (s.peak_rate - s.trough_rate) / 2
        phase = 2 * np.pi * (t * self.time_compression - s.peak_at_s) / s.period_s
        return mid + amp * np.cos(phase)

    def mean_rate(self, duration_s: float) -> float:
        if self.points is not None:
            if duration_s <= 0:
                return float(self.points[0][1])
            return linear_integral(*self._curve(), duration_s) / duration_s
        s = self.shape
        assert s is not None
        mid, amp = (s.peak_rate + s.trough_rate) / 2, (s.peak_rate - s.trough_rate) / 2
        if duration_s <= 0:
            return float(self._sine(np.zeros(1))[0])
        w = 2 * np.pi * self.time_compression / s.period_s
        p0 = 2 * np.pi * s.peak_at_s / s.period_s
        integral = mid * duration_s + amp / w * (np.sin(w * duration_s - p0) - np.sin(-p0))
        return float(integral / duration_s)

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        if self.points is not None:
            times, rates = self._curve()
            segments, rate = piecewise_linear(times, rates * scale, duration_s)
            return thin(rng, segments, rate)
        assert self.shape is not None
        peak = self.shape.peak_rate * scale
        return thin(rng, [(0.0, duration_s, peak)], lambda t: self._sine(t) * scale)


class RampStage(Strict):
    duration_s: Seconds
    target: RateOrZero


class RampingArrivalRate(_Open):
    """k6's ramping-arrival-rate: from start_rate, a linear ramp to each stage's target over
    its duration (a hold repeats the previous target); the last target holds afterwards."""

    type: Literal["ramping-arrival-rate"]
    start_rate: RateOrZero
    stages: tuple[RampStage, ...] = Field(min_length=1, max_length=10_000)

    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        times = np.concatenate([[0.0], np.cumsum([s.duration_s for s in self.stages])])
        rates = np.array([self.start_rate, *(s.target for s in self.stages)], dtype=float)
        return times, rates

    def mean_rate(self, duration_s: float) -> float:
        if duration_s <= 0:
            return self.start_rate
        return linear_integral(*self._curve(), duration_s) / duration_s

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        times, rates = self._curve()
        segments, rate = piecewise_linear(times, rates * scale, duration_s)
        return thin(rng, segments, rate)


class FlashCrowd(_Open):
    """base_rate, then a linear rise to peak_rate over [at_s, at_s + rise_s], a hold of hold_s,
    and an exponential decay back to base_rate with time constant decay_s."""

    type: Literal["flash-crowd"]
    base_rate: RateOrZero
    peak_rate: Rate
    at_s: SecondsOrZero
    rise_s: SecondsOrZero = 0.0
    hold_s: SecondsOrZero = 0.0
    decay_s: Seconds

    @model_validator(mode="after")
    def _peak_above_base(self) -> FlashCrowd:
        if self.peak_rate < self.base_rate:
            raise ValueError(
                f"peak_rate: must be >= base_rate ({self.base_rate}), got {self.peak_rate}"
            )
        return self

    def rate(self, t: np.ndarray) -> np.ndarray:
        """The intensity at plan times `t` (rate_scale 1)."""
        b, p = self.base_rate, self.peak_rate
        t_peak, t_fall = self.at_s + self.rise_s, self.at_s + self.rise_s + self.hold_s
        rise = b + (p - b) * np.clip((t - self.at_s) / max(self.rise_s, 1e-300), 0.0, 1.0)
        decay = b + (p - b) * np.exp(-np.maximum(t - t_fall, 0.0) / self.decay_s)
        out = np.where(t < self.at_s, b, np.where(t < t_peak, rise, p))
        return np.where(t >= t_fall, decay, out)

    def mean_rate(self, duration_s: float) -> float:
        if duration_s <= 0:
            return float(self.rate(np.zeros(1))[0])
        b, p, d = self.base_rate, self.peak_rate, duration_s
        a0, a1 = self.at_s, self.at_s + self.rise_s
        a2 = a1 + self.hold_s
        total = b * d
        if self.rise_s > 0 and d > a0:  # excess over base during the rise
            x = min(d, a1) - a0
            total += (p - b) * x * x / (2 * self.rise_s)
        total += (p - b) * max(0.0, min(d, a2) - a1)
        if d > a2:
            total += (p - b) * self.decay_s * (1 - math.exp(-(d - a2) / self.decay_s))
        return total / d

    def _plan(self, rng: np.random.Generator, duration_s: float, scale: float) -> np.ndarray:
        b, p = self.base_rate * scale, self.peak_rate * scale
        a1 = self.at_s + self.rise_s
        a2 = a1 + self.hold_s
        cuts = [0.0, self.at_s, a1, a2]
        bounds = [b, p, p]
        # decay: bound by the value at each step's start, 40 time constants, then a flat tail
        for j in range(40):
            cuts.append(a2 + (j + 1) * self.decay_s)
            bounds.append(b + (p - b) * math.exp(-j))
        cuts.append(max(duration_s, cuts[-1]))
        bounds.append(b + (p - b) * math.exp(-40))
        segments = [
            (a, min(c, duration_s), r)
            for a, c, r in zip(cuts[:-1], cuts[1:], bounds, strict=True)
            if c > a and a < duration_s
        ]
        return thin(rng, segments, lambda t: self.rate(t) * scale)


# ---------------------------------------------------------------- closed loop


class ClosedUsers(Strict):
    """Closed-loop virtual users (k6's constant-vus, Locust users): each sends its first request
    at its start time, then the next one think_time after the previous response ends.

    `plan()` gives only the first send times; the executor chains the rest with `think_time`.
    `mean_rate()` is nan: a closed system's rate is set by the server's response times.
    """

    closed: ClassVar[bool] = True
    type: Literal["closed-users"]
    users: int = Field(ge=1, le=1_000_000)
    think_time: SecondsDistribution
    ramp_up_s: SecondsOrZero = 0.0

    def mean_rate(self, duration_s: float) -> float:
        return math.nan

    def n_users(self, rate_scale: float = 1.0) -> int:
        """round(users * rate_scale), at least 1."""
        return max(1, round(self.users * rate_scale))

    def plan(
        self, rng: np.random.Generator, duration_s: float, rate_scale: float = 1.0
    ) -> np.ndarray:
        """First send time of each of n_users(rate_scale) users, user i at i * ramp_up_s / n;
        users whose start falls at or after duration_s are left out."""
        _check_window(duration_s, rate_scale)
        n = self.n_users(rate_scale)
        check_budget(n, "closed-users: users")
        t = np.arange(n) * (self.ramp_up_s / n)
        return t[t < duration_s]
