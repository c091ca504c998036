"""Loading a trace file: read within the size limit, parsed by its format, cached per process.

Formats: `azure-llm` (Azure LLM inference CSV), `azure-functions` (per-minute invocation counts,
spread uniformly inside each minute), `mooncake` (JSONL with prefix-block hash_ids), `burstgpt`
(CSV), `csv` / `jsonl` (any columns, mapped by `TraceColumns`), and `requests` (a previous
surgecast run's requests.jsonl, sorted by intended start because it is written in finish order).
Every other format must be sorted by time: an unsorted trace is refused, naming the first line
that goes backwards. Bad files raise `TraceError` listing every problem at once with file, line
and column. Files over `MAX_TRACE_BYTES` are refused.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.files import data_file_problem
from scenarios.trace_errors import Problems, TraceError
from scenarios.trace_functions import parse_functions
from scenarios.trace_tables import FIXED_LAYOUTS, Layout, parse_table
from scenarios.trace_types import (
    TABLE_FORMATS,
    FunctionSelect,
    Trace,
    TraceColumns,
    TraceFormat,
    frozen,
)

MAX_TRACE_BYTES = 256 * 2**20  # larger files are refused: cut them or raise `max_bytes`


def _read_text(path: Path, max_bytes: int) -> str:
    """The file's text: UTF-8, not empty, no more than `max_bytes` read."""
    problems = Problems(str(path))
    refused = data_file_problem(path)
    if refused:
        raise problems.fail(refused)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise problems.fail(
                f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes "
                "(MAX_TRACE_BYTES); cut the trace"
            )
        with path.open("rb") as f:  # no more than the limit: a device or pipe never ends
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise problems.fail(f"cannot read file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise problems.fail(f"file is over the limit of {max_bytes:,} bytes; cut the trace")
    if not data.strip():
        raise problems.fail("file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise problems.fail(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line})"
        ) from None


def _layout(format: str, columns: TraceColumns | None, models: Any, log_types: Any) -> Layout:
    if format in TABLE_FORMATS:
        if columns is None:
            raise ValueError(f"format {format!r} needs a columns mapping")
        c = columns
        return Layout(
            c.timestamp, c.timestamp_unit, c.prompt_tokens, c.output_tokens, c.hash_ids,
            jsonl=format == "jsonl",
        )  # fmt: skip
    base = FIXED_LAYOUTS[format]
    keep = []
    if models:
        keep.append(("Model", frozenset(m.lower() for m in models)))
    if log_types:
        keep.append(("Log Type", frozenset(t.lower() for t in log_types)))
    return dataclasses.replace(base, keep=tuple(keep))


@functools.lru_cache(maxsize=16)
def _parse_cached(
    path: str,
    mtime_ns: int,
    size: int,
    format: str,
    columns: TraceColumns | None,
    functions: FunctionSelect | None,
    models: tuple[str, ...] | None,
    log_types: tuple[str, ...] | None,
    max_bytes: int,
) -> Trace:
    """Pure parse keyed by the file's identity (path, mtime, size) and the options."""
    text = _read_text(Path(path), max_bytes)
    if format == "azure-functions":
        return parse_functions(path, text, functions)
    return parse_table(path, text, _layout(format, columns, models, log_types))


def load_trace(
    path: str | Path,
    format: TraceFormat,
    columns: TraceColumns | None = None,
    *,
    functions: FunctionSelect | None = None,
    models: Sequence[str] | None = None,
    log_types: Sequence[str] | None = None,
    seed: int = 0,
    max_bytes: int = MAX_TRACE_BYTES,
) -> Trace:
    """Parse a trace (cached per process by path, mtime, size and options).

    `functions` selects azure-functions rows (HashFunction prefixes or TopFunctions; default all,
    summed); `models` / `log_types` filter burstgpt rows (case-insensitive); `seed` places
    azure-functions arrivals uniformly inside their minute. Raises TraceError.
    """
    p = Path(path)
    if format not in (*FIXED_LAYOUTS, *TABLE_FORMATS, "azure-functions"):
        raise TraceError(str(p), [f"{p}: unknown trace format {format!r}"])
    if (format in TABLE_FORMATS) != (columns is not None):
        need = "needs" if format in TABLE_FORMATS else "takes no"
        raise TraceError(str(p), [f"{p}: format {format!r} {need} columns mapping"])
    try:
        st = p.stat()
    except OSError as e:
        raise TraceError(str(p), [f"{p}: cannot read file: {e.strerror or e}"]) from None
    trace = _parse_cached(
        str(p),
        st.st_mtime_ns,
        st.st_size,
        format,
        columns,
        functions,
        tuple(models) if models else None,
        tuple(log_types) if log_types else None,
        max_bytes,
    )
    if trace.bin_s is None:
        return trace
    rng = np.random.default_rng(seed)
    t = np.sort(trace.timestamps + rng.random(len(trace)) * trace.bin_s)
    return Trace(frozen(t), None, None, None, trace.source, trace.bin_s)
