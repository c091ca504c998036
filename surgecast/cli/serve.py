"""Commands that serve: `serve` (the reference target on loopback, the engine model behind an
OpenAI-compatible API) and `target` (a real engine, llama-server or vLLM, on loopback)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from pydantic import ValidationError

from scenarios.spec import TargetFaults, TargetSpec, load_scenario, validation_messages
from surgecast.cli.args import calibration_arg, count, port, positive
from surgecast.cli.engines import LLAMA, VLLM_FLAGS, llama_flags, model_size_flag, vllm_flags
from surgecast.cli.exits import EXIT_OK, BadInput
from surgecast.console import out
from targets.errors import TargetError
from targets.launcher import Launcher
from targets.reference_launch import TARGET_KEY_ENV

Subparsers = argparse._SubParsersAction


def register(sub: Subparsers) -> None:
    s = sub.add_parser(
        "serve",
        help="start the reference target (OpenAI-compatible) on loopback",
        description="Serve the engine model over HTTP; Ctrl-C stops it.",
    )
    s.add_argument("--host", default="127.0.0.1", help="loopback by default (127.0.0.1)")
    s.add_argument("--port", type=port, default=8000, help="default 8000; 0 picks a free port")
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
        type=count,
        help="tokens per streamed chunk, as vLLM's --stream-interval (default: the scenario's "
        "reference_target.stream_interval, else 1); with stream_options.continuous_usage_stats "
        "every chunk carries usage",
    )
    s.add_argument(
        "--slowdown",
        type=positive,
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
        type=positive,
        default=30.0,
        metavar="S",
        help="answer 408 to a request whose body has not fully arrived S seconds after its "
        "headers (default 30)",
    )
    s.add_argument(
        "--header-timeout",
        type=positive,
        default=15.0,
        metavar="S",
        help="close a connection that has not sent a whole request's headers S seconds after "
        "it opened or after its last answer (slow or idle clients; default 15)",
    )
    s.set_defaults(func=cmd_serve)

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
    llama_flags(e, standalone=True)
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
    vllm_flags(e, standalone=True)
    model_size_flag(e, "tiny")
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
    s.set_defaults(func=cmd_target)


def cmd_serve(a: argparse.Namespace) -> int:
    from simulator.engine.core import EngineConfig, engine_from_spec
    from targets.reference_server import serve

    faults, interval = None, a.stream_interval
    if a.scenario:
        spec = load_scenario(a.scenario).reference_target
        config, faults = engine_from_spec(spec), spec.faults
        interval = interval or spec.stream_interval
    elif a.calibration:
        config = calibration_arg(a.calibration).engine
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


def cmd_target(a: argparse.Namespace) -> int:
    """Start an engine on loopback, say where and what it reported, serve until Ctrl-C (exit
    0); its death is its error (exit 3)."""
    if a.no_start:
        return _prepare_only(a)
    launcher = _engine(a)
    try:
        launcher.start(a.alias, out)
        root = launcher.base_url.removesuffix("/v1")
        out(f"serving model {a.alias!r}; metrics at {root}/metrics")
        out(f"use it: surgecast run SCENARIO --target {launcher.base_url}; Ctrl-C stops it")
        try:
            while launcher.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            return EXIT_OK
        raise TargetError(launcher.death("stopped") or f"{a.engine} stopped")
    finally:
        launcher.stop()


def _engine(a: argparse.Namespace) -> Launcher:
    """The engine `surgecast target ENGINE` starts, from its flags."""
    if a.engine == LLAMA:
        from targets.llama_launch import LlamaLauncher, LlamaOptions

        return LlamaLauncher(LlamaOptions(a.slots, a.ctx, a.threads, a.model_size, build=a.build))
    from targets.vllm_launch import VllmLauncher, VllmOptions

    options = VllmOptions(
        **{k: getattr(a, k) for k in VLLM_FLAGS},
        prefix_caching=not a.no_prefix_caching,
        model_size=a.model_size,
    )
    return VllmLauncher(options)


def _prepare_only(a: argparse.Namespace) -> int:
    """--no-start: build or restore what the engine needs, say where it is."""
    if a.engine == LLAMA:
        from targets.llama_launch import LlamaOptions, prepare

        options = LlamaOptions(a.slots, a.ctx, a.threads, a.model_size, build=a.build)
        binary, model = prepare(options, out)
        out(f"binary: {binary}\nmodel: {model}")
    else:
        from targets.vllm_model import ensure_model_dir

        out(f"model: {ensure_model_dir(a.model_size)}")
    return EXIT_OK
