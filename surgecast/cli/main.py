"""`surgecast`'s entry point: the parser each command group adds its commands to, and the one
map from what went wrong to the exit code.

Exit codes: 0 pass; 2 bad input (scenario, file, flag); 3 run invalid (generator fell behind,
target unreachable, an engine surgecast starts failed to build, start or stay up); 99 an SLO or
a regression budget failed; 130 interrupted (143 terminated; 141 the reader of its output
went away, as in `surgecast catalog | head`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from loadgen.client import MissingApiKey, MissingModel, TargetRefused, TargetUnreachable
from scenarios.corpora import CorpusError
from scenarios.plan_budget import PlanTooLarge
from scenarios.records import RecordsError
from scenarios.runfiles import UnreadableFile
from scenarios.spec import ScenarioError
from scenarios.trace_errors import TraceError
from simulator.deploy.catalog import CatalogError
from simulator.forecast.cluster import ClusterError
from simulator.forecast.footprint import FleetTooLarge
from surgecast import __version__
from surgecast.cli import deploy, judge, model, run, serve
from surgecast.cli.exits import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_TERMINATED,
    BadInput,
    Terminated,
)
from surgecast.console import say_stderr
from surgecast.contracts import ContractError
from surgecast.interrupts import stop_signals
from surgecast.rundir import InvalidRun, RunFolderError
from targets.errors import TargetError
from targets.reference_launch import TargetStartError

GROUPS = (
    run,
    model,
    deploy,
    judge,
    serve,
)  # each adds its commands, in the order --help lists them


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="surgecast",
        description="Load-test an OpenAI-compatible endpoint, calibrate a SimPy model of it from "
        "the measurements, and forecast capacity at 10x to 1000x today's traffic.",
        epilog="Exit codes: 0 pass, 2 bad input, 3 run invalid, 99 an SLO or a regression budget "
        "failed, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"surgecast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        args = parser().parse_args(argv)
        code: int = args.func(args)
        return code

    return guarded(command)


def guarded(command: Callable[[], int]) -> int:
    """`command()`'s exit code, or the one for what it raised (said in a line or a list)."""
    with stop_signals():  # SIGINT and SIGTERM raise where the command is (surgecast.interrupts)
        try:
            return command()
        except Terminated:
            say_stderr("terminated (SIGTERM): records written so far are kept")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            say_stderr("interrupted: records written so far are kept")
            return EXIT_INTERRUPTED
        except (ScenarioError, TraceError, CorpusError) as e:
            _problems(e)
            return EXIT_BAD_INPUT
        except CatalogError as e:
            say_stderr(f"error: invalid catalog ({len(e.problems)} problems):")
            for problem in e.problems:
                say_stderr(f"  {problem}")
            return EXIT_BAD_INPUT
        except (
            BadInput, MissingApiKey, MissingModel, FileExistsError, PlanTooLarge, ClusterError,
            FleetTooLarge,
        ) as e:  # fmt: skip
            say_stderr(f"error: {e}")
            return EXIT_BAD_INPUT
        except (RecordsError, RunFolderError, ContractError, UnreadableFile) as e:  # any reader's
            say_stderr(f"error: not a usable run folder: {e}")
            return EXIT_BAD_INPUT
        except (TargetUnreachable, TargetStartError) as e:
            say_stderr(f"error: target unreachable: {e}")
            return EXIT_INVALID
        except (InvalidRun, TargetRefused, TargetError) as e:
            say_stderr(f"error: {e}")
            return EXIT_INVALID


def _problems(e: ScenarioError | TraceError | CorpusError) -> None:
    """Every problem of a bad scenario, trace or corpus, each naming its file."""
    what = {ScenarioError: "scenario", TraceError: "trace", CorpusError: "corpus"}[type(e)]
    plural = "s" if len(e.problems) != 1 else ""
    say_stderr(f"error: invalid {what} {e.path} ({len(e.problems)} problem{plural}):")
    for problem in e.problems:
        say_stderr(f"  {problem if problem.startswith(e.path) else f'{e.path}: {problem}'}")
