"""The forecast's search, pool and capacity bound, on a known engine (no calibration noise)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scenarios.plan import RequestSpec
from scenarios.spec import Scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.fit.calibrate import Calibration, Fit
from simulator.forecast import footprint, search
from simulator.forecast.capacity import saturation_throughput
from simulator.forecast.search import ForecastConfig, Forecaster, step_time_band
from simulator.forecast.seeds import PlanJob, SeedJob, SeedOutcome, run_seed, seed_plan
from simulator.replay.sim import simulate
from surgecast.contracts import read_forecast, write_forecast
from surgecast.tables import forecast_table
from tests.conftest import scenario_dict

ENGINE = EngineConfig(max_num_seqs=8, kv_cache_tokens=16384, cost=StepCost(0.010, 0.0008, 0.00005))


def known(engine: EngineConfig = ENGINE) -> Calibration:
    """A calibration that is exactly `engine`: zero uncertainty, so seeds differ only in traffic."""
    c = engine.cost
    assert isinstance(c, StepCost)
    values = np.array([0.0, c.base_s, c.per_decode_seq_s, c.per_prefill_token_s])
    return Calibration(engine, Fit(values, np.zeros((4, 4)), 100, 10, 1.0, 0.0))


def scenario(**slos: str) -> Scenario:
    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 20, "seed": 3},
        slos=slos or {"ttft": "p(95) < 300"},
        forecast={"seeds": 2, "duration_s": 40},
    )
    return Scenario.model_validate(data)


def test_the_answer_is_the_fewest_fleet_that_passes() -> None:
    fc = Forecaster(scenario(), known(), ForecastConfig(seeds=2, duration_s=40, workers=1))
    for point in fc.run([1.0, 6.0]):
        assert point.best is not None and point.best.passed
        n = point.best.replicas
        assert n == 1 or not fc.evaluate(point.scale, n - 1).passed
        assert point.cost_per_month_usd == n * 2.0 * 730


def test_seeds_in_worker_processes_give_the_same_result() -> None:
    def one(workers: int) -> tuple[float, float]:
        fc = Forecaster(
            scenario(), known(), ForecastConfig(seeds=2, duration_s=20, workers=workers)
        )
        fc_eval = fc.run([3.0])[0].best
        assert fc_eval is not None
        return fc_eval.ttft_p95_ms.mean, fc_eval.throughput.mean

    assert one(1) == one(2)


def test_a_replica_loaded_beyond_its_saturation_throughput_never_passes() -> None:
    lenient = scenario(ttft="p(95) < 10000000", e2e="p(95) < 10000000")
    fc = Forecaster(lenient, known(), ForecastConfig(seeds=2, duration_s=20, workers=1))
    point = fc.run([10.0])[0]
    assert point.best is not None
    assert point.best.replicas >= math.ceil(point.rate / fc.replica_capacity)
    assert point.best.load <= 1.0 and point.best.headroom == 1.0 - point.best.load


def test_saturation_throughput_matches_a_saturated_simulation() -> None:
    """Ten times more traffic than the formula says one replica can take: the simulated replica
    completes within 10% of the formula's rate."""
    specs = [
        RequestSpec(id=f"r{i}", arrival=i * 0.01, prompt_tokens=100, max_tokens=50)
        for i in range(3000)
    ]
    capacity = saturation_throughput(ENGINE, specs)
    result = simulate(specs, ENGINE, timeout_s=10_000, record_chunks=False)
    ends = sorted(r.end for r in result.records if r.status == "ok" and r.end is not None)
    middle = ends[len(ends) // 4 : 3 * len(ends) // 4]  # steady state, not the ramp or the tail
    measured = (len(middle) - 1) / (middle[-1] - middle[0])
    assert measured == pytest.approx(capacity, rel=0.10)


def test_an_autoscaled_fleet_is_forecast_beside_the_fixed_one(tmp_path: Path) -> None:
    """A flash crowd: the fixed fleet is sized for the peak; the autoscaler runs fewer replicas
    on average, adds some during the surge (each paying its cold start) and costs less."""
    data = scenario_dict(
        traffic={
            "arrival": {
                "type": "flash-crowd",
                "base_rate": 4,
                "peak_rate": 60,
                "at_s": 100,
                "rise_s": 5,
                "hold_s": 10,
                "decay_s": 5,
            },
            "duration_s": 240,
            "seed": 3,
        },
        slos={"e2e": "p(95) < 3000"},
        fleet={
            "autoscaler": {
                "target": 6,
                "interval_s": 1,
                "stabilisation_s": 10,
                "min_replicas": 1,
                "max_replicas": 2,
                "keep_alive_s": 5,
            },
            "cold_start": {"load_s": 3},
        },
    )
    fc = Forecaster(
        Scenario.model_validate(data), known(), ForecastConfig(seeds=2, duration_s=240, workers=1)
    )
    point = fc.run([1.0])[0]
    assert point.best is not None and point.autoscaled is not None
    auto = point.autoscaled
    assert auto.cold_starts.mean >= 1  # it grew during the surge
    assert 1 <= auto.mean_replicas.mean < auto.peak_replicas.high
    assert auto.mean_replicas.mean < point.best.replicas  # quiet most of the window
    cost = point.autoscaled_cost_per_month_usd
    assert cost is not None and cost == pytest.approx(auto.mean_replicas.mean * 2.0 * 730)
    assert point.cost_per_month_usd is not None and cost < point.cost_per_month_usd
    assert "autoscaled mean / peak" in forecast_table([point])
    write_forecast(tmp_path / "forecast.json", [point])
    again = read_forecast(tmp_path / "forecast.json")[0]
    assert again.autoscaled == auto


def test_the_step_time_band_is_the_drifts_normal_interval() -> None:
    """No parameter uncertainty, a run-to-run drift of 10%: the band is 1 -/+ 1.645 x 0.1."""
    drifting = dataclasses.replace(known(), drift=0.1)
    low, high = step_time_band(drifting, np.random.default_rng(1))
    assert low == pytest.approx(1 - 0.1645, abs=0.01) and high == pytest.approx(1.1645, abs=0.01)
    assert step_time_band(known(), np.random.default_rng(1)) == (1.0, 1.0)
    both = step_time_band(drifting, np.random.default_rng(1), transfer_error=0.1)
    assert both[1] == pytest.approx(1 + 1.645 * 0.1 * 2**0.5, abs=0.015)  # sd adds in quadrature


def test_the_replica_interval_brackets_the_answer_and_reads_back() -> None:
    config = ForecastConfig(seeds=2, duration_s=40, workers=1, intervals=True)
    exact = Forecaster(scenario(), known(), config).run([6.0])[0]
    assert (
        exact.best is not None and exact.replicas_low == exact.replicas_high == exact.best.replicas
    )
    drifting = dataclasses.replace(known(), drift=0.4)
    fc = Forecaster(scenario(), drifting, config)
    p = fc.run([6.0])[0]
    assert p.best is not None and p.replicas_low is not None and p.replicas_high is not None
    assert p.replicas_low <= p.best.replicas <= p.replicas_high and p.replicas_low < p.replicas_high
    slow = fc.slower(fc.band[1]).run([6.0])[0].best  # the slow edge searched on its own
    assert slow is not None and slow.replicas == p.replicas_high
    assert p.cost_interval_usd == (p.replicas_low * 2.0 * 730, p.replicas_high * 2.0 * 730)
    assert "(" in forecast_table([p]).split("\n")[2]  # the interval is printed


def test_a_forecast_never_loads_a_replica_beyond_what_the_target_served() -> None:
    """A sweep measured the target serving at most 2 req/s though the model saturates later:
    the bound is the measured capacity, and every passing fleet stays under it."""
    fc = Forecaster(scenario(), known(), ForecastConfig(seeds=2, duration_s=20, workers=1))
    model = fc.replica_capacity
    capped = dataclasses.replace(known(), measured_capacity=2.0)
    fc = Forecaster(scenario(), capped, ForecastConfig(seeds=2, duration_s=20, workers=1))
    assert model > 2.0 and fc.replica_capacity == 2.0
    point = fc.run([3.0])[0]
    assert point.best is not None and point.rate / point.best.replicas <= 0.9 * 2.0


def test_the_measured_capacity_reads_back_from_calibration_json(tmp_path: Path) -> None:
    from surgecast.contracts import read_calibration, write_calibration

    path = tmp_path / "calibration.json"
    write_calibration(path, dataclasses.replace(known(), measured_capacity=2.5))
    assert read_calibration(path).measured_capacity == 2.5
    write_calibration(path, known())
    assert read_calibration(path).measured_capacity is None


def test_a_seeds_traffic_is_built_once_per_scale_and_gives_the_same_forecast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every fleet size a scale's search tries simulates the same traffic per seed: it is
    built once and kept, and the forecast equals one whose runs build it each time (as they
    do when the plans would take over a quarter of the memory)."""
    built: Counter[tuple[int, float]] = Counter()
    runs: Counter[bool] = Counter()  # by whether the run was given its seed's plan

    def counting(job: PlanJob) -> list[RequestSpec]:
        built[(job.seed, job.rate_scale)] += 1
        return seed_plan(job)

    def run(job: SeedJob, plan: list[RequestSpec] | None = None) -> SeedOutcome:
        runs[plan is not None] += 1
        return run_seed(job, plan)

    monkeypatch.setattr(search, "seed_plan", counting)
    monkeypatch.setattr(search, "run_seed", run)
    config = ForecastConfig(seeds=2, duration_s=20, workers=1)
    kept = Forecaster(scenario(), known(), config).run([3.0, 30.0])
    assert len(built) == 4 and set(built.values()) == {1}  # 2 seeds x 2 scales
    assert runs[True] > len(built) and not runs[False]  # x30 tries several fleets on them
    monkeypatch.setattr(footprint, "PLAN_BYTES", 1 << 40)  # too big to keep
    runs.clear()
    rebuilt = Forecaster(scenario(), known(), config).run([3.0, 30.0])
    assert runs[False] > 4 and not runs[True]
    assert forecast_table(rebuilt) == forecast_table(kept)
