"""Argument types and the flags several commands share, and the files they name, loaded with
errors that say what to do (BadInput, exit 2)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from scenarios.corpora import CORPUS_DIR_ENV, env_corpus_dir, with_corpus_dir
from scenarios.spec import Scenario, ScenarioError, check_base_url, load_scenario
from scenarios.target_spec import CredentialInUrl
from surgecast.cli.exits import BadInput
from surgecast.console import warn

if TYPE_CHECKING:
    from simulator.fit.calibrate import Calibration


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text!r}")
    return value


def scales(text: str) -> list[float]:
    parts = text.split(",")
    if not text.strip() or any(not x.strip() for x in parts):
        raise argparse.ArgumentTypeError(f"expected numbers like 10,100,1000, got {text!r}")
    return [positive(x) for x in parts]


def scheduler_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the forecast's simulations on the Dask cluster whose scheduler is at ADDRESS "
        "(tcp://host:8786; started with `dask scheduler`, its workers with `dask worker "
        "ADDRESS`, each with this surgecast installed); default: $DASK_SCHEDULER_ADDRESS, else "
        "a local cluster of forecast.workers processes",
    )


def fraction(text: str) -> float:
    value = positive(text)
    if not 0.5 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0.5, 1), got {text!r}")
    return value


def url(text: str) -> str:
    try:
        return check_base_url(text)
    except CredentialInUrl as e:  # never repeated: it is the secret
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; got {text!r}") from None


def port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: any free), got {text!r}")
    return int(text)


def count(text: str, least: int = 1) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < least:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {shown!r}")
    return int(text)


def count0(text: str) -> int:
    return count(text, least=0)


MAX_PROCESSES = 256  # generator processes on one host: each is a Python process of ~100 MB


def processes(text: str) -> int:
    n = count(text)
    if n > MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_PROCESSES} processes on one host, got {n} (spread a larger run over "
            "hosts with --master and `surgecast worker`)"
        )
    return n


def limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-num-seqs",
        type=count,
        help="the target's batch limit (vLLM --max-num-seqs), if known",
    )
    p.add_argument(
        "--kv-cache-tokens", type=count, help="the target's KV-cache capacity in tokens, if known"
    )


def duration_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=positive,
        metavar="SECONDS",
        help="override traffic.duration_s (k6's --duration), e.g. a short smoke run",
    )


def bootstrap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resamples", type=count, default=2000, help="bootstrap resamples (default 2000)"
    )
    p.add_argument(
        "--confidence", type=fraction, default=0.95, help="interval confidence (default 0.95)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def corpus_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus-dir",
        metavar="DIR",
        help=f"folder of public corpora (default: ${CORPUS_DIR_ENV}): a corpus with in_corpus_dir "
        "reads that file under DIR instead of its path (the catalog: the project's own sets)",
    )


def with_corpora(path: str, flag: str | None = None) -> Scenario:
    """load_scenario with the corpus folder of --corpus-dir, else of $SURGECAST_CORPUS_DIR."""
    if not flag:
        return load_scenario(path, env_corpus_dir())
    scenario = load_scenario(path)
    moved = with_corpus_dir(scenario, Path(flag), "--corpus-dir")
    if moved is scenario:  # nothing in it reads the folder: say so
        warn([f"--corpus-dir: no corpus of {path} has in_corpus_dir; {flag} is not read"])
    return moved


def checked_scenario(path: str, corpus_dir: str | None = None) -> Scenario:
    """load_scenario (`with_corpora`), and the checks that need the simulator's catalog (the
    fleet's model and GPU), so a bad one stops a pipeline before it sends anything."""
    from simulator.replay.coldstart import load_seconds

    scenario = with_corpora(path, corpus_dir)
    try:
        load_seconds(scenario.fleet.cold_start, scenario.cost.gpus_per_replica)
    except ValueError as e:
        raise ScenarioError(path, [str(e)]) from None
    return scenario


def scenario_arg(a: argparse.Namespace) -> Scenario:
    """The scenario file, with --duration applied when given."""
    scenario = checked_scenario(a.scenario, getattr(a, "corpus_dir", None))
    duration = getattr(a, "duration", None)
    if duration is None:
        return scenario
    if duration > 86400:
        raise BadInput(f"--duration: at most 86400 s, got {duration:g}")
    traffic = scenario.traffic.model_copy(update={"duration_s": duration})
    return scenario.model_copy(update={"traffic": traffic})


def calibration_arg(path: str) -> Calibration:
    from surgecast.contracts import ContractError, read_calibration

    if not Path(path).is_file():
        raise BadInput(f"{path}: calibration file not found (make one with surgecast calibrate)")
    try:
        return read_calibration(Path(path))
    except ContractError as e:
        raise BadInput(f"not a usable calibration file: {e}") from None
