"""The run folder contract: reports/<run-id>/ and the files in it."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from scenarios.record_files import Merged, iter_all, merge
from scenarios.records import RequestRecord
from scenarios.runfiles import UnreadableFile, read_document
from scenarios.spec import Scenario
from scenarios.table import RequestTable
from surgecast.contracts import RUN_SCHEMA, ContractError, RunMeta, parse, validate, write_run
from surgecast.files import write_whole


def new_run_id(scenario_name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{scenario_name}-{stamp}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def new(cls, scenario_name: str, out: str | Path | None) -> RunFolder:
        """A new run folder (`out`, else reports/<run-id>); never one that already holds a run."""
        if out:
            folder = cls(Path(out))
            if folder.run_json.exists():
                raise FileExistsError(f"--out {out} already holds a run: choose another folder")
        else:
            base = Path("reports") / new_run_id(scenario_name)
            folder = cls(base)
            n = 1
            while folder.path.exists():  # two runs started within the same second
                n += 1
                folder = cls(base.with_name(f"{base.name}-{n}"))
        folder.create()
        return folder

    def begin(
        self,
        scenario: Scenario,
        scenario_file: str,
        planned: int,
        target: dict[str, Any],
        **fields: Any,
    ) -> None:
        """run.json: the scenario as resolved, seed, target, versions, machine, start time."""
        self.write_meta(
            {
                "run_id": self.path.name,
                "scenario_file": scenario_file,
                "scenario": scenario.model_dump(mode="json", by_alias=True),
                "seed": scenario.traffic.seed,
                "planned_requests": planned,
                "duration_s": scenario.traffic.duration_s,
                "target": target,
                "versions": versions(),
                "machine": machine(),
                "started_at": now_iso(),
                **fields,
            },
        )

    def end(self, status: str, reasons: list[str], **fields: Any) -> None:
        """run.json's end: how far it got and whether it is valid (why not, if not)."""
        validity = {"valid": not reasons, "reasons": reasons}
        self.update_meta(status=status, finished_at=now_iso(), validity=validity, **fields)

    def write_json(self, target: Path, data: Any) -> None:
        """Write `data` as JSON, a non-finite number as null (NaN is not JSON)."""
        text = json.dumps(finite_json(data), indent=2, default=str, allow_nan=False)
        write_whole(target, text + "\n")

    def read_json(self, target: Path) -> Any:
        """The file's JSON, None when it does not exist; RunFolderError when it is not JSON."""
        if not target.exists():
            return None
        try:
            return json.loads(read_document(target).decode("utf-8"))
        except OSError as e:
            raise RunFolderError(f"{target}: cannot read file: {e.strerror or e}") from None
        except UnreadableFile as e:
            raise RunFolderError(f"{target}: {e}") from None
        except UnicodeDecodeError as e:
            raise RunFolderError(f"{target}: not UTF-8 (byte offset {e.start})") from None
        except RecursionError:
            raise RunFolderError(f"{target}: JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            what = (
                "empty"
                if not e.doc.strip()
                else f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
            )
            raise RunFolderError(
                f"{target}: {what}; the file is corrupt or was cut short"
            ) from None
        except ValueError as e:  # an integer too long to convert
            raise RunFolderError(f"{target}: not usable JSON ({e})") from None

    def meta(self) -> RunMeta:
        """run.json, checked against its contract; RunFolderError naming what is wrong."""
        data = self.read_json(self.run_json)
        if data is None:
            raise FileNotFoundError(f"{self.run_json} not found: is {self.path} a run folder?")
        try:
            return parse(data, str(self.run_json), RunMeta, RUN_SCHEMA)
        except ContractError as e:
            raise RunFolderError(str(e)) from None

    def write_meta(self, data: dict[str, Any]) -> RunMeta:
        """A new run.json from `data`, checked against the contract (ContractError if not)."""
        meta = validate(finite_json(data), str(self.run_json), RunMeta)
        write_run(self.run_json, meta)
        return meta

    def update_meta(self, **fields: Any) -> RunMeta:
        """run.json with `fields` set, checked against the contract."""
        return self.write_meta({**self.meta().model_dump(mode="json", by_alias=True), **fields})

    def mark_if_killed(self) -> bool:
        """A run.json still "running" whose writer process (on this host) is gone: the run
        was killed (SIGKILL, a crash, the machine lost) before it could say so. Marks it
        "killed" and invalid; True if it did."""
        meta = self.meta()
        writer = meta.writer
        if meta.status != "running" or writer is None:
            return False
        if writer.host != socket.gethostname() or _alive(writer.pid):
            return False
        during = f" (in its {meta.step} step)" if meta.step else ""
        reason = (
            f"killed before it finished{during} (SIGKILL or a crash): the records written "
            "until then are kept; the rest of the plan was never sent or never finished"
        )
        self.update_meta(status="killed", validity={"valid": False, "reasons": [reason]})
        return True

    def records(self) -> list[RequestRecord]:
        """The measured records, the local workers' files not yet merged included; bad lines
        are skipped with a warning or refused (iter_records)."""
        return list(iter_all(self._requests()))

    def table(self) -> RequestTable:
        """The measured records' columns, read as a stream (memory per row, not per record)."""
        return RequestTable.of(iter_all(self._requests()))

    def merge_records(
        self, wait_s: float = 0.0, say: Callable[[str], None] | None = None
    ) -> Merged:
        """The local workers' record files moved into requests.jsonl, each record once, with
        the requests a dead worker had in flight recorded as lost, once any worker still
        stopping has stopped (up to `wait_s`; see scenarios.record_files)."""
        return merge(self._requests(), wait_s, say or (lambda _: None))

    def _requests(self) -> Path:
        if not self.requests.exists():
            raise FileNotFoundError(f"{self.requests} not found: is {self.path} a run folder?")
        return self.requests


def writer() -> dict[str, Any]:
    """The process writing a run folder, so a reader can tell a killed run from a live one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunFolderError(ValueError):
    """A run folder's file that cannot be used: it names the file and what is wrong."""


def finite_json(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None, so it can be written as JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    return data
