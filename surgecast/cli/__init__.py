"""The `surgecast` command line: one module per command group (`run`: run, pipeline, worker,
plan; `model`: calibrate, backtest, simulate, forecast, schema; `judge`: compare, gate, report;
`serve`: serve, target), each registering its own commands; `main` and the exit codes in
`surgecast.cli.main`."""

from surgecast.cli.main import main

__all__ = ["main"]
