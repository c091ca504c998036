"""Back-test: predict measured runs with the calibrated model and compare, with intervals.

Two predictions of a run: from its own send times and served token counts (`replay`: the
engine model alone is judged), and from the scenario's plan (`plan`: arrivals and lengths drawn
as a forecast draws them, so the traffic model is judged too). Each comes with a 90% interval
for the measured value: the calibration's parameter uncertainty and the run-to-run drift of step
time (each draw a simulation), the plan's seeds, and the measured quantile's own sampling noise
(bootstrapped over the run's requests).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenarios.metrics import metric_samples
from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RequestRecord
from scenarios.spec import Scenario
from simulator.engine.stepcost import scaled
from simulator.fit.calibrate import Calibration, draw_residuals
from simulator.replay.sim import SimResult, simulate

DRAWS = 12  # simulations per prediction, each with its own parameter draw (and plan seed)
BOOTSTRAP = 300
QUANTILES = (50, 95, 99)
LATENCIES = ("ttft", "itl", "e2e")
COVERAGE = 90  # percent: the interval's nominal coverage
Noise = tuple[np.ndarray, np.random.Generator]  # step residuals (ms) and the generator to draw


@dataclass(frozen=True)
class BacktestRow:
    metric: str  # ttft, itl, e2e (milliseconds) or throughput (requests/s)
    quantile: int  # 0 for throughput
    measured: float
    predicted: float
    low: float  # the 90% interval for the measured value
    high: float
    basis: str = "replay"  # "replay": the run's own send times; "plan": the scenario's plan

    @property
    def unit(self) -> str:
        return "req/s" if self.metric == "throughput" else "ms"

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured if self.measured else 0.0

    @property
    def inside(self) -> bool:
        return self.low <= self.measured <= self.high


def replay_plan(records: Sequence[RequestRecord]) -> list[RequestSpec]:
    """The measured successful requests as a plan: actual send times, server-counted tokens;
    a request recorded twice (a duplicated line) is sent once."""
    seen: set[str] = set()
    plan = []
    for r in records:
        if r.status == "ok" and r.output_tokens and r.id not in seen:
            seen.add(r.id)
            plan.append(
                RequestSpec(
                    id=r.id,
                    arrival=r.start,
                    prompt_tokens=r.prompt_tokens or 1,
                    max_tokens=max(r.output_tokens or 1, 1),
                    persona=r.persona,
                    session=r.session,
                    turn=r.turn,
                )
            )
    return plan


def _values(
    records: Sequence[RequestRecord], span_s: float, step_noise: Noise | None = None
) -> dict[tuple[str, int], float]:
    """The quantities compared: latency quantiles (ms) and throughput (requests/s). Simulated
    inter-token gaps get `step_noise` added: one gap is one step, which scatters around the
    model as the calibration's steps did."""
    out: dict[tuple[str, int], float] = {}
    for metric in LATENCIES:
        x = metric_samples(records, metric) * 1000.0
        if metric == "itl" and step_noise is not None and len(x):
            residuals, rng = step_noise
            x = np.clip(x + draw_residuals(residuals, rng, len(x)), 0.0, None)
        if len(x):
            for q, v in zip(QUANTILES, np.percentile(x, QUANTILES), strict=True):
                out[(metric, q)] = float(v)
    ok = sum(r.status == "ok" for r in records)
    out[("throughput", 0)] = ok / span_s if span_s > 0 else 0.0
    return out


def _span(records: Sequence[RequestRecord]) -> float:
    if not records:
        return 0.0
    return max(r.end or r.start for r in records) - min(r.start for r in records)


def _sampling_spread(
    records: Sequence[RequestRecord], rng: np.random.Generator
) -> dict[tuple[str, int], tuple[float, float]]:
    """How far each measured latency quantile could be from the engine's true one, by chance:
    (below, above) at the interval's edges, from a bootstrap over the run's requests."""
    out = {}
    half = (100 - COVERAGE) / 2
    for metric in LATENCIES:
        x = metric_samples(records, metric) * 1000.0
        if len(x) < 2:
            continue
        boot = _bootstrap_quantiles(x, rng)
        for q, row in zip(QUANTILES, boot, strict=True):
            mid = float(np.percentile(x, q))
            lo, hi = np.percentile(row, [half, 100 - half])
            out[(metric, q)] = (mid - float(lo), float(hi) - mid)
    return out


RESAMPLED = 20_000  # samples beyond which the bootstrap takes its order-statistic form


def _bootstrap_quantiles(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP resampled values of each of QUANTILES of `x` (a row per quantile). Up to
    RESAMPLED samples, by resampling; beyond, in the same bootstrap's order-statistic form (a
    resample's q-quantile is the sorted sample's value at a Binomial(n, q) rank), in memory
    and time of the sort: a long run's two million gaps once took 4.5 GiB."""
    if len(x) <= RESAMPLED:
        return np.asarray(np.percentile(rng.choice(x, size=(BOOTSTRAP, len(x))), QUANTILES, axis=1))
    ordered = np.sort(x)
    ranks = [rng.binomial(len(x), q / 100, size=BOOTSTRAP) for q in QUANTILES]
    return np.stack([ordered[np.minimum(k, len(x) - 1)] for k in ranks])


def _step_noise(calibration: Calibration, seed: int) -> Noise | None:
    quantiles = calibration.fit.residual_quantiles_s
    if not quantiles:
        return None
    return np.asarray(quantiles) * 1000.0, np.random.default_rng(seed + 1)


def _drawn(calibration: Calibration, rng: np.random.Generator, n: int) -> list[Calibration]:
    """Calibrations drawn from the fit's uncertainty, each step cost also scaled by the
    run-to-run drift of step time."""
    out = []
    for cost, overhead in calibration.fit.sample_costs(rng, n):
        factor = max(0.5, 1.0 + calibration.drift * float(rng.standard_normal()))
        engine = calibration.engine.with_cost(scaled(cost, factor), overhead)
        out.append(dataclasses.replace(calibration, engine=engine))
    return out


def _rows(
    measured: dict[tuple[str, int], float],
    central: dict[tuple[str, int], float],
    draws: list[dict[tuple[str, int], float]],
    sampling: dict[tuple[str, int], tuple[float, float]],
    basis: str,
) -> list[BacktestRow]:
    half = (100 - COVERAGE) / 2
    rows = []
    for key, m in measured.items():
        if key not in central or (basis == "replay" and key[0] == "throughput"):
            continue  # a replay sends what was sent: its throughput is the run's by design
        p = central[key]
        spread = [d[key] for d in draws if key in d] or [p]
        p_lo, p_hi = np.percentile(spread, [half, 100 - half])
        below, above = sampling.get(key, (0.0, 0.0))
        low = max(0.0, p - math.hypot(max(p - float(p_lo), 0.0), above))
        high = p + math.hypot(max(float(p_hi) - p, 0.0), below)
        rows.append(BacktestRow(key[0], key[1], m, p, low, high, basis))
    return rows


def backtest(
    records: Sequence[RequestRecord],
    calibration: Calibration,
    timeout_s: float = 600.0,
    draws: int = DRAWS,
    seed: int = 0,
) -> tuple[list[BacktestRow], SimResult]:
    """Replay the run's successful requests (their send times and served tokens) through the
    calibrated model: rows with 90% intervals, and the central simulation."""
    plan = replay_plan(records)
    if not plan:
        raise ValueError("no successful requests with token counts to replay")
    replayed = {s.id for s in plan}
    measured = [r for r in records if r.id in replayed]
    rng = np.random.default_rng(seed)
    noise = _step_noise(calibration, seed)
    span = _span(measured)
    result = simulate(plan, calibration.engine, timeout_s=timeout_s)
    central = _values(result.records, span, noise)
    spread = [
        _values(simulate(plan, c.engine, timeout_s=timeout_s).records, span, noise)
        for c in _drawn(calibration, rng, draws)
    ]
    sampling = _sampling_spread(measured, rng)
    return _rows(_values(measured, span), central, spread, sampling, "replay"), result


def predict_plan(
    records: Sequence[RequestRecord],
    scenario: Scenario,
    calibration: Calibration,
    draws: int = DRAWS,
    seed: int = 0,
) -> list[BacktestRow]:
    """Predict the run from its scenario alone: the plan drawn with other seeds (the run's own
    seed gives the central prediction), each with a parameter draw."""
    duration = scenario.traffic.duration_s
    timeout = scenario.target.timeout_s

    noise = _step_noise(calibration, seed)

    def predicted(seed_: int, c: Calibration) -> dict[tuple[str, int], float]:
        plan = c.tokens.apply(build_plan(scenario, seed=seed_), seed_)
        return _values(simulate(plan, c.engine, timeout_s=timeout).records, duration, noise)

    rng = np.random.default_rng(seed)
    central = predicted(scenario.traffic.seed, calibration)
    spread = [
        predicted(scenario.traffic.seed + 1 + i, c)
        for i, c in enumerate(_drawn(calibration, rng, draws))
    ]
    measured = _values(records, duration)
    sampling = _sampling_spread(records, rng)
    return _rows(measured, central, spread, sampling, "plan")


def backtest_warnings(
    calibration: Calibration,
    rows: Sequence[BacktestRow],
    max_error_pct: float = 25.0,
    min_r2: float = 0.9,
) -> list[str]:
    """Why a forecast from this calibration deserves less trust; empty when it looks sound."""
    out = []
    if calibration.fit.r2 < min_r2:
        out.append(f"the step-cost fit explains little (R^2 {calibration.fit.r2:.2f} < {min_r2})")
    out += [
        f"back-test ({r.basis}) {r.metric} p{r.quantile} is off by {r.error_pct:+.0f}% "
        f"(limit {max_error_pct:g}%), outside its {COVERAGE}% interval: forecasts from this "
        "calibration are unreliable"
        for r in rows
        if r.metric in ("ttft", "e2e") and abs(r.error_pct) > max_error_pct and not r.inside
    ]
    return out
