"""Predicting with a calibration: back-tests of measured runs, simulated runs of a scenario, and
capacity forecasts, each written into a run folder."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from scenarios.metrics import summarize_run
from scenarios.plan import build_plan
from scenarios.records import write_records
from scenarios.spec import Scenario, ScenarioError, parse_scenario
from simulator.deploy.catalog import load_catalog
from simulator.fast.warm import warm
from simulator.fit.backtest import BacktestRow, backtest, backtest_warnings, predict_plan
from simulator.fit.calibrate import Calibration
from simulator.forecast import footprint
from simulator.forecast.deployments import Choice, DeploymentSearch, Option, options
from simulator.forecast.search import (
    Evaluation,
    ForecastConfig,
    Forecaster,
    ForecastPoint,
    Progress,
)
from simulator.replay.coldstart import load_seconds
from simulator.replay.sim import simulate
from surgecast.calibration import in_sample
from surgecast.cli.exits import BadInput
from surgecast.console import Say, say_stderr
from surgecast.contracts import write_backtest, write_forecast, write_summary
from surgecast.live_run import RunOutcome
from surgecast.progressbar import ForecastBar
from surgecast.rundir import RunFolder


def backtest_run(folder: RunFolder, calibration: Calibration) -> list[BacktestRow]:
    """Predict the folder's measured run with `calibration`, from its own send times and from
    its scenario's plan; saves and returns the rows."""
    warm(say_stderr)
    records = folder.records()
    rows, result = backtest(records, calibration)
    scenario = _scenario_of(folder)
    if scenario is not None:
        rows += predict_plan(records, scenario, calibration)
    write_records(folder.simulated, result.records)
    write_backtest(
        folder.backtest, rows, backtest_warnings(calibration, rows), in_sample(folder, calibration)
    )
    return rows


def _scenario_of(folder: RunFolder) -> Scenario | None:
    """The scenario a measured run's plan was drawn from, as its run.json keeps it (None: not
    there or no longer valid, a simulated run, or a plan given to the run, as a staircase is)."""
    meta = folder.meta()
    if meta.source != "measured" or meta.plan != "scenario":
        return None
    base = Path(meta.scenario_file).resolve().parent if meta.scenario_file else None
    try:
        return parse_scenario(meta.scenario, str(folder.run_json), base)
    except ScenarioError:
        return None


def forecast_scenario(
    scenario: Scenario,
    calibration: Calibration,
    scales: Sequence[float],
    say: Say = say_stderr,
    scheduler: str | None = None,
) -> list[ForecastPoint]:
    """Forecast at each scale, with today's traffic (x1) first as the baseline; `scheduler`: a
    Dask scheduler's address, whose workers run the simulations."""
    scales = sorted({1.0, *scales})
    warm(say)
    say(f"forecast: fewest replicas meeting every SLO at x{', x'.join(f'{s:g}' for s in scales)}")
    bar = ForecastBar(scales)
    config = ForecastConfig.of(scenario, scheduler)
    forecaster = Forecaster(scenario, calibration, config, progress=bar)
    c = forecaster.config
    say(
        f"  x1 is {forecaster.base_rate:.3g} req/s; each fleet: {c.seeds} seeds of "
        f"{c.duration_s:g} s simulated, load under {c.max_load:.0%} of saturation "
        f"({forecaster.replica_capacity:.3g} req/s a replica), "
        f"${scenario.cost.gpu_hour_usd:g}/GPU-hour x {scenario.cost.gpus_per_replica} per replica"
    )
    try:
        return forecaster.run(scales)
    finally:
        bar.close()


def save_forecast(folder: RunFolder, points: Sequence[ForecastPoint]) -> None:
    write_forecast(folder.forecast, list(points))


def simulate_scenario(
    scenario: Scenario,
    scenario_file: str,
    calibration: Calibration,
    *,
    scale: float = 1.0,
    replicas: int = 1,
    out: str | Path | None = None,
) -> RunOutcome:
    """The scenario's plan through the calibrated model; a run folder like a measured one."""
    try:
        load_seconds(scenario.fleet.cold_start, scenario.cost.gpus_per_replica)
    except ValueError as e:
        raise ScenarioError(scenario_file, [str(e)]) from None
    if scenario.fleet.autoscaler is not None:  # an autoscaler starts from its own count
        replicas = scenario.fleet.autoscaler.starting_replicas
    warm(say_stderr)
    folder = RunFolder.new(scenario.name, out)
    plan = calibration.tokens.apply(build_plan(scenario, rate_scale=scale), scenario.traffic.seed)
    tokens = sum(s.max_tokens for s in plan)  # each one's time is recorded
    footprint.check(len(plan), replicas, tokens, footprint.available_bytes(), "this machine")
    result = simulate(
        plan,
        calibration.engine,
        replicas=replicas,
        timeout_s=scenario.target.timeout_s,
        fleet=scenario.fleet,
        gpus_per_replica=scenario.cost.gpus_per_replica,
    )
    write_records(folder.requests, result.records)
    summary = summarize_run(result.table, scenario)
    write_summary(folder.summary, summary)
    target = {
        "kind": "simulated",
        "replicas": replicas,
        "scale": scale,
        "core": result.core,
        "engine": calibration.engine.to_dict(),
        "fleet": {
            "rejected": result.rejected,
            "timeouts": result.timeouts,
            "abandoned": result.abandoned,
            **asdict(result.fleet),
        },
    }
    folder.begin(
        scenario,
        scenario_file,
        len(plan),
        target,
        status="finished",
        source="simulated",
        validity={"valid": True, "reasons": []},
        slos_passed=summary.slos_passed,
    )
    return RunOutcome(folder, summary, [])


def choose_deployment(
    scenario: Scenario,
    calibration: Calibration,
    scales: Sequence[float],
    say: Say = say_stderr,
    exhaustive: bool = False,
    scheduler: str | None = None,
) -> list[Choice]:
    """The cheapest deployment and fleet meeting every SLO at each scale, among the scenario's
    `deployments` options, carried from the deployment the calibration measured."""
    spec = scenario.deployments
    assert spec is not None
    catalog = load_catalog(spec.catalog)
    try:
        for d in (spec.measured, *spec.combinations()):
            catalog.model(d.model), catalog.gpu(d.gpu)
            catalog.number_format(d.weights), catalog.number_format(d.kv_cache)
    except KeyError as e:
        raise BadInput(f"deployments: {e.args[0]}") from None
    candidates = options(spec.combinations(), catalog)
    fitting = sum(o.memory.fits for o in candidates)
    say(
        f"deployments: {len(candidates)} options ({fitting} fit), carried from "
        f"{spec.measured.label()}, at x{', x'.join(f'{s:g}' for s in scales)}"
    )
    warm(say)
    started = time.monotonic()

    def progress(o: Option) -> Progress:
        def said(scale: float, e: Evaluation) -> None:
            verdict = "meets the SLOs" if e.passed else "fails"
            say(
                f"  x{scale:g} {o.label}: {e.replicas:,} replicas {verdict}"
                f" ({time.monotonic() - started:.0f} s)"
            )

        return said

    search = DeploymentSearch(
        scenario,
        calibration,
        spec.measured,
        candidates,
        catalog,
        ForecastConfig.of(scenario, scheduler),
        progress=progress,
        transfer_error=spec.transfer_error,
    )
    return search.run(list(scales), exhaustive)
