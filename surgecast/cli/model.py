"""Commands on the engine model: `calibrate` (fit it, or sweep a target and fit), `backtest`
(predict measured runs), `simulate` (a scenario in simulated time), `forecast` (replicas per
scale) and `schema` (the run folder's contracts)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from surgecast.cli.args import (
    calibration_arg,
    checked_scenario,
    corpus_dir_flag,
    count,
    limit_flags,
    positive,
    scales,
    scheduler_flag,
    url,
)
from surgecast.cli.exits import EXIT_INVALID, EXIT_OK, EXIT_SLO, BadInput
from surgecast.console import out, say_stderr, warn

if TYPE_CHECKING:  # the heavy packages load when a command runs, not for --help
    from scenarios.spec import Scenario
    from simulator.fit.calibrate import Calibration
    from simulator.forecast.search import ForecastPoint

Subparsers = argparse._SubParsersAction


def register(sub: Subparsers) -> None:
    _add_calibrate(sub)
    _add_backtest(sub)
    _add_simulate(sub)
    _add_forecast(sub)
    _add_schema(sub)


def _add_calibrate(sub: Subparsers) -> None:
    s = sub.add_parser(
        "calibrate",
        help="fit the engine model to measured runs, or sweep a target and fit",
        description="Fit step costs and overhead from run folders' records. With --scenario "
        "instead of run folders, measure first: short open-loop levels (Poisson at x0.25, "
        "x0.5, x1, x2 ... the scenario's rate) until one breaks its SLOs, errors climb, the "
        "target falls behind or the generator does, then bisection between the last level "
        "that kept up and the first that did not (--knee-steps), plus a staircase (a full batch "
        "of requests at once, as many as the target reports it batches, whose answers end 40 "
        "tokens apart: every batch size measured). No prompt repeats one the target may have "
        "cached. The fit takes the levels at or under half the knee's rate and the staircase; "
        "the others are back-tested, never seen by the fit; a forecast never loads a replica "
        "beyond the most the target served. A fit the data cannot support exits 3 and writes "
        "nothing.",
    )
    s.add_argument("runs", nargs="*", metavar="RUN_DIR")
    s.add_argument("-o", "--output", required=True, help="calibration JSON to write")
    s.add_argument("--scenario", help="sweep: the workload to send (instead of RUN_DIRs)")
    s.add_argument("--target", type=url, help="sweep: base URL (default: the scenario's target)")
    s.add_argument(
        "--level-duration",
        type=positive,
        default=30.0,
        help="sweep: seconds per level (default 30), longer where a level would have fewer "
        "than --level-requests (at most 4x)",
    )
    s.add_argument(
        "--level-requests",
        type=count,
        help="sweep: requests a level needs for its tail (default 200)",
    )
    s.add_argument(
        "--knee-steps",
        type=int,
        choices=range(0, 7),
        metavar="N",
        help="sweep: bisections to the knee, 0-6 (default 3: the knee within 2^(1/8))",
    )
    s.add_argument("--out", help="sweep: folder for the level runs (default: reports/sweep-ID)")
    corpus_dir_flag(s)
    limit_flags(s)
    s.add_argument("--no-backtest", action="store_true", help="skip back-testing the runs")
    s.set_defaults(func=cmd_calibrate)


def _add_backtest(sub: Subparsers) -> None:
    s = sub.add_parser(
        "backtest",
        help="predict measured runs with a calibration (held-out runs) and compare",
        description="For each run folder, predict the run twice with the calibrated model: from "
        "its own send times and served tokens (replay) and from its scenario's plan (plan). "
        "Prints p50/p95/p99 TTFT, ITL, E2E and throughput, measured against predicted, with the "
        "90% interval the measured value should fall in (from the fit's uncertainty, step-time "
        "drift between calibration runs, plan seeds and the run's own sampling noise). Give runs "
        "the calibration never saw. Writes backtest.json into each run folder.",
    )
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--calibration", required=True, help="calibration JSON (surgecast calibrate)")
    s.set_defaults(func=cmd_backtest)


def _add_simulate(sub: Subparsers) -> None:
    s = sub.add_parser(
        "simulate",
        help="run a scenario through a calibrated model",
        description="Replay the scenario's plan in simulated time.",
    )
    s.add_argument("scenario", help="scenario YAML whose plan is simulated")
    s.add_argument("--calibration", required=True, help="calibration JSON (surgecast calibrate)")
    s.add_argument("--scale", type=positive, default=1.0, help="multiply the arrival rate")
    s.add_argument("--replicas", type=count, default=1, help="fixed fleet size (default 1)")
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")
    s.set_defaults(func=cmd_simulate)


def _add_forecast(sub: Subparsers) -> None:
    s = sub.add_parser(
        "forecast",
        help="fewest replicas (and cheapest deployment) meeting the SLOs at each traffic scale",
        description="Search replica counts in simulation for each scale. A scenario with a "
        "`deployments` section also chooses between deployments (GPUs, models, formats, tensor "
        "parallelism; see `surgecast catalog` and `surgecast memory`): the cheapest meeting "
        "every SLO, the runners-up, and why each other option was not chosen.",
    )
    s.add_argument("scenario", help="scenario YAML (its traffic is today's: x1)")
    s.add_argument("--calibration", required=True, help="calibration JSON (surgecast calibrate)")
    s.add_argument("--scales", type=scales, help="default: the scenario's forecast.scales")
    s.add_argument("--json", dest="json_out", help="also write the forecast as JSON here")
    s.add_argument(
        "--html",
        metavar="FILE",
        help="deployments: also write the choice as a page, cost against p95 TTFT plotted",
    )
    s.add_argument(
        "--exhaustive",
        action="store_true",
        help="deployments: simulate every option that fits, not only those that could win "
        "(the whole Pareto front; slower)",
    )
    scheduler_flag(s)
    s.set_defaults(func=cmd_forecast)


def _add_schema(sub: Subparsers) -> None:
    s = sub.add_parser(
        "schema",
        help="write the JSON Schema of each run-folder document (run, summary, calibration, ...)",
        description="Export the JSON Schemas other tools can validate a run folder's documents "
        "against; each document names its schema and version in its `schema` field.",
    )
    s.add_argument("--out", default="schemas", help="folder to write them to (default: schemas)")
    s.set_defaults(func=cmd_schema)


def unusable(problems: Sequence[str]) -> int:
    """A fit that cannot be used: say why, write no calibration, exit 3."""
    for problem in problems:
        say_stderr(f"calibration unusable: {problem}")
    say_stderr("no calibration written")
    return EXIT_INVALID


def cmd_calibrate(a: argparse.Namespace) -> int:
    from scenarios.records import RecordsError
    from simulator.fit.backtest import backtest_warnings
    from simulator.fit.calibrate import CalibrationError, fit_problems
    from surgecast.calibration import calibrate_runs
    from surgecast.contracts import write_calibration
    from surgecast.predict import backtest_run
    from surgecast.rundir import RunFolder, RunFolderError
    from surgecast.tables import backtest_table, calibration_table

    output = Path(a.output)
    if not output.parent.is_dir():
        raise BadInput(f"-o {a.output}: folder {output.parent} does not exist")
    if a.scenario:
        if a.runs:
            raise BadInput("give run folders or --scenario (to sweep a target), not both")
        return _calibrate_sweep(a, output)
    if not a.runs:
        raise BadInput("give the run folders to fit, or --scenario to sweep a target")
    folders = [RunFolder(Path(r)) for r in a.runs]
    try:
        cal = calibrate_runs(
            folders, max_num_seqs=a.max_num_seqs, kv_cache_tokens=a.kv_cache_tokens
        )
    except (FileNotFoundError, RunFolderError, RecordsError) as e:
        raise BadInput(str(e)) from None
    except CalibrationError as e:  # readable runs that cannot support a fit
        return unusable([str(e)])
    out(calibration_table(cal))
    problems = fit_problems(cal.fit)
    if problems:
        return unusable(problems)
    write_calibration(output, cal)
    if not a.no_backtest:
        for f in folders:
            try:
                rows = backtest_run(f, cal)
            except ValueError as e:
                say_stderr(f"back-test of {f.path} skipped: {e}")
                continue
            out(f"\nback-test of {f.path}:\n" + backtest_table(rows))
            warn(backtest_warnings(cal, rows))
    out(f"calibration: {a.output}")
    return EXIT_OK


def _calibrate_sweep(a: argparse.Namespace, output: Path) -> int:
    from simulator.fit.calibrate import CalibrationError, fit_problems
    from surgecast.contracts import write_calibration
    from surgecast.rundir import new_run_id
    from surgecast.sweep import held_out_rows, level_rows, sweep
    from surgecast.tables import backtest_table, calibration_table, markdown
    from targets.reference_launch import url_or_reference

    scenario = checked_scenario(a.scenario, a.corpus_dir)
    folder = Path(a.out) if a.out else Path("reports") / new_run_id(f"sweep-{scenario.name}")
    launcher = url_or_reference(a.target, scenario)
    try:
        result = sweep(
            scenario,
            a.scenario,
            folder,
            launcher,
            level_s=a.level_duration,
            batch_limit=a.max_num_seqs,
            level_requests=a.level_requests,
            knee_steps=a.knee_steps,
        )
    except CalibrationError as e:  # no level the fit could use
        say_stderr(f"level runs: {folder}")
        return unusable([str(e)])
    headers = ["offered req/s", "served req/s", "TTFT p95 ms", "E2E p95 ms", "role", "knee"]
    out(markdown(headers, level_rows(result)))
    out("\n" + calibration_table(result.calibration))
    problems = fit_problems(result.calibration.fit)
    if problems:
        return unusable(problems)
    write_calibration(output, result.calibration)
    held = held_out_rows(result)
    if held:
        out("\nheld-out levels, predicted:\n" + backtest_table(held))
        inside = sum(r.inside for r in held)
        out(f"{inside} of {len(held)} measured values inside their 90% interval")
    out(f"level runs: {folder}\ncalibration: {output}")
    return EXIT_OK


def cmd_backtest(a: argparse.Namespace) -> int:
    from simulator.fit.backtest import BacktestRow, backtest_warnings
    from surgecast.calibration import in_sample
    from surgecast.predict import backtest_run
    from surgecast.rundir import RunFolder
    from surgecast.tables import backtest_table

    cal = calibration_arg(a.calibration)
    rows: list[BacktestRow] = []
    fitted: list[BacktestRow] = []
    for path in a.runs:
        folder = RunFolder(Path(path))
        try:
            own = backtest_run(folder, cal)
        except FileNotFoundError as e:
            raise BadInput(str(e)) from None
        except ValueError as e:
            raise BadInput(f"{path}: cannot back-test: {e}") from None
        seen = in_sample(folder, cal)
        label = " (IN-SAMPLE: the calibration was fitted on this run)" if seen else ""
        out(f"\nback-test of {path}{label}:\n" + backtest_table(own))
        warn(backtest_warnings(cal, own))
        (fitted if seen else rows).extend(own)
    if fitted:
        warn(
            [
                "some runs were fitted by this calibration: their rows show how well it fits, "
                "not how well it forecasts; the totals below leave them out"
            ]
        )
    inside = sum(r.inside for r in rows)
    errors = [abs(r.error_pct) for r in rows if r.metric in ("ttft", "e2e")]
    out(
        f"\nheld-out: {inside} of {len(rows)} measured values inside their 90% interval; "
        f"median |error| of TTFT and E2E quantiles "
        f"{statistics.median(errors) if errors else 0.0:.1f}%"
    )
    return EXIT_OK


def cmd_simulate(a: argparse.Namespace) -> int:
    from surgecast.cli.run import run_exit
    from surgecast.predict import simulate_scenario
    from surgecast.report import render

    scenario = checked_scenario(a.scenario)
    outcome = simulate_scenario(
        scenario,
        a.scenario,
        calibration_arg(a.calibration),
        scale=a.scale,
        replicas=a.replicas,
        out=a.out,
    )
    html, _ = render(outcome.folder)
    out(f"report: {html}")
    return run_exit(outcome)


def cmd_forecast(a: argparse.Namespace) -> int:
    from surgecast.predict import forecast_scenario
    from surgecast.tables import forecast_table

    scenario = checked_scenario(a.scenario)
    calibration = calibration_arg(a.calibration)
    scales = a.scales or scenario.forecast.scales
    if scenario.deployments is not None:
        return _choose_deployment(a, scenario, calibration, scales)
    if a.html or a.exhaustive:
        raise BadInput("--html and --exhaustive need a scenario with a `deployments` section")
    points = forecast_scenario(scenario, calibration, scales, scheduler=a.scheduler)
    out(forecast_table(points))
    within = within_budgets(scenario, points)
    if a.json_out:
        from surgecast.contracts import write_forecast

        write_forecast(Path(a.json_out), points)
    met = all(p.best is not None for p in points) and within
    return EXIT_OK if met else EXIT_SLO


def within_budgets(scenario: Scenario, points: Sequence[ForecastPoint]) -> bool:
    """The scenario's cost budgets judged on the forecast and printed (figure per scale, a
    cost alert for each one missed); False when one is missed."""
    from simulator.forecast.spend import judge_budgets
    from surgecast.tables import as_markdown, budget_blocks

    verdicts = judge_budgets(scenario.cost.budgets.thresholds(), points)
    if verdicts:
        out("\n" + as_markdown(budget_blocks(verdicts, points)))
    return all(v.passed for v in verdicts)


def _choose_deployment(
    a: argparse.Namespace, scenario: Scenario, calibration: Calibration, scales: list[float]
) -> int:
    from surgecast.choice_report import choice_json, write_choice_page
    from surgecast.files import write_whole
    from surgecast.predict import choose_deployment
    from surgecast.tables import as_markdown, deployment_blocks

    choices = choose_deployment(
        scenario, calibration, scales, exhaustive=a.exhaustive, scheduler=a.scheduler
    )
    out(as_markdown(deployment_blocks(choices)))
    written = []
    try:
        if a.json_out:
            text = json.dumps(choice_json(choices), indent=2) + "\n"
            written.append(write_whole(Path(a.json_out), text))
        if a.html:
            write_choice_page(choices, scenario.name, Path(a.html))
            written.append(Path(a.html))
    except OSError as e:
        raise BadInput(f"cannot write {e.filename}: {e.strerror or e}") from None
    for path in written:
        out(f"written: {path.resolve()}")
    return EXIT_OK if all(c.best is not None for c in choices) else EXIT_SLO


def cmd_schema(a: argparse.Namespace) -> int:
    from surgecast.contracts import json_schemas

    folder = Path(a.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            path = folder / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
            out(f"{name}: {path}")
    except OSError as e:
        raise BadInput(f"cannot write schemas to {folder}: {e.strerror or e}") from None
    return EXIT_OK
