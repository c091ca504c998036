"""The run folder contract: reports/<run-id>/ and the files in it."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from scenarios.records import RequestRecord, read_records


def new_run_id(scenario_name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{scenario_name}-{stamp}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("surgecast", "locust", "simpy", "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.executable}


class InvalidRun(Exception):
    """A run folder whose own validity check failed (or that never finished)."""


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def requests(self) -> Path:
        return self.path / "requests.jsonl"

    @property
    def telemetry(self) -> Path:
        return self.path / "telemetry.jsonl"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.json"

    @property
    def backtest(self) -> Path:
        return self.path / "backtest.json"

    @property
    def simulated(self) -> Path:
        return self.path / "simulated.jsonl"

    @property
    def forecast(self) -> Path:
        return self.path / "forecast.json"

    @property
    def html(self) -> Path:
        return self.path / "index.html"

    @property
    def markdown(self) -> Path:
        return self.path / "summary.md"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, target: Path, data: Any) -> None:
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(target)  # atomic: a killed process never leaves half a file

    def read_json(self, target: Path) -> Any:
        return json.loads(target.read_text(encoding="utf-8")) if target.exists() else None

    def meta(self) -> dict[str, Any]:
        meta = self.read_json(self.run_json)
        if meta is None:
            raise FileNotFoundError(f"{self.run_json} not found: is {self.path} a run folder?")
        return dict(meta)

    def update_meta(self, **fields: Any) -> None:
        meta = self.read_json(self.run_json) or {}
        meta.update(fields)
        self.write_json(self.run_json, meta)

    def records(self) -> list[RequestRecord]:
        if not self.requests.exists():
            raise FileNotFoundError(f"{self.requests} not found: is {self.path} a run folder?")
        return read_records(self.requests)
