"""What every run-folder document shares: a strict pydantic base, its JSON written whole or not
at all, and read back checked against its contract (`schema` names the document and its major
version: a reader refuses a version it does not know rather than guess at its fields)."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from scenarios.runfiles import UnreadableFile, read_document
from simulator.engine.core import EngineConfig
from surgecast.files import write_whole

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def nan_of(x: float | None) -> float:
    return math.nan if x is None else x


class ContractError(ValueError):
    """A document that does not meet its contract: names the file and what is wrong."""


def write_doc(path: Path, doc: BaseModel) -> None:
    """A document, written whole or not at all."""
    write_whole(path, doc.model_dump_json(by_alias=True, indent=2) + "\n")


def read_doc(path: Path, model: type[M], schema: str) -> M:
    try:
        data = json.loads(read_document(path))
    except UnreadableFile as e:
        raise ContractError(f"{path}: {e}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ContractError(f"{path}: not readable JSON ({e})") from None
    return parse(data, str(path), model, schema)


def parse(data: Any, where: str, model: type[M], schema: str) -> M:
    """A document's JSON content checked against its contract; ContractError naming `where`
    and every field that does not fit."""
    if not isinstance(data, dict):
        raise ContractError(f"{where}: a JSON object expected, got {type(data).__name__}")
    if "schema" not in data:
        raise ContractError(
            f"{where}: no `schema`: written by an older surgecast; run the command that wrote "
            "it again"
        )
    if data["schema"] != schema:
        raise ContractError(f"{where}: schema {data['schema']!r}, this surgecast reads {schema!r}")
    return validate(data, where, model)


def validate(data: dict[str, Any], where: str, model: type[M]) -> M:
    """`data` as `model`, checked as if read from JSON (JSON has no tuples: strict mode still
    checks every type); a number that is not finite must be null."""
    try:
        text = json.dumps(data, default=str, allow_nan=False)
    except ValueError as e:
        raise ContractError(f"{where}: not JSON ({e})") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        raise ContractError(f"{where}: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    """Every field that does not fit, by its path: 'points[0].rate: Input should be...'."""
    lines = []
    for err in e.errors(include_url=False, include_input=False):
        path = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
        lines.append(f"{path.lstrip('.') or '(document)'}: {err['msg']}")
    head = f"{len(lines)} problems: " if len(lines) > 1 else ""
    return head + "; ".join(lines)


LIMITS = ("max_num_seqs", "kv_cache_tokens", "max_batched_tokens", "block_size")


def servable_engine(engine: EngineConfig) -> EngineConfig:
    """`engine` if it can run: limits of at least 1 (a batch of 0 would never answer) and
    times that are finite and never negative; else ValueError naming each problem."""
    problems = [
        f"{name} must be at least 1, not {getattr(engine, name)}"
        for name in LIMITS
        if getattr(engine, name) < 1
    ]
    times = {"cold_start_s": engine.cold_start_s, "overhead_s": engine.overhead_s}
    for f in fields(engine.cost):
        value = getattr(engine.cost, f.name)
        for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
            times[f"cost.{f.name}" + (f"[{i}]" if isinstance(value, tuple) else "")] = v
    problems += [
        f"{k} must be finite and at least 0, not {v}"
        for k, v in times.items()
        if not (math.isfinite(v) and v >= 0)
    ]
    if problems:
        raise ValueError("; ".join(problems))
    return engine
