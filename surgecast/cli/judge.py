"""Commands that judge runs: `compare` (two sides with bootstrap intervals), `gate` (a CI
regression gate by the scenario's budgets and SLOs) and `report` (a run folder's HTML and
Markdown)."""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from scenarios.spec import Scenario, ScenarioError, validation_messages
from surgecast.cli.args import bootstrap_flags, corpus_dir_flag, duration_flag, scenario_arg, url
from surgecast.cli.exits import EXIT_INVALID, EXIT_OK, EXIT_SLO, BadInput
from surgecast.console import out, say_stderr, warn
from surgecast.files import write_whole

if TYPE_CHECKING:
    from surgecast.compare import Run

Subparsers = argparse._SubParsersAction


def register(sub: Subparsers) -> None:
    _add_compare(sub)
    _add_gate(sub)
    _add_report(sub)


def _add_compare(sub: Subparsers) -> None:
    s = sub.add_parser(
        "compare",
        help="compare candidate runs with baseline runs, with bootstrap intervals",
        description=textwrap.fill(
            "For p50/p95/p99 TTFT, ITL, TPOT and E2E, throughput, goodput and error rate: the "
            "candidate's change against the baseline, absolute and relative, with a bootstrap "
            "interval over blocks of requests (and over runs when a side has several: runs are "
            "resampled, then blocks), and whether it is significant (the interval excludes 0). "
            "Measured and simulated run folders alike. Writes compare.md and compare.png (both "
            "sides' latency CDFs) into --out.",
            79,
        ),
        epilog="examples: surgecast compare reports/base reports/new\n"
        "  surgecast compare --baseline reports/b1 reports/b2 --candidate reports/c1 reports/c2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("runs", nargs="*", metavar="RUN_DIR", help="BASELINE_RUN CANDIDATE_RUN")
    s.add_argument("--baseline", nargs="+", default=[], metavar="RUN_DIR", help="baseline runs")
    s.add_argument("--candidate", nargs="+", default=[], metavar="RUN_DIR", help="candidate runs")
    bootstrap_flags(s)
    s.add_argument(
        "--out", help="folder for compare.md and compare.png (default: reports/compare-ID)"
    )
    s.set_defaults(func=cmd_compare)


def _add_gate(sub: Subparsers) -> None:
    s = sub.add_parser(
        "gate",
        help="fail a CI job when the candidate regressed beyond the scenario's budgets",
        description="Judge a candidate against a baseline by the scenario's `regressions:` "
        "budgets (k6-like: ttft: 'p(95) regress < 10%') and its SLOs. A budget fails only when "
        "its regression is significant (bootstrap interval wholly on the worse side of 0) and "
        "over budget. Without --candidate, the scenario is run now (as `surgecast run` does, "
        "against --target or the built-in reference target) and that run is the candidate. "
        "Writes junit.xml, gate.md and compare.png into --out, and appends gate.md to "
        "$GITHUB_STEP_SUMMARY when it is set.",
        epilog="Exit codes: 0 pass, 99 a budget or SLO failed, 3 a run is invalid, 2 bad input.",
    )
    s.add_argument(
        "scenario",
        nargs="?",
        help="scenario YAML with the budgets (default: the candidate run's own scenario)",
    )
    s.add_argument("--baseline", nargs="+", required=True, metavar="RUN_DIR", help="baseline runs")
    s.add_argument(
        "--candidate",
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="candidate runs (default: run the scenario now)",
    )
    s.add_argument(
        "--target", type=url, help="base URL to run against (default: the scenario's target)"
    )
    duration_flag(s)
    corpus_dir_flag(s)
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument(
        "--out", help="folder for junit.xml, gate.md, compare.png (default: reports/gate-ID)"
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    s.set_defaults(func=cmd_gate)


def _add_report(sub: Subparsers) -> None:
    s = sub.add_parser(
        "report",
        help="(re)render index.html and summary.md of a run folder",
        description="Render a run folder's report again from its files (after a back-test "
        "or a forecast was added to it, say).",
    )
    s.add_argument("run_dir", help="a run folder (reports/<run-id>)")
    s.add_argument(
        "--baseline",
        metavar="RUN_DIR",
        help="a baseline run folder: the verdict says whether this run regressed against it "
        "(bootstrap intervals, as `surgecast compare`), with both latency distributions",
    )
    s.set_defaults(func=cmd_report)


def out_dir(given: str | None, prefix: str) -> Path:
    from surgecast.rundir import new_run_id

    path = Path(given) if given else Path("reports") / new_run_id(prefix)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_folders(paths: Sequence[str], side: str) -> list[Run]:
    from surgecast.gate import load_run
    from surgecast.rundir import RunFolderError

    runs = []
    for path in paths:
        try:
            runs.append(load_run(Path(path)))
        except (FileNotFoundError, RunFolderError) as e:
            raise BadInput(f"{side} {path}: {e}") from None
    return runs


def run_scenario(path: str) -> Scenario:
    from surgecast.gate import run_scenario
    from surgecast.rundir import RunFolderError

    try:
        return run_scenario(Path(path))
    except (FileNotFoundError, RunFolderError) as e:
        raise BadInput(str(e)) from None


def cmd_compare(a: argparse.Namespace) -> int:
    from surgecast.compare import HEADERS, change_rows, compare, distribution_plot, goodput_limits
    from surgecast.tables import markdown

    if a.runs and (a.baseline or a.candidate):
        raise BadInput("give BASELINE_RUN CANDIDATE_RUN or --baseline/--candidate, not both")
    base, cand = (a.runs[:1], a.runs[1:]) if a.runs else (a.baseline, a.candidate)
    if a.runs and len(a.runs) != 2:
        raise BadInput(
            f"expected two run folders (BASELINE_RUN CANDIDATE_RUN), got {len(a.runs)}; for "
            "several runs a side use --baseline A B --candidate C D"
        )
    if not base or not cand:
        raise BadInput("give a baseline and a candidate: surgecast compare BASELINE CANDIDATE")
    baseline, candidate = run_folders(base, "baseline"), run_folders(cand, "candidate")
    try:  # only for goodput's SLO limits: a run.json without a valid scenario goes without
        scenario = run_scenario(cand[0])
    except ScenarioError:
        scenario = None
    limits = goodput_limits(scenario.thresholds()) if scenario else {}
    result = compare(
        baseline,
        candidate,
        limits=limits,
        confidence=a.confidence,
        resamples=a.resamples,
        seed=a.seed,
    )
    table = markdown(HEADERS, change_rows(result))
    folder = out_dir(a.out, "compare")
    note = (
        f"{a.confidence:.0%} bootstrap intervals, {a.resamples} resamples"
        + (" (runs, then requests)" if len(baseline) > 1 or len(candidate) > 1 else "")
        + ("; goodput counts every answered request (no SLOs)" if not limits else "")
    )
    write_whole(folder / "compare.md", f"{table}\n\n{note}\n")
    plot = distribution_plot(result, folder / "compare.png")
    out(f"{table}\n\n{note}\nplot: {plot}")
    return EXIT_OK


def workload_changes(scenario: Scenario, runs: Sequence[str]) -> list[str]:
    """A warning for each baseline run whose traffic or workload differs from the scenario's:
    the gate would then measure that change along with any regression."""
    warnings = []
    for path in runs:
        try:
            theirs = run_scenario(path)
        except ScenarioError:
            continue
        for section in ("traffic", "workload", "session", "personas"):
            if getattr(theirs, section) != getattr(scenario, section):
                warnings.append(
                    f"baseline {path} was run with another {section} section than the "
                    "scenario gated now: the comparison includes that change"
                )
    return warnings


def cmd_gate(a: argparse.Namespace) -> int:
    from surgecast.compare import distribution_plot
    from surgecast.gate import gate, junit_cases, summary_markdown
    from surgecast.junit import write_junit
    from surgecast.rundir import InvalidRun

    started = time.monotonic()
    if not a.candidate and not a.scenario:
        raise BadInput("give the SCENARIO to run now, or --candidate RUN_DIR")
    if a.candidate and a.target:
        raise BadInput("--target is for running the scenario now, not with --candidate")
    scenario = scenario_arg(a) if a.scenario else run_scenario(a.candidate[0])
    if not scenario.regressions.budgets() and not scenario.thresholds():
        raise BadInput(
            "the scenario has no regressions: budgets and no slos: add, e.g., "
            "regressions: {ttft: 'p(95) regress < 10%', e2e: 'p(95) regress < 10%'}"
        )
    warn(workload_changes(scenario, a.baseline))
    try:
        baseline = run_folders(a.baseline, "baseline")
        candidate = run_folders(a.candidate, "candidate")
    except InvalidRun as e:  # judged nothing; CI still gets its report
        return _gate_invalid(out_dir(a.out, "gate"), [str(e)], time.monotonic() - started)
    folder = out_dir(a.out, "gate")
    if not candidate:
        from surgecast.live_run import run_load
        from targets.reference_launch import url_or_reference

        launcher = url_or_reference(a.target, scenario)
        outcome = run_load(
            scenario, a.scenario, launcher, out=folder / "candidate", progress=not a.quiet
        )
        if not outcome.valid:
            return _gate_invalid(folder, outcome.reasons, time.monotonic() - started)
        candidate = run_folders([str(outcome.folder.path)], "candidate")
    result = gate(scenario, baseline, candidate, seed=a.seed)
    md = summary_markdown(result)
    write_junit(
        folder / "junit.xml", "surgecast-gate", junit_cases(result), time.monotonic() - started
    )
    distribution_plot(result.comparison, folder / "compare.png")
    _gate_summary(folder, md)
    out(md)
    written = {"junit": "junit.xml", "summary": "gate.md", "plot": "compare.png"}
    out("\n".join(f"{what}: {folder / name}" for what, name in written.items()))
    return EXIT_OK if result.passed else EXIT_SLO


def _gate_summary(folder: Path, md: str) -> None:
    """gate.md, and the CI step's summary ($GITHUB_STEP_SUMMARY) when there is one."""
    write_whole(folder / "gate.md", md)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")


def _gate_invalid(folder: Path, reasons: Sequence[str], seconds: float) -> int:
    """A gate that could not judge: a run cannot be trusted. It says why in junit.xml and
    gate.md (a CI job's report finds them) and exits 3."""
    from surgecast.junit import Case, write_junit

    for reason in reasons:
        say_stderr(f"run invalid: {reason}")
    why = "; ".join(reasons)
    case = Case("surgecast.gate.validity", "the runs can be trusted", f"run invalid: {why}")
    write_junit(folder / "junit.xml", "surgecast-gate", [case], seconds)
    md = "### surgecast gate: INVALID (nothing judged)\n\n" + "".join(
        f"- run invalid: {r}\n" for r in reasons
    )
    _gate_summary(folder, md)
    out(md)
    return EXIT_INVALID


def cmd_report(a: argparse.Namespace) -> int:
    from scenarios.records import RecordsError
    from surgecast.report import render
    from surgecast.rundir import RunFolder, RunFolderError

    folder = RunFolder(Path(a.run_dir))
    baseline = RunFolder(Path(a.baseline)) if a.baseline else None
    try:
        html, md = render(folder, baseline)
    except (FileNotFoundError, RecordsError) as e:
        raise BadInput(str(e)) from None
    except RunFolderError as e:
        raise BadInput(f"not a readable run folder: {e}") from None
    except ValidationError as e:  # the scenario kept in run.json
        problems = "; ".join(validation_messages(e, folder.meta().scenario))
        raise BadInput(f"{folder.run_json}: its scenario is not valid here: {problems}") from None
    except KeyError as e:
        raise BadInput(
            f"{a.run_dir} is not a readable run folder: {folder.run_json} has no field {e}"
        ) from None
    except (TypeError, ValueError) as e:
        raise BadInput(f"{a.run_dir} is not a readable run folder: {e}") from None
    out(f"report: {html}\nsummary: {md}")
    return EXIT_OK
