"""The command line's shape: every command has --help and a function to run, and the groups
that register them leave none out."""

from __future__ import annotations

import argparse

import pytest

from surgecast.cli.main import parser

COMMANDS = [
    "pipeline", "run", "worker", "plan", "calibrate", "backtest", "simulate", "forecast",
    "schema", "compare", "gate", "report", "serve", "target", "catalog", "memory", "hardware",
]  # fmt: skip


def _commands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_is_registered_once() -> None:
    assert sorted(_commands(parser())) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_runs_a_function(command: str) -> None:
    p = _commands(parser())[command]
    assert callable(p.get_default("func")), command
    assert p.format_help().startswith("usage: surgecast " + command)


@pytest.mark.parametrize("engine", ["llama-server", "vllm"])
def test_target_engines_parse_to_the_target_command(engine: str) -> None:
    args = parser().parse_args(["target", engine, "--no-start"])
    assert args.func.__name__ == "cmd_target" and args.engine == engine and args.no_start
