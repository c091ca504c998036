"""The simulator against queueing theory, with confidence intervals over seeds.

With max_num_seqs = 1 the engine is a FIFO single server. A request's service is its steps:
- M/D/1: one token from a fixed prompt, so every service takes exactly S.
- M/M/1: n tokens of d seconds each with n geometric, so service is geometric in d; the
  Pollaczek-Khinchine formula gives its exact mean wait, within 2.5% of the M/M/1 formula.
- M/G/1: lognormal token counts at loads 0.5 to 0.9, against Pollaczek-Khinchine.
Each on both cores: the reference (SimPy) and the fast one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from scenarios.plan import RequestSpec
from scenarios.traffic import PoissonArrival
from simulator.engine.core import EngineConfig, StepCost
from simulator.replay.sim import Core, simulate

SEEDS = range(12)
CORES = pytest.mark.parametrize("core", ["reference", "fast"])  # each test on both cores


def _mean_waits(
    lam: float,
    n_requests: int,
    service_tokens: Callable[[np.random.Generator, int], np.ndarray],
    cost: StepCost,
    first_step: float,
    core: Core,
) -> np.ndarray:
    """Mean queueing wait per seed: first token time - arrival - the prefill step."""
    config = EngineConfig(max_num_seqs=1, kv_cache_tokens=10**9, cost=cost)
    means = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        arrivals = PoissonArrival(type="poisson", rate=lam).plan(rng, n_requests / lam)
        tokens = service_tokens(rng, len(arrivals))
        plan = [
            RequestSpec(f"r{i}", float(t), 1, int(n))
            for i, (t, n) in enumerate(zip(arrivals, tokens, strict=True))
        ]
        result = simulate(plan, config, timeout_s=1e6, record_chunks=False, core=core)
        assert result.core == core
        recs = result.records
        waits = [(r.first_token or np.nan) - r.start - first_step for r in recs]
        means.append(np.mean(waits[len(waits) // 10 :]))  # drop the empty-system warm-up
    return np.asarray(means)


def _ci(x: np.ndarray, level: float = 0.99) -> tuple[float, float]:
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


@CORES
def test_md1_mean_wait(core: Core) -> None:
    service, rho = 0.05, 0.8
    lam = rho / service
    means = _mean_waits(
        lam, 8000, lambda rng, n: np.ones(n), StepCost(service, 0.0, 0.0), service, core
    )
    theory = rho * service / (2 * (1 - rho))  # M/D/1: 0.1 s
    low, high = _ci(means)
    assert low <= theory <= high, (theory, low, high)
    assert high - low < 0.2 * theory  # the interval is tight enough to mean something


@CORES
def test_mm1_mean_wait(core: Core) -> None:
    d, p, rho = 0.002, 0.05, 0.7  # tokens ~ Geometric(p): mean 20, service mean 40 ms
    mean_s = d / p
    lam = rho / mean_s
    means = _mean_waits(
        lam, 5000, lambda rng, n: rng.geometric(p, n), StepCost(d, 0.0, 0.0), d, core
    )
    es2 = d**2 * (2 - p) / p**2
    pk = lam * es2 / (2 * (1 - rho))  # Pollaczek-Khinchine, exact for this service
    mm1 = rho * mean_s / (1 - rho)  # M/M/1 with exponential service of the same mean
    low, high = _ci(means)
    assert low <= pk <= high, (pk, low, high)
    assert abs(pk - mm1) / mm1 < 0.03
    assert low <= mm1 * 1.03 and mm1 * 0.97 <= high


@CORES
@pytest.mark.parametrize("rho", [0.5, 0.7, 0.9])
def test_mg1_lognormal_mean_wait(rho: float, core: Core) -> None:
    """M/G/1 with lognormal service (sigma 0.8, heavier-tailed than exponential): the mean wait
    is Pollaczek-Khinchine's lambda E[S^2] / (2 (1 - rho)), E[S^2] from the service as drawn
    (whole tokens of d seconds)."""
    d, median, sigma = 0.001, 30.0, 0.8

    def tokens(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.maximum(1, np.round(rng.lognormal(np.log(median), sigma, n)))

    big = tokens(np.random.default_rng(99), 2_000_000) * d
    mean_s, es2 = float(big.mean()), float((big**2).mean())
    lam = rho / mean_s
    n = 6000 if rho < 0.9 else 20000  # near saturation the queue takes longer to settle
    means = _mean_waits(lam, n, tokens, StepCost(d, 0.0, 0.0), d, core)
    pk = lam * es2 / (2 * (1 - rho))
    low, high = _ci(means)
    assert low <= pk <= high, (pk, low, high)
    assert high - low < 0.4 * pk
