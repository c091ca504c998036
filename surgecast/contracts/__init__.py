"""The run folder's documents as strict, versioned contracts other tools can read.

Each document has one pydantic model, one writer and one reader, and a JSON Schema (`surgecast
schema --out DIR` exports them): run.json (`run`), summary.json (`summary`), and the engine
model's calibration, backtest and forecast documents (`model`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from surgecast.contracts.base import ContractError, parse, validate
from surgecast.contracts.model import (
    BacktestDoc,
    CalibrationDoc,
    ForecastDoc,
    read_backtest,
    read_calibration,
    read_forecast,
    write_backtest,
    write_calibration,
    write_forecast,
)
from surgecast.contracts.run import RUN_SCHEMA, RunMeta, write_run
from surgecast.contracts.summary import SummaryDoc, read_summary, write_summary

__all__ = [
    "RUN_SCHEMA",
    "ContractError",
    "RunMeta",
    "json_schemas",
    "parse",
    "read_backtest",
    "read_calibration",
    "read_forecast",
    "read_summary",
    "validate",
    "write_backtest",
    "write_calibration",
    "write_forecast",
    "write_run",
    "write_summary",
]

SCHEMAS: dict[str, type[BaseModel]] = {
    "run": RunMeta,
    "summary": SummaryDoc,
    "calibration": CalibrationDoc,
    "backtest": BacktestDoc,
    "forecast": ForecastDoc,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each document's JSON Schema, by file stem."""
    return {name: model.model_json_schema(by_alias=True) for name, model in SCHEMAS.items()}
