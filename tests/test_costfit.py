"""The step-cost model chosen by held-out error: the law that made the steps, where it bends,
and the linear model where it does not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from scenarios.plan import build_plan
from scenarios.records import RequestRecord
from scenarios.spec import parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.engine.stepcost import CostModel, DecodeTableCost, RooflineCost
from simulator.fit.backtest import backtest
from simulator.fit.calibrate import Calibration, calibrate
from simulator.fit.costfit import Selection, StepRows, predict, select
from simulator.replay.sim import simulate
from surgecast.contracts import read_calibration, write_calibration
from tests.conftest import scenario_dict
from tests.test_calibrate import _jittered

# concave in batch size, as measured against llama-server (batch 8 under a line through 1-3)
CONCAVE = DecodeTableCost((1.0, 2.0, 4.0, 8.0, 16.0), (0.010, 0.0115, 0.0135, 0.016, 0.0185), 6e-5)
ROOFLINE = RooflineCost(0.003, 0.0009, 0.006, 2e-6)
LINEAR = StepCost(0.012, 0.0006, 5e-5, 0.0)


def _rows(law: CostModel, seed: int, n: int = 3000) -> StepRows:
    """Steps of batch 1-16, a fifth with a prompt, priced by `law`, with 0.3 ms noise and 1%
    outliers (50 ms late)."""
    rng = np.random.default_rng(seed)
    decode = rng.integers(1, 17, n).astype(float)
    prefill = np.where(rng.random(n) < 0.2, rng.integers(50, 300, n), 0).astype(float)
    context = decode * rng.uniform(100, 600, n) + prefill
    steps = np.ones(n)
    clean = predict(law, StepRows(steps, decode, prefill, context, np.zeros(n)))
    noise = rng.normal(0, 3e-4, n) + np.where(rng.random(n) < 0.01, 0.05, 0.0)
    return StepRows(steps, decode, prefill, context, clean + noise)


def _held_out(chosen: Selection) -> dict[str, float]:
    return {c.name: c.held_out_s for c in chosen.candidates}


@pytest.mark.parametrize("seed", [1, 2])
def test_a_concave_law_picks_the_table_and_recovers_it(seed: int) -> None:
    chosen = select(_rows(CONCAVE, seed))
    assert chosen.name == "table", chosen.candidates
    table = chosen.model
    assert isinstance(table, DecodeTableCost)
    for batch in (1, 2, 3, 4, 6, 8, 12, 16):
        assert table.decode_s(batch) == pytest.approx(CONCAVE.decode_s(batch), abs=3e-4)
    assert table.per_prefill_token_s == pytest.approx(6e-5, rel=0.05)
    errors = _held_out(chosen)
    assert errors["table"] < 0.8 * errors["linear"]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_roofline_law_picks_the_roofline_and_recovers_it(seed: int) -> None:
    chosen = select(_rows(ROOFLINE, seed))
    assert chosen.name == "roofline", chosen.candidates
    fitted = chosen.model
    assert isinstance(fitted, RooflineCost)
    for got, want in zip(dataclasses.astuple(fitted), dataclasses.astuple(ROOFLINE), strict=True):
        assert got == pytest.approx(want, rel=0.1)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_linear_law_keeps_the_linear_model(seed: int) -> None:
    chosen = select(_rows(LINEAR, seed))
    assert chosen.name == "linear", chosen.candidates
    assert isinstance(chosen.model, StepCost)
    assert chosen.model.per_decode_seq_s == pytest.approx(LINEAR.per_decode_seq_s, rel=0.05)
    errors = _held_out(chosen)
    assert errors["table"] > 0.95 * errors["linear"]  # no clear gain from bending


def test_a_context_law_picks_the_context_term() -> None:
    law = dataclasses.replace(LINEAR, per_context_token_s=2e-6)
    chosen = select(_rows(law, 3))
    assert chosen.name == "linear+context", chosen.candidates
    assert isinstance(chosen.model, StepCost) and chosen.model.per_context_token_s > 0
    assert chosen.model.per_context_token_s == pytest.approx(2e-6, rel=0.05)


TABLE_ENGINE = EngineConfig(max_num_seqs=16, overhead_s=0.002, cost=CONCAVE)


@pytest.fixture(scope="module")
def table_measured() -> list[RequestRecord]:
    """A simulated engine with the concave table, measured by a jittery client."""
    scenario = parse_scenario(scenario_dict(traffic={"rate": 9, "duration_s": 60, "seed": 3}))
    records = simulate(build_plan(scenario), TABLE_ENGINE).records
    return _jittered(records, np.random.default_rng(1), sd=0.0003)


@pytest.fixture(scope="module")
def table_calibration(table_measured: list[RequestRecord]) -> Calibration:
    start = dataclasses.replace(TABLE_ENGINE, cost=StepCost(), overhead_s=0.0)
    return calibrate(table_measured, start)


def test_calibration_of_a_bending_engine_chooses_and_recovers_the_table(
    table_calibration: Calibration,
) -> None:
    cal = table_calibration
    assert cal.fit.chosen == "table", cal.fit.candidates
    cost = cal.engine.cost
    assert isinstance(cost, DecodeTableCost)
    for batch in range(int(cost.batch[0]), int(cost.batch[-1]) + 1):
        assert cost.decode_s(batch) == pytest.approx(CONCAVE.decode_s(batch), rel=0.04)
    assert cal.engine.overhead_s == pytest.approx(TABLE_ENGINE.overhead_s, abs=0.001)


def test_the_chosen_model_and_its_candidates_round_trip(
    table_calibration: Calibration, tmp_path: Path
) -> None:
    write_calibration(tmp_path / "cal.json", table_calibration)
    back = read_calibration(tmp_path / "cal.json")
    assert back.engine == table_calibration.engine
    assert back.fit.chosen == "table" and back.fit.model == table_calibration.engine.cost
    assert back.fit.candidates == pytest.approx(table_calibration.fit.candidates)
    draws = back.fit.sample_costs(np.random.default_rng(0), 20)
    tables = [c for c, _ in draws if isinstance(c, DecodeTableCost)]
    assert len(tables) == 20  # error bars are drawn around the chosen model
    spread = np.std([c.decode_s(8) for c in tables]) / CONCAVE.decode_s(8)
    assert 0 < spread < 0.05


def test_the_table_back_tests_closer_than_the_linear_fit(
    table_measured: list[RequestRecord], table_calibration: Calibration
) -> None:
    """On the engine that bends, the chosen table predicts latency better than the linear fit
    calibration also made."""
    cal = table_calibration
    linear = dataclasses.replace(
        cal,
        engine=cal.engine.with_cost(cal.fit.linear()),
        fit=dataclasses.replace(cal.fit, model=None),
    )
    errors = {}
    for name, c in (("table", cal), ("linear", linear)):
        rows, _ = backtest(table_measured, c, draws=2)
        errors[name] = {
            (r.metric, r.quantile): abs(r.error_pct) for r in rows if r.basis == "replay"
        }
    assert errors["table"][("e2e", 50)] < 3 and errors["table"][("e2e", 95)] < 3
    # the inter-token gap is one step at the run's batch mix: where the line misses the bend
    assert errors["table"][("itl", 50)] < 0.5 * errors["linear"][("itl", 50)]


@pytest.mark.parametrize("cost", [CONCAVE, ROOFLINE, LINEAR, StepCost()])
def test_every_cost_model_round_trips_through_json(cost: CostModel) -> None:
    engine = EngineConfig(cost=cost)
    assert EngineConfig.from_dict(json.loads(json.dumps(engine.to_dict()))) == engine


def test_calibration_recovers_a_context_term_from_the_steps_it_recovers() -> None:
    """Each recovered step's context (prompt and tokens so far, summed over its requests) is
    the one the simulated engine priced: its per-token cost comes back."""
    law = StepCost(0.010, 0.0006, 6e-5, 3e-6)
    engine = dataclasses.replace(TABLE_ENGINE, cost=law)
    scenario = parse_scenario(scenario_dict(traffic={"rate": 9, "duration_s": 40, "seed": 4}))
    records = simulate(build_plan(scenario), engine).records
    measured = _jittered(records, np.random.default_rng(2), sd=0.0003)
    cal = calibrate(measured, dataclasses.replace(engine, cost=StepCost(), overhead_s=0.0))
    assert cal.fit.chosen == "linear+context", cal.fit.candidates
    assert isinstance(cal.engine.cost, StepCost) and cal.engine.cost.per_context_token_s > 0
    for field in ("base_s", "per_decode_seq_s", "per_prefill_token_s", "per_context_token_s"):
        assert getattr(cal.engine.cost, field) == pytest.approx(getattr(law, field), rel=0.05)
