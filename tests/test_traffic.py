"""Arrival processes against theory: counts, gap distributions, dispersion, rate curves."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import integrate, stats

from scenarios.plan_budget import MAX_PLANNED_REQUESTS
from scenarios.seconds import SecondsDistribution
from scenarios.spec import Arrival
from scenarios.traffic import ClosedUsers, FlashCrowd

ARRIVAL: TypeAdapter[Any] = TypeAdapter(Arrival)
SECONDS = TypeAdapter(SecondsDistribution)

SPECS: dict[str, dict[str, Any]] = {
    "constant": {"type": "constant-arrival-rate", "rate": 5},
    "poisson": {"type": "poisson", "rate": 5},
    "gamma": {"type": "gamma", "rate": 5, "burstiness": 0.25},
    "on-off": {"type": "on-off", "rate_on": 18, "rate_off": 1, "mean_on_s": 2, "mean_off_s": 6},
    "diurnal-points": {"type": "diurnal", "points": [[0, 2], [400, 10], [800, 2]]},
    "diurnal-shape": {
        "type": "diurnal",
        "shape": {"peak_rate": 10, "trough_rate": 2, "period_s": 1000, "peak_at_s": 250},
    },
    "ramping": {
        "type": "ramping-arrival-rate",
        "start_rate": 0,
        "stages": [
            {"duration_s": 300, "target": 10},
            {"duration_s": 300, "target": 10},
            {"duration_s": 300, "target": 2},
        ],
    },
    "flash-crowd": {
        "type": "flash-crowd",
        "base_rate": 2,
        "peak_rate": 40,
        "at_s": 300,
        "rise_s": 20,
        "hold_s": 30,
        "decay_s": 60,
    },
}
RANDOM = [k for k in SPECS if k != "constant"]


def arrival(key: str) -> Any:
    return ARRIVAL.validate_python(SPECS[key])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


# ---------------------------------------------------------------- homogeneous processes


def test_constant_arrival_rate_is_evenly_spaced() -> None:
    t = arrival("constant").plan(rng(), 100.0)
    np.testing.assert_allclose(t, np.arange(500) / 5.0)
    assert cv(t) < 1e-9


@pytest.mark.parametrize("burstiness", [1.0, 0.25, 4.0])
def test_gamma_gaps_match_theory(burstiness: float) -> None:
    """Count within 4 sigma of rate * T (renewal variance N * CV^2), gap CV 1/sqrt(k), and the
    gaps follow Gamma(k, 1 / (rate k)) by a KS test."""
    rate, duration = 5.0, 20000.0
    p = ARRIVAL.validate_python({"type": "gamma", "rate": rate, "burstiness": burstiness})
    t = p.plan(rng(3), duration)
    expected = rate * duration
    assert abs(t.size - expected) < 4 * math.sqrt(expected / burstiness)
    assert cv(t) == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    gaps = np.diff(t)
    ks = stats.kstest(gaps, stats.gamma(burstiness, scale=1 / (rate * burstiness)).cdf)
    assert ks.pvalue > 0.001


def test_poisson_is_poisson() -> None:
    rate, duration = 5.0, 20000.0
    t = arrival("poisson").plan(rng(4), duration)
    assert abs(t.size - rate * duration) < 4 * math.sqrt(rate * duration)
    assert cv(t) == pytest.approx(1.0, abs=0.03)
    assert stats.kstest(np.diff(t), stats.expon(scale=1 / rate).cdf).pvalue > 0.001
    counts = np.bincount(t.astype(int), minlength=int(duration))  # per-second counts
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.05)


def test_burstiness_below_one_is_burstier_than_poisson() -> None:
    poisson = arrival("poisson").plan(rng(5), 5000.0)
    bursty = arrival("gamma").plan(rng(5), 5000.0)
    assert cv(bursty) > 1.7 > 1.1 > cv(poisson)


# ---------------------------------------------------------------- on-off (MMPP-2)


def mmpp_idc(rate_on: float, rate_off: float, mean_on: float, mean_off: float, w: float) -> float:
    """Index of dispersion of counts in windows of length w of a two-state MMPP (Fischer and
    Meier-Hellstern 1993): Var N(w) = m w + 2 s2 (w / a - (1 - exp(-a w)) / a^2), with a the sum
    of the switching rates, m the mean rate and s2 the stationary variance of the rate."""
    r1, r2 = 1 / mean_on, 1 / mean_off
    a = r1 + r2
    p_on = r2 / a
    m = p_on * rate_on + (1 - p_on) * rate_off
    s2 = (rate_on - rate_off) ** 2 * p_on * (1 - p_on)
    var = m * w + 2 * s2 * (w / a - (1 - math.exp(-a * w)) / a**2)
    return var / (m * w)


@pytest.mark.parametrize("window", [1.0, 10.0])
def test_on_off_rate_and_dispersion_match_mmpp_theory(window: float) -> None:
    spec = SPECS["on-off"]
    duration = 200000.0
    p = arrival("on-off")
    t = p.plan(rng(6), duration)
    mean = (18 * 2 + 1 * 6) / 8
    assert p.mean_rate(duration) == pytest.approx(mean)
    assert t.size / duration == pytest.approx(mean, rel=0.03)
    counts = np.bincount((t // window).astype(int), minlength=int(duration / window))
    theory = mmpp_idc(spec["rate_on"], spec["rate_off"], spec["mean_on_s"], 6, window)
    assert theory > 2  # far from Poisson's 1, so the check has teeth
    assert counts.var() / counts.mean() == pytest.approx(theory, rel=0.1)


# ---------------------------------------------------------------- time-varying processes


def chi_square_p(times: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    observed = np.histogram(times, edges)[0]
    chi2 = float(np.sum((observed - expected) ** 2 / np.maximum(expected, 1e-9)))
    return float(stats.chi2.sf(chi2, len(expected)))


def expected_counts(rate_fn: Any, edges: np.ndarray, seeds: int = 1) -> np.ndarray:
    return (
        np.array(
            [integrate.quad(rate_fn, a, b, limit=200)[0] for a, b in itertools.pairwise(edges)]
        )
        * seeds
    )


def pooled(key: str, duration: float, seeds: int, scale: float = 1.0) -> np.ndarray:
    p = arrival(key)
    return np.concatenate([p.plan(rng(s), duration, scale) for s in range(seeds)])


def ramp_rate(t: float) -> float:
    return float(np.interp(t, [0, 300, 600, 900], [0, 10, 10, 2]))


def diurnal_points_rate(t: float) -> float:
    return float(np.interp(t, [0, 400, 800], [2, 10, 2]))


def diurnal_shape_rate(t: float) -> float:
    return 6 + 4 * math.cos(2 * math.pi * (t - 250) / 1000)


def flash_rate(t: float) -> float:
    if t < 300:
        return 2.0
    if t < 320:
        return 2 + 38 * (t - 300) / 20
    if t < 350:
        return 40.0
    return 2 + 38 * math.exp(-(t - 350) / 60)


@pytest.mark.parametrize(
    ("key", "rate_fn", "duration"),
    [
        ("ramping", ramp_rate, 1200.0),
        ("diurnal-points", diurnal_points_rate, 1000.0),
        ("diurnal-shape", diurnal_shape_rate, 2000.0),
        ("flash-crowd", flash_rate, 900.0),
    ],
)
def test_counts_per_bin_follow_the_rate_curve(key: str, rate_fn: Any, duration: float) -> None:
    seeds = 20
    edges = np.linspace(0, duration, 31)
    expected = expected_counts(rate_fn, edges, seeds)
    times = pooled(key, duration, seeds)
    assert chi_square_p(times, edges, expected) > 0.001
    # the model's mean_rate is the curve's integral, computed here independently
    total = integrate.quad(rate_fn, 0, duration, limit=200)[0]
    assert arrival(key).mean_rate(duration) == pytest.approx(total / duration, rel=1e-6)
    # a curve shifted by one bin is rejected: the test has power
    shifted = expected_counts(lambda t: rate_fn(t - duration / 30), edges, seeds)
    assert chi_square_p(times, edges, shifted) < 1e-6


def test_flash_crowd_rate_function_matches_definition() -> None:
    p = arrival("flash-crowd")
    assert isinstance(p, FlashCrowd)
    ts = np.array([0, 299.9, 310, 330, 350, 410, 5000])
    np.testing.assert_allclose(p.rate(ts), [flash_rate(float(x)) for x in ts])


def test_diurnal_time_compression_plays_the_day_faster() -> None:
    """A 24 h curve with compression 86.4 plays in 1000 s at the curve's rates."""
    day = [[0, 2], [43200, 10], [86400, 2]]
    p = ARRIVAL.validate_python({"type": "diurnal", "points": day, "time_compression": 86.4})
    edges = np.linspace(0, 1000, 21)
    expected = expected_counts(diurnal_points_rate_day, edges, 20)
    times = np.concatenate([p.plan(rng(s), 1000.0) for s in range(20)])
    assert chi_square_p(times, edges, expected) > 0.001
    assert p.mean_rate(1000.0) == pytest.approx(6.0)


def diurnal_points_rate_day(t: float) -> float:
    return float(np.interp(t * 86.4, [0, 43200, 86400], [2, 10, 2]))


# ---------------------------------------------------------------- common contract


@pytest.mark.parametrize("key", list(SPECS))
def test_plans_are_sorted_in_window_and_deterministic(key: str) -> None:
    p = arrival(key)
    a = p.plan(rng(11), 900.0)
    assert a.size > 0 and np.all(np.diff(a) >= 0)
    assert a[0] >= 0 and a[-1] < 900.0
    np.testing.assert_array_equal(a, p.plan(rng(11), 900.0))
    if key in RANDOM:
        b = p.plan(rng(12), 900.0)
        assert a.size != b.size or not np.array_equal(a, b)


@pytest.mark.parametrize("key", list(SPECS))
def test_rate_scale_multiplies_the_rate(key: str) -> None:
    duration, seeds = 900.0, 10
    p = arrival(key)
    base = p.mean_rate(duration) * duration * seeds
    n1 = pooled(key, duration, seeds).size
    n2 = pooled(key, duration, seeds, scale=2.0).size
    # generous: on-off counts are overdispersed (index of dispersion up to ~30 over 900 s)
    sd = math.sqrt(30 * base)
    assert abs(n1 - base) < 4 * sd
    assert abs(n2 - 2 * base) < 4 * math.sqrt(2) * sd
    assert n2 / n1 == pytest.approx(2.0, rel=0.1)


def test_zero_window_is_empty() -> None:
    assert arrival("poisson").plan(rng(), 0.0).size == 0


# ---------------------------------------------------------------- closed users


def test_closed_users_plan_first_sends_and_carry_think_time() -> None:
    p = ARRIVAL.validate_python(
        {
            "type": "closed-users",
            "users": 10,
            "think_time": {"dist": "constant", "value": 1.5},
            "ramp_up_s": 20,
        }
    )
    assert isinstance(p, ClosedUsers) and p.closed
    assert ARRIVAL.validate_json(ARRIVAL.dump_json(p)) == p
    exp = SECONDS.validate_python({"dist": "exponential", "mean": 2})
    assert SECONDS.validate_json(SECONDS.dump_json(exp)) == exp
    assert not arrival("poisson").closed
    np.testing.assert_allclose(p.plan(rng(), 60.0), np.arange(10) * 2.0)
    np.testing.assert_allclose(p.plan(rng(), 60.0, rate_scale=2.5), np.arange(25) * 0.8)
    assert p.plan(rng(), 10.0).size == 5  # users starting after the window are left out
    assert math.isnan(p.mean_rate(60.0))
    assert p.think_time.mean == 1.5
    no_ramp = p.model_copy(update={"ramp_up_s": 0.0})
    np.testing.assert_array_equal(no_ramp.plan(rng(), 60.0), np.zeros(10))


# ---------------------------------------------------------------- seconds distributions


@pytest.mark.parametrize(
    ("spec", "mean"),
    [
        ({"dist": "constant", "value": 2.0}, 2.0),
        ({"dist": "uniform", "low": 1.0, "high": 5.0}, 3.0),
        ({"dist": "exponential", "mean": 4.0}, 4.0),
        ({"dist": "lognormal", "median": 2.0, "sigma": 0.5}, 2.0 * math.exp(0.125)),
    ],
)
def test_seconds_distributions_mean_and_samples(spec: dict[str, Any], mean: float) -> None:
    d = SECONDS.validate_python(spec)
    assert d.mean == pytest.approx(mean)
    x = d.sample(rng(2), 100_000)
    assert x.shape == (100_000,) and np.all(x >= 0)
    assert x.mean() == pytest.approx(mean, rel=0.02)
    if spec["dist"] == "lognormal":  # the median is the median
        assert np.median(x) == pytest.approx(2.0, rel=0.02)


# ---------------------------------------------------------------- validation


def errors(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ARRIVAL.validate_python(spec)
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())


def test_validation_names_the_field() -> None:
    assert "poisson.rate: Input should be greater than 0" in errors({"type": "poisson", "rate": -3})
    assert "finite" in errors({"type": "poisson", "rate": float("nan")})
    bad_stage = errors(
        {
            "type": "ramping-arrival-rate",
            "start_rate": 1,
            "stages": [{"duration_s": 1, "target": 2}] * 2 + [{"duration_s": -1, "target": 2}],
        }
    )
    assert "stages.2.duration_s: Input should be greater than 0" in bad_stage
    assert "exactly one of points or shape" in errors({"type": "diurnal"})
    assert "points[2]: t_s must increase, got 5.0 after 10.0" in errors(
        {"type": "diurnal", "points": [[0, 1], [10, 2], [5, 3]]}
    )
    assert "points[0]: the first point must be at t_s 0" in errors(
        {"type": "diurnal", "points": [[3, 1]]}
    )
    assert "peak_rate: must be >= base_rate (5.0), got 2.0" in errors(
        {"type": "flash-crowd", "base_rate": 5, "peak_rate": 2, "at_s": 0, "decay_s": 1}
    )
    with pytest.raises(ValidationError, match=r"high: must be >= low \(3.0\), got 1.0"):
        SECONDS.validate_python({"dist": "uniform", "low": 3, "high": 1})
    assert "type" in errors({"type": "zipf", "rate": 1})


def test_absurd_plans_are_refused() -> None:
    p = ARRIVAL.validate_python({"type": "poisson", "rate": 1000})
    with pytest.raises(ValueError, match="MAX_PLANNED_REQUESTS"):
        p.plan(rng(), 86400.0, rate_scale=1000)
    assert MAX_PLANNED_REQUESTS == 5_000_000
    with pytest.raises(ValueError, match="rate_scale"):
        p.plan(rng(), 10.0, rate_scale=0)


@pytest.mark.parametrize("key", list(SPECS))
def test_round_trip_through_json(key: str) -> None:
    """A resolved scenario is written to run.json and read back: the dump validates again."""
    p = arrival(key)
    assert ARRIVAL.validate_json(ARRIVAL.dump_json(p)) == p


def test_modules_import_without_locust_or_gevent() -> None:
    code = (
        "import sys, scenarios.traffic, scenarios.traces; "
        "assert not {'gevent', 'locust'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
