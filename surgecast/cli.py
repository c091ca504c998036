"""The `surgecast` command line.

Exit codes: 0 pass; 2 bad input (scenario, file, flag); 3 run invalid (generator fell behind,
target unreachable, an engine surgecast starts failed to build, start or stay up); 99 an SLO or
a regression budget failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from loadgen.client import MissingApiKey, MissingModel, TargetRefused, TargetUnreachable
from scenarios.corpora import CORPUS_DIR_ENV, CorpusError, env_corpus_dir, with_corpus_dir
from scenarios.spec import (
    Scenario,
    ScenarioError,
    TargetFaults,
    TargetSpec,
    check_base_url,
    load_scenario,
    validation_messages,
)
from scenarios.traces import TraceError
from scenarios.traffic import PlanTooLarge
from surgecast import __version__
from surgecast.rundir import InvalidRun
from targets.llama_build import BuildError
from targets.llama_server import LlamaServerError
from targets.reference_launch import TARGET_KEY_ENV, TargetStartError
from targets.vllm_server import VllmServerError

if TYPE_CHECKING:
    from simulator.fit.calibrate import Calibration
    from surgecast.compare import Run
    from surgecast.pipeline import RunOutcome
    from targets.llama_launch import LlamaOptions
    from targets.process import ServerProcess
    from targets.vllm_launch import VllmOptions

LLAMA = "llama-server"  # --target value: surgecast starts llama-server on loopback
VLLM = "vllm"  # --target value: surgecast starts vLLM (CPU, `make vllm`) on loopback
ENGINES = (LLAMA, VLLM)

EXIT_OK, EXIT_BAD_INPUT, EXIT_INVALID, EXIT_SLO = 0, 2, 3, 99
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, SIGTERM


class BadInput(Exception):
    """A user error: printed as is, exit code 2."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text!r}")
    return value


def _scales(text: str) -> list[float]:
    parts = text.split(",")
    if not text.strip() or any(not x.strip() for x in parts):
        raise argparse.ArgumentTypeError(f"expected numbers like 10,100,1000, got {text!r}")
    return [_positive(x) for x in parts]


def _url(text: str) -> str:
    try:
        return check_base_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; got {text!r}") from None


def _target_url(text: str) -> str:
    return text if text in ENGINES else _url(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: any free), got {text!r}")
    return int(text)


def _count(text: str, least: int = 1) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < least:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {shown!r}")
    return int(text)


def _count0(text: str) -> int:
    return _count(text, least=0)


def _limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-num-seqs",
        type=_count,
        help="the target's batch limit (vLLM --max-num-seqs), if known",
    )
    p.add_argument(
        "--kv-cache-tokens", type=_count, help="the target's KV-cache capacity in tokens, if known"
    )


def _llama_flags(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Flags of the llama-server surgecast starts (defaults None in run/pipeline: see _llama)."""
    g = p.add_argument_group(
        "llama-server" if standalone else "llama-server (with --target llama-server)"
    )
    g.add_argument(
        "--slots",
        type=_count,
        default=4 if standalone else None,
        help="parallel sequences, batched continuously (-np; 1 is a FIFO server; default 4)",
    )
    g.add_argument(
        "--ctx",
        type=_count,
        default=4096 if standalone else None,
        help="KV-cache tokens in all, split evenly across the slots (-c; default 4096)",
    )
    g.add_argument(
        "--threads", type=_count, default=2 if standalone else None, help="CPU threads (default 2)"
    )
    if standalone:
        _model_size_flag(g, "tiny")
    g.add_argument(
        "--build",
        action="store_true",
        help="build llama-server if it is not cached (several minutes on 2 cores; "
        "or run `make llama-server` once)",
    )


def _model_size_flag(g: argparse._ActionsContainer, default: str | None) -> None:
    g.add_argument(
        "--model-size",
        choices=["tiny", "small"],
        default=default,
        help="random-weight model written locally: tiny (2 layers, hidden 256; fast) or small "
        "(8 layers, hidden 1024, ~100 M parameters; compute-bound, for calibration)"
        + ("" if default else "; with --target llama-server or vllm (default tiny)"),
    )


def _vllm_flags(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Flags of the vLLM server surgecast starts; `--vllm-` prefixed in run/pipeline."""
    g = p.add_argument_group("vLLM" if standalone else "vLLM (with --target vllm)")
    pre = "--" if standalone else "--vllm-"

    def flag(name: str, default: int | None, text: str) -> None:
        g.add_argument(
            pre + name,
            type=_count,
            default=default if standalone else None,
            help=f"{text} (default {default})" if default else text,
        )

    flag("max-num-seqs", 8, "sequences batched together (vLLM --max-num-seqs)")
    flag("max-num-batched-tokens", 2048, "tokens one step computes (--max-num-batched-tokens)")
    flag("kv-cache-gib", 1, "GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    flag("max-model-len", 4096, "prompt + output tokens of one request (--max-model-len)")
    flag("block-size", None, "tokens per KV block (default: vLLM's, 128 on CPU)")
    flag("stream-interval", 1, "tokens per streamed chunk (--stream-interval)")
    g.add_argument(
        pre + "no-prefix-caching",
        action="store_true",
        help="turn vLLM's automatic prefix caching off (on by default)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="surgecast",
        description="Load-test an OpenAI-compatible endpoint, calibrate a SimPy model of it from "
        "the measurements, and forecast capacity at 10x to 1000x today's traffic.",
        epilog="Exit codes: 0 pass, 2 bad input, 3 run invalid, 99 an SLO or a regression budget "
        "failed, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"surgecast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "pipeline",
        help="run, calibrate, back-test, forecast and report in one go",
        description="The whole job on one scenario; prints the report's path.",
    )
    s.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    s.add_argument(
        "--target",
        type=_target_url,
        help="base URL of an OpenAI-compatible API, or llama-server or vllm to start one on "
        "loopback (default: scenario's, else the built-in reference target)",
    )
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")
    s.add_argument("--scales", type=_scales, help="traffic scales to forecast, e.g. 10,100,1000")
    _duration_flag(s)
    _corpus_dir_flag(s)
    _limit_flags(s)
    _model_size_flag(s, None)
    _llama_flags(s)
    _vllm_flags(s)

    s = sub.add_parser(
        "run",
        help="load-test a target with a scenario (via Locust: open loop, sessions, closed users)",
        description="Send the scenario's requests at their planned times and "
        "record every request to <out>/requests.jsonl.",
    )
    s.add_argument("scenario", help="scenario YAML (see scenarios/chatbot.yaml)")
    s.add_argument(
        "--target",
        type=_target_url,
        help="base URL, e.g. http://127.0.0.1:8000/v1, or llama-server or vllm to start one on "
        "loopback (llama-server's batch limits are read from /props, vLLM's KV cache from "
        "/metrics)",
    )
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")
    _duration_flag(s)
    _corpus_dir_flag(s)
    s.add_argument("--no-report", action="store_true", help="skip index.html and summary.md")
    s.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    _model_size_flag(s, None)
    _llama_flags(s)
    _vllm_flags(s)
    g = s.add_argument_group(
        "scale-out (Locust's master/worker channel; the plan is split by session, each request "
        "sent once at its planned time, every record written here)"
    )
    g.add_argument(
        "--processes",
        metavar="N",
        type=_count,
        default=1,
        help="generator processes on this host (default 1: this one)",
    )
    g.add_argument(
        "--master",
        action="store_true",
        help="also wait for --expect-workers remote workers (`surgecast worker --master-host`)",
    )
    g.add_argument(
        "--expect-workers", metavar="N", type=_count, default=1, help="with --master (default 1)"
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
        type=_port,
        default=0,
        help="default: 5557 with --master, else a free one",
    )
    g.add_argument(
        "--expect-workers-max-wait",
        metavar="SECONDS",
        type=_positive,
        default=60.0,
        help="seconds to wait for the workers to connect (default 60)",
    )

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
        "--master-port", metavar="PORT", type=_port, default=5557, help="its port (default 5557)"
    )

    s = sub.add_parser(
        "plan",
        help="show what a scenario will send, without sending it",
        description="Build the scenario's plan and print, per persona, sessions, rates, "
        "lengths and the measured messiness of its text beside the settings.",
    )
    s.add_argument("scenario", help="scenario YAML (see scenarios/chatbot.yaml)")
    s.add_argument("--scale", type=_positive, default=1.0, help="multiply the arrival rate")
    _duration_flag(s)
    _corpus_dir_flag(s)
    s.add_argument("--samples", type=_count0, default=0, help="print N example prompts a persona")
    s.add_argument(
        "--chars-per-token",
        type=_positive,
        default=4.0,
        help="size prompts with this ratio (a run learns the target's own; default 4.0)",
    )

    s = sub.add_parser(
        "serve",
        help="start the reference target (OpenAI-compatible) on loopback",
        description="Serve the engine model over HTTP; Ctrl-C stops it.",
    )
    s.add_argument("--host", default="127.0.0.1", help="loopback by default (127.0.0.1)")
    s.add_argument("--port", type=_port, default=8000, help="default 8000; 0 picks a free port")
    s.add_argument("--model", default="surgecast-reference", help="the model name it serves")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--scenario", help="take the engine from this scenario's reference_target")
    src.add_argument("--calibration", help="serve a calibrated model (a live twin)")
    src.add_argument("--engine-json", help="engine config as JSON (as in a calibration file)")
    s.add_argument(
        "--faults-json",
        help='faults to inject, as JSON: {"reject_429": 0.1, "retry_after_s": 1, '
        '"error_500": 0.05, "seed": 0} (probabilities per request; default: the scenario\'s '
        "reference_target.faults, else none)",
    )
    s.add_argument(
        "--stream-interval",
        type=_count,
        help="tokens per streamed chunk, as vLLM's --stream-interval (default: the scenario's "
        "reference_target.stream_interval, else 1); with stream_options.continuous_usage_stats "
        "every chunk carries usage",
    )
    s.add_argument(
        "--slowdown",
        type=_positive,
        help="multiply every engine step's time, e.g. 1.1 for a 10%% slowdown (regression "
        "drills; default: the scenario's reference_target.slowdown, else 1)",
    )
    s.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="also stop when stdin closes (used when surgecast starts the target)",
    )
    s.add_argument(
        "--api-key",
        help=f"serve only requests that send this key (Authorization: Bearer KEY); default: "
        f"${TARGET_KEY_ENV} when set, else any request (a key given here shows in `ps`)",
    )
    s.add_argument(
        "--debug",
        action="store_true",
        help="serve /debug/requests: the target's own timing of every request, for tests and "
        "benchmarks (unauthenticated: off by default)",
    )
    s.add_argument(
        "--body-timeout",
        type=_positive,
        default=30.0,
        metavar="S",
        help="answer 408 to a request whose body has not fully arrived S seconds after its "
        "headers (default 30)",
    )
    s.add_argument(
        "--header-timeout",
        type=_positive,
        default=15.0,
        metavar="S",
        help="close a connection that has not sent a whole request's headers S seconds after "
        "it opened or after its last answer (slow or idle clients; default 15)",
    )

    s = sub.add_parser(
        "target",
        help="build (or restore) and start a real engine on loopback",
        description="Start a real inference engine on 127.0.0.1 and print its URL; "
        "Ctrl-C stops it.",
    )
    engines = s.add_subparsers(dest="engine", required=True, metavar="ENGINE")
    e = engines.add_parser(
        "llama-server",
        help="llama.cpp's llama-server with a tiny random-weight model",
        description="Build llama-server from the llama-cpp-python sdist once (cached under "
        "$SURGECAST_CACHE or ~/.cache/surgecast), write a random-weight GGUF model, start "
        "the server on a free loopback port, print its URL and limits (from /props), and "
        "serve until Ctrl-C. Nothing is downloaded but the sdist, from PyPI.",
    )
    _llama_flags(e, standalone=True)
    e.add_argument(
        "--alias",
        default=TargetSpec.model_fields["model"].default,
        help="model name /v1/models lists (default: the scenarios' default, %(default)s)",
    )
    e.add_argument(
        "--no-start",
        action="store_true",
        help="only build or restore the binary and the model, print their paths, and exit",
    )
    e = engines.add_parser(
        "vllm",
        help="vLLM for CPU (installed by `make vllm`) with a tiny random-weight model",
        description="Write a Llama-style model directory locally (config and tokenizer; the "
        "weights are random, --load-format dummy), start vLLM from .venv-vllm (`make vllm` "
        "installs it) on a free loopback port, print its URL and limits (max_num_seqs given, KV "
        "blocks read from /metrics, max_model_len from /v1/models), and serve until Ctrl-C. "
        "Starting takes about a minute on 2 cores and 3.3 GB of memory. Nothing is downloaded.",
    )
    _vllm_flags(e, standalone=True)
    _model_size_flag(e, "tiny")
    e.add_argument(
        "--alias",
        default=TargetSpec.model_fields["model"].default,
        help="model name /v1/models lists (default: the scenarios' default, %(default)s)",
    )
    e.add_argument(
        "--no-start",
        action="store_true",
        help="only write the model directory, print its path, and exit",
    )

    s = sub.add_parser(
        "calibrate",
        help="fit the engine model to measured runs, or sweep a target and fit",
        description="Fit step costs and overhead from run folders' records. With --scenario "
        "instead of run folders, measure first: short open-loop levels (Poisson at x0.25, "
        "x0.5, x1, x2 ... the scenario's rate) until one breaks its SLOs, errors climb, the "
        "target falls behind or the generator does, plus a staircase (a full batch of requests "
        "at once whose answers end 40 tokens apart: every batch size measured); fit on the "
        "levels at or under half the knee's rate and the staircase, and back-test the others, "
        "which the fit never saw. A fit the data cannot support exits 3 and writes nothing.",
    )
    s.add_argument("runs", nargs="*", metavar="RUN_DIR")
    s.add_argument("-o", "--output", required=True, help="calibration JSON to write")
    s.add_argument("--scenario", help="sweep: the workload to send (instead of RUN_DIRs)")
    s.add_argument("--target", help="sweep: base URL (default: the scenario's target)")
    s.add_argument(
        "--level-duration",
        type=_positive,
        default=30.0,
        help="sweep: seconds per level (default 30)",
    )
    s.add_argument("--out", help="sweep: folder for the level runs (default: reports/sweep-ID)")
    _corpus_dir_flag(s)
    _limit_flags(s)
    s.add_argument("--no-backtest", action="store_true", help="skip back-testing the runs")

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

    s = sub.add_parser(
        "simulate",
        help="run a scenario through a calibrated model",
        description="Replay the scenario's plan in simulated time.",
    )
    s.add_argument("scenario", help="scenario YAML whose plan is simulated")
    s.add_argument("--calibration", required=True, help="calibration JSON (surgecast calibrate)")
    s.add_argument("--scale", type=_positive, default=1.0, help="multiply the arrival rate")
    s.add_argument("--replicas", type=_count, default=1, help="fixed fleet size (default 1)")
    s.add_argument("--out", help="run folder (default: reports/<run-id>)")

    s = sub.add_parser(
        "forecast",
        help="fewest replicas meeting the SLOs at each traffic scale",
        description="Search replica counts in simulation for each scale.",
    )
    s.add_argument("scenario", help="scenario YAML (its traffic is today's: x1)")
    s.add_argument("--calibration", required=True, help="calibration JSON (surgecast calibrate)")
    s.add_argument("--scales", type=_scales, help="default: the scenario's forecast.scales")
    s.add_argument("--json", dest="json_out", help="also write the forecast as JSON here")

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
    _bootstrap_flags(s)
    s.add_argument(
        "--out", help="folder for compare.md and compare.png (default: reports/compare-ID)"
    )

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
        "--target", type=_url, help="base URL to run against (default: the scenario's target)"
    )
    _duration_flag(s)
    _corpus_dir_flag(s)
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument(
        "--out", help="folder for junit.xml, gate.md, compare.png (default: reports/gate-ID)"
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no live progress line")

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

    s = sub.add_parser(
        "schema",
        help="write the JSON Schema of each run-folder document (run, summary, calibration, ...)",
        description="Export the JSON Schemas other tools can validate a run folder's documents "
        "against; each document names its schema and version in its `schema` field.",
    )
    s.add_argument("--out", default="schemas", help="folder to write them to (default: schemas)")
    return p


def _bootstrap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resamples", type=_count, default=2000, help="bootstrap resamples (default 2000)"
    )
    p.add_argument(
        "--confidence", type=_fraction, default=0.95, help="interval confidence (default 0.95)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def _fraction(text: str) -> float:
    value = _positive(text)
    if not 0.5 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0.5, 1), got {text!r}")
    return value


def _duration_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="override traffic.duration_s (k6's --duration), e.g. a short smoke run",
    )


def _corpus_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus-dir",
        metavar="DIR",
        help=f"folder of public corpora (default: ${CORPUS_DIR_ENV}): a corpus with in_corpus_dir "
        "reads that file under DIR instead of its path (the catalog: the project's own sets)",
    )


def _load_corpora(path: str, flag: str | None = None) -> Scenario:
    """load_scenario with the corpus folder of --corpus-dir, else of $SURGECAST_CORPUS_DIR."""
    if not flag:
        return load_scenario(path, env_corpus_dir())
    scenario = load_scenario(path)
    moved = with_corpus_dir(scenario, Path(flag), "--corpus-dir")
    if moved is scenario:  # nothing in it reads the folder: say so
        _warn([f"--corpus-dir: no corpus of {path} has in_corpus_dir; {flag} is not read"])
    return moved


def _load(path: str, corpus_dir: str | None = None) -> Scenario:
    """load_scenario, and the checks that need the simulator's profiles (the fleet's model and
    GPU), so a bad one stops a pipeline before it sends anything."""
    from simulator.replay.fleet_spec import fleet_from_spec

    scenario = _load_corpora(path, corpus_dir)
    try:
        fleet_from_spec(scenario.fleet)
    except ValueError as e:
        raise ScenarioError(path, [str(e)]) from None
    return scenario


def _scenario(a: argparse.Namespace) -> Scenario:
    """The scenario file, with --duration applied when given."""
    scenario = _load(a.scenario, getattr(a, "corpus_dir", None))
    duration = getattr(a, "duration", None)
    if duration is None:
        return scenario
    if duration > 86400:
        raise BadInput(f"--duration: at most 86400 s, got {duration:g}")
    traffic = scenario.traffic.model_copy(update={"duration_s": duration})
    return scenario.model_copy(update={"traffic": traffic})


def _calibration(path: str) -> Calibration:
    from surgecast.contracts import ContractError, read_calibration

    if not Path(path).is_file():
        raise BadInput(f"{path}: calibration file not found (make one with surgecast calibrate)")
    try:
        return read_calibration(Path(path))
    except ContractError as e:
        raise BadInput(f"not a usable calibration file: {e}") from None


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _print(text: str) -> None:
    print(text, flush=True)


def cmd_serve(a: argparse.Namespace) -> int:
    from simulator.engine.core import EngineConfig, engine_from_spec
    from targets.reference_server import serve

    faults, interval = None, a.stream_interval
    if a.scenario:
        spec = load_scenario(a.scenario).reference_target
        config, faults = engine_from_spec(spec), spec.faults
        interval = interval or spec.stream_interval
    elif a.calibration:
        config = _calibration(a.calibration).engine
    elif a.engine_json:
        try:
            config = EngineConfig.from_dict(json.loads(a.engine_json))
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput(f"--engine-json: {e}") from None
    else:
        config = EngineConfig()
    if a.slowdown:
        from simulator.engine.stepcost import scaled

        spec_slowdown = load_scenario(a.scenario).reference_target.slowdown if a.scenario else 1.0
        config = config.with_cost(scaled(config.cost, a.slowdown / spec_slowdown))
    if a.faults_json:
        try:
            data = json.loads(a.faults_json)
            faults = TargetFaults.model_validate(data)
        except ValidationError as e:
            raise BadInput(f"--faults-json: {'; '.join(validation_messages(e, data))}") from None
        except ValueError as e:
            raise BadInput(f"--faults-json: not valid JSON: {e}") from None
    try:
        asyncio.run(
            serve(
                config,
                a.host,
                a.port,
                a.model,
                a.exit_with_parent,
                faults,
                interval or 1,
                api_key=a.api_key or os.environ.get(TARGET_KEY_ENV) or None,
                debug=a.debug,
                body_timeout_s=a.body_timeout,
                header_timeout_s=a.header_timeout,
            )
        )
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as e:
        raise BadInput(f"cannot listen on {a.host}:{a.port}: {e.strerror}") from None
    return EXIT_OK


def _llama(a: argparse.Namespace) -> LlamaOptions | None:
    """The llama-server to start for run/pipeline (--target llama-server), else None."""
    from targets.llama_launch import LlamaOptions

    flags = {"slots": a.slots, "ctx": a.ctx, "threads": a.threads, "model_size": a.model_size}
    if a.target != LLAMA:
        if a.target == VLLM:
            del flags["model_size"]  # shared with vLLM
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        if a.build:
            given.append("--build")
        if given:
            raise BadInput(f"{', '.join(given)}: only with --target {LLAMA}")
        return None
    return LlamaOptions(**{k: v for k, v in flags.items() if v is not None}, build=a.build)


VLLM_FLAGS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_gib",
    "max_model_len",
    "block_size",
    "stream_interval",
)


def _vllm(a: argparse.Namespace) -> VllmOptions | None:
    """The vLLM server to start for run/pipeline (--target vllm), else None."""
    from targets.vllm_launch import VllmOptions
    from targets.vllm_server import vllm_python

    flags = {k: getattr(a, f"vllm_{k}") for k in VLLM_FLAGS}
    if a.target != VLLM:
        given = [f"--vllm-{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        if a.vllm_no_prefix_caching:
            given.append("--vllm-no-prefix-caching")
        if given:
            raise BadInput(f"{', '.join(given)}: only with --target {VLLM}")
        return None
    vllm_python()  # a missing venv fails here, before a run folder is made
    if a.model_size is not None:
        flags["model_size"] = a.model_size
    kept = {k: v for k, v in flags.items() if v is not None}
    return VllmOptions(**kept, prefix_caching=not a.vllm_no_prefix_caching)


def _target_arg(a: argparse.Namespace) -> str | None:
    return None if a.target in ENGINES else a.target


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C is (servers stopped, run folders marked), exit 143."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _serve_until_stopped(server: ServerProcess) -> int:
    """Say how to use `server`, then wait: Ctrl-C ends it (exit 0); its death is its error."""
    import time

    _print(f"use it: surgecast run SCENARIO --target {server.base_url}; Ctrl-C stops it")
    try:
        while server.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        return EXIT_OK
    raise server.error(server.death_message("stopped"))


def cmd_target(a: argparse.Namespace) -> int:
    if a.engine == VLLM:
        return _serve_vllm(a)
    from targets.llama_launch import LlamaOptions, launch, prepare

    options = LlamaOptions(a.slots, a.ctx, a.threads, a.model_size, build=a.build)
    say = _print
    if a.no_start:
        binary, model = prepare(options, say)
        _print(f"binary: {binary}\nmodel: {model}")
        return EXIT_OK
    server = launch(options, a.alias, say)
    try:
        limits = server.limits
        assert limits is not None
        _print(
            f"llama-server listening on {server.base_url} (model {a.alias!r}, started in "
            f"{server.startup_s:.2f} s): {limits.total_slots} slots x {limits.n_ctx_slot} "
            f"tokens of context; metrics at {server.base_url.removesuffix('/v1')}/metrics"
        )
        return _serve_until_stopped(server)
    finally:
        server.close()


def _serve_vllm(a: argparse.Namespace) -> int:
    """`surgecast target vllm`: start vLLM, print its URL and limits, serve until Ctrl-C."""
    from targets.vllm_launch import VllmOptions, launch
    from targets.vllm_model import ensure_model_dir

    if a.no_start:
        _print(f"model: {ensure_model_dir(a.model_size)}")
        return EXIT_OK
    options = VllmOptions(
        **{k: getattr(a, k) for k in VLLM_FLAGS},
        prefix_caching=not a.no_prefix_caching,
        model_size=a.model_size,
    )
    server = launch(options, a.alias, _print)
    try:
        limits = server.limits
        assert limits is not None
        cache = limits.cache
        _print(
            f"vLLM listening on {server.base_url} (model {a.alias!r}, started in "
            f"{server.startup_s:.1f} s): max_num_seqs {limits.max_num_seqs}, "
            f"max_num_batched_tokens {limits.max_num_batched_tokens}, {cache.num_blocks} KV "
            f"blocks x {cache.block_size} tokens ({cache.kv_cache_tokens} tokens), prefix "
            f"caching {'on' if cache.prefix_caching else 'off'}, max_model_len "
            f"{cache.max_model_len}; metrics at {server.base_url.removesuffix('/v1')}/metrics"
        )
        return _serve_until_stopped(server)
    finally:
        server.close()


def _run_exit(outcome: RunOutcome) -> int:
    from surgecast.tables import summary_tables

    _print(summary_tables(outcome.summary))
    for reason in outcome.reasons:
        print(f"run invalid: {reason}", file=sys.stderr)
    if outcome.interrupted:
        return outcome.interrupted
    if not outcome.valid:
        return EXIT_INVALID
    return EXIT_OK if outcome.summary.slos_passed else EXIT_SLO


def cmd_run(a: argparse.Namespace) -> int:
    from surgecast.pipeline import ScaleOut, run_load
    from surgecast.report import render

    scenario = _scenario(a)
    llama, vllm = _llama(a), _vllm(a)
    scale = ScaleOut(
        processes=a.processes,
        remote=a.expect_workers if a.master else 0,
        bind_host=a.master_bind_host,
        bind_port=a.master_bind_port or (5557 if a.master else 0),
        connect_timeout_s=a.expect_workers_max_wait,
    )
    outcome = run_load(
        scenario,
        a.scenario,
        target_url=_target_arg(a),
        out=a.out,
        progress=not a.quiet,
        llama=llama,
        vllm=vllm,
        scale=scale,
    )
    if not a.no_report:
        html, _ = render(outcome.folder)
        _print(f"report: {html}")
    _print(f"records: {outcome.folder.requests}")
    return _run_exit(outcome)


def cmd_worker(a: argparse.Namespace) -> int:
    from loadgen.distributed import serve_worker

    return serve_worker(a.master_host, a.master_port)


def cmd_plan(a: argparse.Namespace) -> int:
    from loadgen.sizing import SizedPrompts
    from scenarios.plan import build_plan
    from surgecast.planview import (
        RENDERED_PER_PERSONA,
        messiness_table,
        plan_table,
        render_samples,
    )

    scenario = _scenario(a)
    plan = build_plan(scenario, rate_scale=a.scale)
    duration = scenario.traffic.duration_s
    own = [p.name for p in scenario.personas if p.arrival is not None]
    _print(
        f"{scenario.name}: {len(plan)} requests planned over {duration:g} s; "
        f"{scenario.traffic.describe()} x{a.scale:g}"
        + (f" (personas with their own arrivals: {', '.join(own)})" if own else "")
        + f"; seed {scenario.traffic.seed}\n"
    )
    prompts = SizedPrompts(scenario, base_dir=scenario.base_dir)  # a bad corpus fails here
    prompts.chars_per_token = a.chars_per_token
    _print(plan_table(scenario, plan, duration))
    samples = render_samples(prompts, plan)
    mess = messiness_table(prompts)
    if mess:
        first = f"each persona's first {RENDERED_PER_PERSONA} messages"
        _print(f"\nmessiness of the rendered text ({first}):\n" + mess)
    for persona, texts in samples.items():
        for text in texts[: a.samples]:
            shown = text if len(text) <= 240 else text[:240] + f"... ({len(text):,} chars)"
            _print(f"\n[{persona}] {shown!r}")
    return EXIT_OK


def cmd_calibrate(a: argparse.Namespace) -> int:
    from scenarios.records import RecordsError
    from simulator.fit.backtest import backtest_warnings
    from simulator.fit.calibrate import CalibrationError, fit_problems
    from surgecast.contracts import write_calibration
    from surgecast.pipeline import backtest_run, calibrate_runs
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
        return _unusable([str(e)])
    _print(calibration_table(cal))
    problems = fit_problems(cal.fit)
    if problems:
        return _unusable(problems)
    write_calibration(output, cal)
    if not a.no_backtest:
        for f in folders:
            try:
                rows = backtest_run(f, cal)
            except ValueError as e:
                print(f"back-test of {f.path} skipped: {e}", file=sys.stderr)
                continue
            _print(f"\nback-test of {f.path}:\n" + backtest_table(rows))
            _warn(backtest_warnings(cal, rows))
    _print(f"calibration: {a.output}")
    return EXIT_OK


def _unusable(problems: Sequence[str]) -> int:
    """A fit that cannot be used: say why, write no calibration, exit 3."""
    for problem in problems:
        print(f"calibration unusable: {problem}", file=sys.stderr)
    print("no calibration written", file=sys.stderr)
    return EXIT_INVALID


def _calibrate_sweep(a: argparse.Namespace, output: Path) -> int:
    from simulator.fit.calibrate import fit_problems
    from surgecast.contracts import write_calibration
    from surgecast.rundir import new_run_id
    from surgecast.sweep import held_out_rows, level_rows, sweep
    from surgecast.tables import backtest_table, calibration_table, markdown

    scenario = _load_corpora(a.scenario, a.corpus_dir)
    out = Path(a.out) if a.out else Path("reports") / new_run_id(f"sweep-{scenario.name}")
    result = sweep(
        scenario,
        a.scenario,
        out,
        target_url=a.target,
        level_s=a.level_duration,
        batch_limit=a.max_num_seqs,
    )
    headers = ["offered req/s", "served req/s", "TTFT p95 ms", "E2E p95 ms", "role", "knee"]
    _print(markdown(headers, level_rows(result)))
    _print("\n" + calibration_table(result.calibration))
    problems = fit_problems(result.calibration.fit)
    if problems:
        return _unusable(problems)
    write_calibration(output, result.calibration)
    held = held_out_rows(result)
    if held:
        _print("\nheld-out levels, predicted:\n" + backtest_table(held))
        inside = sum(r.inside for r in held)
        _print(f"{inside} of {len(held)} measured values inside their 90% interval")
    _print(f"level runs: {out}\ncalibration: {output}")
    return EXIT_OK


def cmd_backtest(a: argparse.Namespace) -> int:
    from simulator.fit.backtest import BacktestRow, backtest_warnings
    from surgecast.pipeline import backtest_run, in_sample
    from surgecast.rundir import RunFolder
    from surgecast.tables import backtest_table

    cal = _calibration(a.calibration)
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
        _print(f"\nback-test of {path}{label}:\n" + backtest_table(own))
        _warn(backtest_warnings(cal, own))
        (fitted if seen else rows).extend(own)
    if fitted:
        _warn(
            [
                "some runs were fitted by this calibration: their rows show how well it fits, "
                "not how well it forecasts; the totals below leave them out"
            ]
        )
    inside = sum(r.inside for r in rows)
    errors = [abs(r.error_pct) for r in rows if r.metric in ("ttft", "e2e")]
    _print(
        f"\nheld-out: {inside} of {len(rows)} measured values inside their 90% interval; "
        f"median |error| of TTFT and E2E quantiles "
        f"{statistics.median(errors) if errors else 0.0:.1f}%"
    )
    return EXIT_OK


def cmd_simulate(a: argparse.Namespace) -> int:
    from surgecast.pipeline import simulate_scenario
    from surgecast.report import render

    scenario = _load(a.scenario)
    outcome = simulate_scenario(
        scenario,
        a.scenario,
        _calibration(a.calibration),
        scale=a.scale,
        replicas=a.replicas,
        out=a.out,
    )
    html, _ = render(outcome.folder)
    _print(f"report: {html}")
    return _run_exit(outcome)


def cmd_forecast(a: argparse.Namespace) -> int:
    from surgecast.pipeline import forecast_scenario
    from surgecast.tables import forecast_table

    scenario = _load(a.scenario)
    points = forecast_scenario(
        scenario, _calibration(a.calibration), a.scales or scenario.forecast.scales
    )
    _print(forecast_table(points))
    if a.json_out:
        from surgecast.contracts import write_forecast

        write_forecast(Path(a.json_out), points)
    return EXIT_OK if all(p.best is not None for p in points) else EXIT_SLO


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
    _print(f"report: {html}\nsummary: {md}")
    return EXIT_OK


def cmd_schema(a: argparse.Namespace) -> int:
    from surgecast.contracts import json_schemas

    out = Path(a.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            path = out / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
            _print(f"{name}: {path}")
    except OSError as e:
        raise BadInput(f"cannot write schemas to {out}: {e.strerror or e}") from None
    return EXIT_OK


def cmd_pipeline(a: argparse.Namespace) -> int:
    from simulator.fit.backtest import backtest_warnings
    from simulator.fit.calibrate import CalibrationError, fit_problems
    from surgecast import pipeline as pl
    from surgecast.contracts import write_calibration
    from surgecast.report import render
    from surgecast.tables import backtest_table, calibration_table, forecast_table

    scenario = _scenario(a)
    llama, vllm = _llama(a), _vllm(a)
    outcome = pl.run_load(
        scenario, a.scenario, target_url=_target_arg(a), out=a.out, llama=llama, vllm=vllm
    )
    folder = outcome.folder
    code = _run_exit(outcome)
    if outcome.valid:
        pl.say_stderr("calibrating the engine model from the measured records")
        try:
            cal = pl.calibrate_runs(
                [folder], max_num_seqs=a.max_num_seqs, kv_cache_tokens=a.kv_cache_tokens
            )
        except CalibrationError as e:
            problems = [str(e)]
        else:
            _print("\n" + calibration_table(cal))
            problems = fit_problems(cal.fit)
        if problems:  # the report still shows the measured run
            code = _unusable(problems)
        else:
            write_calibration(folder.calibration, cal)
            rows = pl.backtest_run(folder, cal)
            _print(
                "\nback-test, in-sample (the model fitted on this run predicts it; "
                "`surgecast backtest` on other runs shows forecast error):\n" + backtest_table(rows)
            )
            _warn(backtest_warnings(cal, rows))
            points = pl.forecast_scenario(scenario, cal, a.scales or scenario.forecast.scales)
            pl.save_forecast(folder, points)
            _print("\n" + forecast_table(points))
    html, _ = render(folder)
    _print(f"\nreport: {html}")
    return code


def _out_dir(out: str | None, prefix: str) -> Path:
    from surgecast.rundir import new_run_id

    path = Path(out) if out else Path("reports") / new_run_id(prefix)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _runs(paths: Sequence[str], side: str) -> list[Run]:
    from surgecast.gate import load_run
    from surgecast.rundir import RunFolderError

    runs = []
    for path in paths:
        try:
            runs.append(load_run(Path(path)))
        except (FileNotFoundError, RunFolderError) as e:
            raise BadInput(f"{side} {path}: {e}") from None
    return runs


def _run_scenario(path: str) -> Scenario:
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
    baseline, candidate = _runs(base, "baseline"), _runs(cand, "candidate")
    try:  # only for goodput's SLO limits: a run.json without a valid scenario goes without
        scenario = _run_scenario(cand[0])
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
    out = _out_dir(a.out, "compare")
    note = (
        f"{a.confidence:.0%} bootstrap intervals, {a.resamples} resamples"
        + (" (runs, then requests)" if len(baseline) > 1 or len(candidate) > 1 else "")
        + ("; goodput counts every answered request (no SLOs)" if not limits else "")
    )
    (out / "compare.md").write_text(f"{table}\n\n{note}\n", encoding="utf-8")
    plot = distribution_plot(result, out / "compare.png")
    _print(f"{table}\n\n{note}\nplot: {plot}")
    return EXIT_OK


def _workload_changes(scenario: Scenario, runs: Sequence[str]) -> list[str]:
    """A warning for each baseline run whose traffic or workload differs from the scenario's:
    the gate would then measure that change along with any regression."""
    warnings = []
    for path in runs:
        try:
            theirs = _run_scenario(path)
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
    import os
    import time

    from surgecast.compare import distribution_plot
    from surgecast.gate import gate, junit_cases, summary_markdown
    from surgecast.junit import write_junit

    started = time.monotonic()
    if not a.candidate and not a.scenario:
        raise BadInput("give the SCENARIO to run now, or --candidate RUN_DIR")
    if a.candidate and a.target:
        raise BadInput("--target is for running the scenario now, not with --candidate")
    scenario = _scenario(a) if a.scenario else _run_scenario(a.candidate[0])
    if not scenario.regressions.budgets() and not scenario.thresholds():
        raise BadInput(
            "the scenario has no regressions: budgets and no slos: add, e.g., "
            "regressions: {ttft: 'p(95) regress < 10%', e2e: 'p(95) regress < 10%'}"
        )
    baseline = _runs(a.baseline, "baseline")
    _warn(_workload_changes(scenario, a.baseline))
    candidate = _runs(a.candidate, "candidate")  # an invalid run stops before --out is made
    out = _out_dir(a.out, "gate")
    if not candidate:
        from surgecast.pipeline import run_load

        outcome = run_load(
            scenario, a.scenario, target_url=a.target, out=out / "candidate", progress=not a.quiet
        )
        for reason in outcome.reasons:
            print(f"run invalid: {reason}", file=sys.stderr)
        if not outcome.valid:
            return EXIT_INVALID
        candidate = _runs([str(outcome.folder.path)], "candidate")
    result = gate(scenario, baseline, candidate, seed=a.seed)
    md = summary_markdown(result)
    (out / "gate.md").write_text(md, encoding="utf-8")
    write_junit(
        out / "junit.xml", "surgecast-gate", junit_cases(result), time.monotonic() - started
    )
    distribution_plot(result.comparison, out / "compare.png")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    _print(md)
    _print(f"junit: {out / 'junit.xml'}\nsummary: {out / 'gate.md'}\nplot: {out / 'compare.png'}")
    return EXIT_OK if result.passed else EXIT_SLO


COMMANDS = {
    "pipeline": cmd_pipeline,
    "run": cmd_run,
    "plan": cmd_plan,
    "serve": cmd_serve,
    "target": cmd_target,
    "calibrate": cmd_calibrate,
    "backtest": cmd_backtest,
    "simulate": cmd_simulate,
    "forecast": cmd_forecast,
    "report": cmd_report,
    "compare": cmd_compare,
    "schema": cmd_schema,
    "worker": cmd_worker,
    "gate": cmd_gate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return COMMANDS[args.command](args)
    except Terminated:
        print("terminated (SIGTERM): records written so far are kept", file=sys.stderr)
        return EXIT_TERMINATED
    except (ScenarioError, TraceError, CorpusError) as e:
        what = {ScenarioError: "scenario", TraceError: "trace", CorpusError: "corpus"}[type(e)]
        print(
            f"error: invalid {what} {e.path} ({len(e.problems)} problem"
            f"{'s' if len(e.problems) != 1 else ''}):",
            file=sys.stderr,
        )
        for problem in e.problems:
            print(
                f"  {problem if problem.startswith(e.path) else f'{e.path}: {problem}'}",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT
    except (BadInput, MissingApiKey, MissingModel, FileExistsError, PlanTooLarge) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TargetUnreachable, TargetStartError) as e:
        print(f"error: target unreachable: {e}", file=sys.stderr)
        return EXIT_INVALID
    except (InvalidRun, TargetRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except (BuildError, LlamaServerError, VllmServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
