"""The loop-lag histogram against samples with known quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.looplag import LoopLag


def test_quantiles_come_from_their_bins_never_below_the_truth() -> None:
    lag = LoopLag(lambda: 0.0)
    for x in np.random.default_rng(0).uniform(0.001, 0.002, 990):
        lag.add(float(x))
    for _ in range(10):
        lag.add(0.1)
    assert lag.samples == 1000
    true_p50 = 0.0015
    assert true_p50 <= lag.quantile(0.5) <= true_p50 * 1.13  # one bin is about 12% wide
    assert 0.002 <= lag.quantile(0.99) <= 0.002 * 1.13  # the 990th value is under 2 ms
    assert lag.quantile(0.995) == pytest.approx(0.1)  # capped at the largest seen
    s = lag.summary()
    assert (s["samples"], s["max_ms"]) == (1000, pytest.approx(100.0))


def test_no_samples_reads_zero() -> None:
    assert LoopLag(lambda: 0.0).quantile(0.99) == 0.0
