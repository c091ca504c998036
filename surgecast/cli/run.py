"""Commands that send: `run` (a load test), `pipeline` (the whole job), `worker` (a generator
process of a scaled-out run) and `plan` (what a run would send, without sending it)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from surgecast.cli.args import (
    corpus_dir_flag,
    count,
    count0,
    duration_flag,
    limit_flags,
    port,
    positive,
    processes,
    scales,
    scheduler_flag,
)
from surgecast.cli.args import scenario_arg as load_scenario_arg
from surgecast.cli.engines import engine_flags, launcher_for, target_flag
from surgecast.cli.exits import EXIT_INVALID, EXIT_OK, EXIT_SLO, EXIT_TERMINATED
from surgecast.console import out, say_stderr, warn

if TYPE_CHECKING:
    from scenarios.spec import Scenario
    from surgecast.live_run import RunOutcome
    from surgecast.rundir import RunFolder

Subparsers = argparse._SubParsersAction


def register(sub: Subparsers) -> None:
    _add_pipeline(sub)
    _add_run(sub)
    _add_worker(sub)
    _add_plan(sub)


def _add_pipeline(sub: Subparsers) -> None:
    s = sub.add_parser(
        "pipeline",
        help="run, calibrate, back-test, forecast and report in one go",
        description="The whole job on one scenario; prints the report's path.",
    )
    s.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    target_flag(
        s,
        "base URL of an OpenAI-compatible API, or llama-server or vllm to start one on "
        "loopback (default: scenario's, else the built-in reference target)",
    )
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")
    s.add_argument("--scales", type=scales, help="traffic scales to forecast, e.g. 10,100,1000")
    duration_flag(s)
    corpus_dir_flag(s)
    limit_flags(s)
    engine_flags(s)
    scheduler_flag(s)
    s.set_defaults(func=cmd_pipeline)


def _add_run(sub: Subparsers) -> None:
    s = sub.add_parser(
        "run",
        help="load-test a target with a scenario (via Locust: open loop, sessions, closed users)",
        description="Send the scenario's requests at their planned times and "
        "record every request to <out>/requests.jsonl.",
    )
    s.add_argument("scenario", help="scenario YAML (see scenarios/chatbot.yaml)")
    target_flag(
        s,
        "base URL, e.g. http://127.0.0.1:8000/v1, or llama-server or vllm to start one on "
        "loopback (llama-server's batch limits are read from /props, vLLM's KV cache from "
        "/metrics)",
    )
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")
    duration_flag(s)
    corpus_dir_flag(s)
    s.add_argument("--no-report", action="store_true", help="skip index.html and summary.md")
    s.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    engine_flags(s)
    _scale_out_flags(s)
    s.set_defaults(func=cmd_run)


def _add_worker(sub: Subparsers) -> None:
    s = sub.add_parser(
        "worker",
        help="a generator process for a `surgecast run --master` elsewhere",
        description="Connect to a master, send the share of its plan it assigns at the planned "
        "times, and send every record back. The scenario comes from the master; trace and corpus "
        "files must be at the same paths here. An API key comes from this host's environment.",
    )
    s.add_argument(
        "--master-host", metavar="HOST", default="127.0.0.1", help="the master's address"
    )
    s.add_argument(
        "--master-port", metavar="PORT", type=port, default=5557, help="its port (default 5557)"
    )
    # a master's own local workers: the master's pid, to stop when it dies (any platform)
    s.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    # and the file in the run folder it appends its records to (scenarios.record_files)
    s.add_argument("--records", type=Path, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_worker)


def _add_plan(sub: Subparsers) -> None:
    s = sub.add_parser(
        "plan",
        help="show what a scenario will send, without sending it",
        description="Build the scenario's plan and print, per persona, sessions, rates, "
        "lengths and the measured messiness of its text beside the settings.",
    )
    s.add_argument("scenario", help="scenario YAML (see scenarios/chatbot.yaml)")
    s.add_argument("--scale", type=positive, default=1.0, help="multiply the arrival rate")
    duration_flag(s)
    corpus_dir_flag(s)
    s.add_argument("--samples", type=count0, default=0, help="print N example prompts a persona")
    s.add_argument(
        "--chars-per-token",
        type=positive,
        default=4.0,
        help="size prompts with this ratio (a run learns the target's own; default 4.0)",
    )
    s.set_defaults(func=cmd_plan)


def _scale_out_flags(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group(
        "scale-out (Locust's master/worker channel; the plan is split by session, each request "
        "sent once at its planned time, every record written here)"
    )
    g.add_argument(
        "--processes",
        metavar="N",
        type=processes,
        default=1,
        help="generator processes on this host (default 1: this one)",
    )
    g.add_argument(
        "--master",
        action="store_true",
        help="also wait for --expect-workers remote workers (`surgecast worker --master-host`)",
    )
    g.add_argument(
        "--expect-workers", metavar="N", type=count, default=1, help="with --master (default 1)"
    )
    g.add_argument(
        "--master-bind-host",
        metavar="HOST",
        default="127.0.0.1",
        help="interface the master listens on (default 127.0.0.1; * for every one)",
    )
    g.add_argument(
        "--master-bind-port",
        metavar="PORT",
        type=port,
        default=0,
        help="default: 5557 with --master, else a free one",
    )
    g.add_argument(
        "--expect-workers-max-wait",
        metavar="SECONDS",
        type=positive,
        default=60.0,
        help="seconds to wait for the workers to connect (default 60)",
    )


def run_exit(outcome: RunOutcome) -> int:
    """Print a run's summary tables and why it is invalid; its exit code."""
    from surgecast.tables import summary_tables

    out(summary_tables(outcome.summary))
    for reason in outcome.reasons:
        say_stderr(f"run invalid: {reason}")
    if outcome.interrupted:
        return outcome.interrupted
    if not outcome.valid:
        return EXIT_INVALID
    return EXIT_OK if outcome.summary.slos_passed else EXIT_SLO


def cmd_run(a: argparse.Namespace) -> int:
    from loadgen.send import ScaleOut
    from surgecast.live_run import run_load, write_report
    from surgecast.report import render

    scenario = load_scenario_arg(a)
    scale = ScaleOut(
        processes=a.processes,
        remote=a.expect_workers if a.master else 0,
        bind_host=a.master_bind_host,
        bind_port=a.master_bind_port or (5557 if a.master else 0),
        connect_timeout_s=a.expect_workers_max_wait,
    )
    launcher = launcher_for(a, scenario)
    outcome = run_load(scenario, a.scenario, launcher, out=a.out, progress=not a.quiet, scale=scale)
    if not a.no_report:
        out(f"report: {write_report(outcome.folder, render)}")
    out(f"records: {outcome.folder.requests}")
    return run_exit(outcome)


def cmd_worker(a: argparse.Namespace) -> int:
    from loadgen.worker import serve_worker

    return serve_worker(a.master_host, a.master_port, parent_pid=a.parent_pid, records=a.records)


def cmd_plan(a: argparse.Namespace) -> int:
    from loadgen.sizing import SizedPrompts
    from scenarios.plan import build_plan
    from surgecast.planview import (
        RENDERED_PER_PERSONA,
        messiness_table,
        plan_table,
        render_samples,
    )

    scenario = load_scenario_arg(a)
    plan = build_plan(scenario, rate_scale=a.scale)
    duration = scenario.traffic.duration_s
    own = [p.name for p in scenario.personas if p.arrival is not None]
    out(
        f"{scenario.name}: {len(plan)} requests planned over {duration:g} s; "
        f"{scenario.traffic.describe()} x{a.scale:g}"
        + (f" (personas with their own arrivals: {', '.join(own)})" if own else "")
        + f"; seed {scenario.traffic.seed}\n"
    )
    prompts = SizedPrompts(scenario, base_dir=scenario.base_dir)  # a bad corpus fails here
    prompts.chars_per_token = a.chars_per_token
    out(plan_table(scenario, plan, duration))
    samples = render_samples(prompts, plan)
    mess = messiness_table(prompts)
    if mess:
        first = f"each persona's first {RENDERED_PER_PERSONA} messages"
        out(f"\nmessiness of the rendered text ({first}):\n" + mess)
    for persona, texts in samples.items():
        for text in texts[: a.samples]:
            shown = text if len(text) <= 240 else text[:240] + f"... ({len(text):,} chars)"
            out(f"\n[{persona}] {shown!r}")
    return EXIT_OK


def cmd_pipeline(a: argparse.Namespace) -> int:
    """Run, then (when the run is valid) calibrate, back-test and forecast in its folder; the
    report shows whatever got done."""
    from surgecast.live_run import run_load, write_report
    from surgecast.report import render

    scenario = load_scenario_arg(a)
    outcome = run_load(scenario, a.scenario, launcher_for(a, scenario), out=a.out)
    code = run_exit(outcome)
    if outcome.valid:
        modelling = Modelling(a.max_num_seqs, a.kv_cache_tokens, a.scales, a.scheduler)
        code = _model_apart(modelling, scenario, outcome.folder) or code
    out(f"\nreport: {write_report(outcome.folder, render)}")
    return code


@dataclass(frozen=True)
class Modelling:
    """What the model step of a pipeline takes from its command line."""

    max_num_seqs: int | None
    kv_cache_tokens: int | None
    scales: list[float] | None
    scheduler: str | None


def _model_apart(m: Modelling, scenario: Scenario, folder: RunFolder) -> int | None:
    """`_model_the_run` in a fresh interpreter: the load run gevent-patched this one, and the
    forecast's Dask client needs real threads. The child (and its Dask workers) have a session
    of their own: this process, interrupted, stops it (SIGTERM) and is interrupted as ever."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = multiprocessing.get_context("spawn").Process(
        target=_model_child, args=(m, scenario, folder), name="surgecast-model"
    )
    child.start()
    try:
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
    code = child.exitcode or 0
    if code < 0:
        say_stderr(f"the model step died ({signal.Signals(-code).name}): nothing more was written")
        return EXIT_INVALID
    return code or None


def _model_child(m: Modelling, scenario: Scenario, folder: RunFolder) -> None:
    from loadgen.children import own_session
    from surgecast.cli.main import guarded
    from surgecast.interrupts import Terminated

    own_session()

    def command() -> int:
        try:
            return _model_the_run(m, scenario, folder) or 0
        except Terminated:  # stopped by the pipeline, which says why
            return EXIT_TERMINATED

    code = guarded(command)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as the entry leaves: no atexit hook (Dask's) fusses over a stopped cluster


def _model_the_run(m: Modelling, scenario: Scenario, folder: RunFolder) -> int | None:
    """Calibrate on the run, back-test it and forecast its scenario; EXIT_INVALID when the
    records cannot support a fit (nothing written), EXIT_SLO when the forecast misses one of
    the scenario's cost budgets, else None."""
    from simulator.fit.backtest import backtest_warnings
    from simulator.fit.calibrate import CalibrationError, fit_problems
    from surgecast.calibration import calibrate_runs
    from surgecast.cli.model import unusable, within_budgets
    from surgecast.contracts import write_calibration
    from surgecast.predict import backtest_run, forecast_scenario, save_forecast
    from surgecast.tables import backtest_table, calibration_table, forecast_table

    say_stderr("calibrating the engine model from the measured records")
    try:
        cal = calibrate_runs(
            [folder], max_num_seqs=m.max_num_seqs, kv_cache_tokens=m.kv_cache_tokens
        )
    except CalibrationError as e:
        return unusable([str(e)])
    out("\n" + calibration_table(cal))
    problems = fit_problems(cal.fit)
    if problems:
        return unusable(problems)
    write_calibration(folder.calibration, cal)
    rows = backtest_run(folder, cal)
    out(
        "\nback-test, in-sample (the model fitted on this run predicts it; "
        "`surgecast backtest` on other runs shows forecast error):\n" + backtest_table(rows)
    )
    warn(backtest_warnings(cal, rows))
    scales = m.scales or scenario.forecast.scales
    points = forecast_scenario(scenario, cal, scales, scheduler=m.scheduler)
    save_forecast(folder, points)
    out("\n" + forecast_table(points))
    return None if within_budgets(scenario, points) else EXIT_SLO
