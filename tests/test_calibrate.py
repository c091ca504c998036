"""Calibration recovers known engine parameters from simulated records, and back-tests."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from scenarios.plan import build_plan
from scenarios.records import RequestRecord
from scenarios.spec import parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.fit.backtest import backtest
from simulator.fit.calibrate import (
    MAX_STEP_ROWS,
    MIN_KIND_ROWS,
    THIN_BLOCK,
    Calibration,
    CalibrationError,
    calibrate,
    thinned,
)
from simulator.replay.sim import simulate
from tests.conftest import scenario_dict
from tests.long_runs import LongRun, long_run

TRUE_COST = StepCost(base_s=0.018, per_decode_seq_s=0.0007, per_prefill_token_s=6e-5)
TRUE = EngineConfig(max_num_seqs=16, kv_cache_tokens=65536, overhead_s=0.002, cost=TRUE_COST)


def _jittered(
    records: list[RequestRecord], rng: np.random.Generator, sd: float
) -> list[RequestRecord]:
    """What a client sees: each chunk delayed by a little independent noise."""
    out = []
    for r in records:
        times = sorted(t + abs(rng.normal(0, sd)) for t in r.chunk_times)
        out.append(
            dataclasses.replace(
                r,
                chunk_times=times,
                first_token=times[0],
                end=times[-1] + 0.0002,
                source="measured",
            )
        )
    return out


def _linear(cal: Calibration) -> StepCost:
    """The calibrated cost, which for these linear engines must be the linear model."""
    assert isinstance(cal.engine.cost, StepCost), cal.fit.candidates
    return cal.engine.cost


@pytest.fixture(scope="module")
def measured() -> list[RequestRecord]:
    scenario = parse_scenario(scenario_dict(traffic={"rate": 6, "duration_s": 60, "seed": 3}))
    plan = build_plan(scenario)
    records = simulate(plan, TRUE).records
    return _jittered(records, np.random.default_rng(1), sd=0.0003)


def test_recovers_known_parameters(measured: list[RequestRecord]) -> None:
    cal = calibrate(measured, dataclasses.replace(TRUE, cost=StepCost(), overhead_s=0.0))
    cost = _linear(cal)
    assert cost.base_s == pytest.approx(TRUE_COST.base_s, rel=0.03)
    assert cost.per_decode_seq_s == pytest.approx(TRUE_COST.per_decode_seq_s, rel=0.05)
    assert cost.per_prefill_token_s == pytest.approx(TRUE_COST.per_prefill_token_s, rel=0.05)
    assert cal.engine.overhead_s == pytest.approx(TRUE.overhead_s, abs=0.001)
    assert cal.fit.r2 > 0.95 and cal.fit.step_rows > 1000
    # the reported uncertainty covers the truth (3 standard errors)
    c = TRUE_COST
    true = np.array([TRUE.overhead_s, c.base_s, c.per_decode_seq_s, c.per_prefill_token_s])
    assert np.all(np.abs(cal.fit.values - true) <= 3 * cal.fit.stderr() + 1e-4)


def test_backtest_of_a_faithful_model_is_close(measured: list[RequestRecord]) -> None:
    cal = calibrate(measured, TRUE)
    rows, _ = backtest(measured, cal)
    errors = {(r.metric, r.quantile): abs(r.error_pct) for r in rows}
    assert errors[("e2e", 50)] < 2 and errors[("e2e", 95)] < 2
    assert errors[("ttft", 50)] < 10 and errors[("ttft", 95)] < 10


def test_too_little_data_is_a_clear_error() -> None:
    rec = RequestRecord(
        id="a",
        intended_start=0,
        start=0,
        first_token=0.1,
        end=0.2,
        chunk_times=[0.1, 0.2],
        prompt_tokens=5,
        output_tokens=2,
    )
    with pytest.raises(CalibrationError, match="usable engine steps"):
        calibrate([rec], TRUE)


def _measured(engine: EngineConfig, seed: int, **traffic: float) -> list[RequestRecord]:
    scenario = parse_scenario(scenario_dict(traffic={"seed": seed, **traffic}))
    return _jittered(simulate(build_plan(scenario), engine).records, np.random.default_rng(1), 3e-4)


def test_one_slot_prefill_is_identified_and_queueing_predicted() -> None:
    """A strict FIFO server (one slot) never mixes prefill with decoding: its queued requests'
    prefill steps identify the per-token cost, so the queueing delay is predicted."""
    one = dataclasses.replace(TRUE, max_num_seqs=1, cost=StepCost(0.006, 0.001, 1e-4))
    measured = _measured(one, seed=5, rate=3, duration_s=120)
    cal = calibrate(measured, dataclasses.replace(one, cost=StepCost(), overhead_s=0.0))
    assert _linear(cal).per_prefill_token_s == pytest.approx(1e-4, rel=0.10)
    assert cal.engine.overhead_s == pytest.approx(one.overhead_s, abs=0.001)
    rows, _ = backtest(measured, cal)
    errors = {(r.metric, r.quantile): abs(r.error_pct) for r in rows}
    assert errors[("ttft", 50)] < 15 and errors[("ttft", 95)] < 15


def test_outlier_steps_do_not_bias_the_fit(measured: list[RequestRecord]) -> None:
    """1% of the chunks arrive 150 ms late (a paused client): the fit drops those steps."""
    rng = np.random.default_rng(2)
    late = []
    for r in measured:
        times = [t + (0.15 if rng.random() < 0.01 else 0.0) for t in r.chunk_times]
        times.sort()
        late.append(dataclasses.replace(r, chunk_times=times, first_token=times[0]))
    cal = calibrate(late, dataclasses.replace(TRUE, cost=StepCost(), overhead_s=0.0))
    assert _linear(cal).base_s == pytest.approx(TRUE_COST.base_s, rel=0.05)
    assert _linear(cal).per_decode_seq_s == pytest.approx(TRUE_COST.per_decode_seq_s, rel=0.1)


def test_prefill_cost_from_idle_requests_when_no_step_mixes_it() -> None:
    """At a rate where requests never overlap, no timed step has a prefill: the per-token cost
    comes from the idle requests' TTFT against their prompt length, not booked as overhead."""
    measured = _measured(TRUE, seed=8, rate=0.3, duration_s=400)
    cal = calibrate(measured, dataclasses.replace(TRUE, cost=StepCost(), overhead_s=0.0))
    assert _linear(cal).per_prefill_token_s == pytest.approx(6e-5, rel=0.15)
    assert cal.engine.overhead_s == pytest.approx(TRUE.overhead_s, abs=0.001)


def _chunked(r: RequestRecord, k: int) -> RequestRecord:
    """The record a client sees from a server writing `k` tokens per chunk."""
    times = r.chunk_times
    ends = list(range(k - 1, len(times), k))
    if not ends or ends[-1] != len(times) - 1:
        ends.append(len(times) - 1)
    sizes = [ends[0] + 1] + [b - a for a, b in itertools.pairwise(ends)]
    chunk_times = [times[i] for i in ends]
    return dataclasses.replace(
        r, chunk_times=chunk_times, first_token=chunk_times[0], chunk_tokens=sizes
    )


def test_several_tokens_per_chunk_calibrate_as_well_as_one(measured: list[RequestRecord]) -> None:
    start = dataclasses.replace(TRUE, cost=StepCost(), overhead_s=0.0)
    one = _linear(calibrate(measured, start))
    four = _linear(calibrate([_chunked(r, 4) for r in measured], start))
    assert four.base_s == pytest.approx(one.base_s, rel=0.05)
    assert four.per_decode_seq_s == pytest.approx(one.per_decode_seq_s, rel=0.10)


def test_a_million_token_stream_is_thinned_and_recovers_the_engine() -> None:
    """One request streaming a million tokens beside short ones (a long run's worth of steps):
    the fit takes a spread subsample of the steps, says so, and still finds the engine."""
    run = LongRun(1_000_000, admit_per_step=0.01, client_noise_s=0.0001, seed=4)
    records = long_run(run)
    assert len(records[0].chunk_times) == 1_000_000
    cal = calibrate(records, dataclasses.replace(TRUE, max_num_seqs=256, cost=StepCost()))
    assert cal.fit.step_rows <= MAX_STEP_ROWS + 2 * MIN_KIND_ROWS
    assert cal.fit.rows_seen == 1_000_000 - 1  # every step but the first is timed
    assert any("thinned" in n and str(cal.fit.step_rows) in n for n in cal.notes)
    c = run.cost
    true = np.array([c.base_s, c.per_decode_seq_s, c.per_prefill_token_s])
    assert np.all(np.abs(cal.fit.values[1:] - true) <= 3 * cal.fit.stderr()[1:])
    assert cal.engine.overhead_s == pytest.approx(run.overhead_s, abs=0.0005)


def test_thinning_keeps_blocks_spread_over_the_run_and_both_kinds_of_step() -> None:
    prefill = np.zeros(100_000, dtype=bool)
    prefill[[7, 50_003, 99_998]] = True  # three steps with a prompt, all outside most blocks
    rows = thinned(prefill, 2_000)
    assert np.array_equal(rows, thinned(prefill, 2_000))  # seeded
    assert np.array_equal(np.unique(rows), rows)
    assert prefill[rows].sum() == 3  # every prompt step kept: under MIN_KIND_ROWS of them
    blocks = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    long_blocks = [b for b in blocks if len(b) >= THIN_BLOCK]
    assert len(long_blocks) >= 2_000 // THIN_BLOCK - 1  # consecutive runs of steps ...
    starts = np.array([b[0] for b in long_blocks])
    assert starts.min() < 100_000 / 40 and starts.max() > 100_000 * 39 / 40  # ... spread over it
    assert np.ptp(np.diff(starts)) <= THIN_BLOCK * 2  # evenly
    assert np.array_equal(thinned(prefill[:1_500], 2_000), np.arange(1_500))  # under the cap
