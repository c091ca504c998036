"""Trace replay: real request traces as arrival times and token counts, replayed at any rate.

Formats (`load_trace`): `azure-llm` (Azure LLM inference CSV), `azure-functions` (per-minute
invocation counts, spread uniformly inside each minute), `mooncake` (JSONL with prefix-block
hash_ids), `burstgpt` (CSV), `csv` / `jsonl` (any columns, mapped by `TraceColumns`), and
`requests` (a previous surgecast run's requests.jsonl, sorted by intended start because it is
written in finish order). Every other format must be sorted by time: an unsorted trace is
refused, naming the first line that goes backwards. Bad files raise `TraceError` listing every
problem at once with file, line and column. Files over `MAX_TRACE_BYTES` are refused.

Replay (`TraceReplay.plan`) treats the trace as periodic: its period is the span from the first
to the last request plus one mean gap, so a window longer than the trace loops it.

Rate scaling keeps the burst structure. Scaling by k superposes floor(k) copies of the trace,
each read from a different offset (copy 0 at start_s, copy j at start_s + P (j + u_j) / m with
u_j uniform in [-1/4, 1/4], m the number of copies), each keeping its own timestamps and
lengths; a fractional part f adds one more copy thinned by independent Bernoulli(f) draws, and
k < 1 thins the trace itself. The mean rate is multiplied by k while every burst keeps its
duration and shape, unlike compressing time (`time_scale`), which shortens bursts too.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from scenarios.base import Strict
from scenarios.traffic import check_budget

MAX_TRACE_BYTES = 256 * 2**20  # larger files are refused: cut them or raise `max_bytes`
MAX_LISTED_PROBLEMS = 20
MAX_MESSAGE_CHARS = 240  # a problem's text is cut to this length

TraceFormat = Literal[
    "azure-llm", "azure-functions", "mooncake", "burstgpt", "csv", "jsonl", "requests"
]
_TABLE_FORMATS = ("csv", "jsonl")


class TraceError(Exception):
    """A trace that cannot be used; `problems` lists every error found (file, line, column)."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


class TraceColumns(Strict):
    """Where a generic csv/jsonl trace keeps each field, and the timestamp's unit."""

    timestamp: str = Field(min_length=1)
    prompt_tokens: str | None = None
    output_tokens: str | None = None
    hash_ids: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "iso"] = "s"


class TopFunctions(Strict):
    """The N azure-functions rows with the most invocations."""

    top: int = Field(ge=1, le=100_000)


FunctionSelect = tuple[str, ...] | TopFunctions  # HashFunction prefixes, or the top N


@dataclass(frozen=True, eq=False)
class Trace:
    """A parsed trace: sorted timestamps in seconds from its first request, per-row lengths and
    prefix-block hash ids where the format has them. Arrays are read-only (they are cached)."""

    timestamps: np.ndarray
    prompt_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    hash_ids: Sequence[tuple[int, ...]] | None
    source: str
    # azure-functions: 60; times are uniform inside each minute and count from the start of
    # the first minute with an invocation, so per-minute counts are kept exactly
    bin_s: float | None = None

    def __len__(self) -> int:
        return int(self.timestamps.size)

    @property
    def period(self) -> float:
        """The replay loop's period: span plus one mean gap (1 s for a single request); for a
        binned trace, up to the end of its last bin."""
        n, span = len(self), float(self.timestamps[-1])
        if self.bin_s:
            return (math.floor(span / self.bin_s) + 1) * self.bin_s
        return span + span / (n - 1) if n > 1 and span > 0 else max(span, 1.0)


@dataclass(frozen=True, eq=False)
class TracePlan:
    """Planned arrivals from a trace: times in [0, duration_s), sorted; the trace row each came
    from; lengths and hash ids from those rows (None with lengths: workload)."""

    times: np.ndarray
    rows: np.ndarray
    prompt_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    hash_ids: list[tuple[int, ...]] | None = field(default=None)


def block_prefix(
    hash_ids: Sequence[int], prompt_tokens: int, block_tokens: int = 512
) -> tuple[tuple[int, int], ...]:
    """(hash, tokens) prefix segments of a Mooncake-style row: one block of block_tokens per
    hash id, the last one cut to the prompt's length (RequestSpec.prefix's shape)."""
    out: list[tuple[int, int]] = []
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            break
        out.append((int(h), min(block_tokens, left)))
        left -= block_tokens
    return tuple(out)


# ---------------------------------------------------------------- problem collection


class _Problems:
    """Problems of one file, listed in line order, the first MAX_LISTED_PROBLEMS in full."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[int, int, str]] = []  # (line, arrival order, text)

    @property
    def count(self) -> int:
        return len(self.items)

    def add(self, msg: str, line: int | None = None, column: str | None = None) -> None:
        if len(msg) > MAX_MESSAGE_CHARS:  # a value quoted whole could be the whole file
            msg = msg[: MAX_MESSAGE_CHARS - 3] + "..."
        if column is not None and len(column) > 80:
            column = column[:77] + "..."
        where = ", ".join(x for x in (line and f"line {line}", column and f"column {column}") if x)
        text = f"{self.name}: {where}: {msg}" if where else f"{self.name}: {msg}"
        self.items.append((line or 0, len(self.items), text))

    def fail(self, msg: str) -> TraceError:
        self.add(msg)
        return self.error()

    def error(self) -> TraceError:
        listed = [text for _, _, text in sorted(self.items)[:MAX_LISTED_PROBLEMS]]
        more = self.count - len(listed)
        return TraceError(self.name, listed + ([f"... and {more} more"] if more else []))

    def check(self) -> None:
        if self.items:
            raise self.error()


def _read_text(path: Path, max_bytes: int) -> str:
    problems = _Problems(str(path))
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


# ---------------------------------------------------------------- value parsing


_ISO = re.compile(
    r"^\s*(\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?)?)(?:[.,](\d+))?\s*(Z|[+-]\d\d:?\d\d)?\s*$"
)
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_MISSING = object()


class _Bad(ValueError):
    pass


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or raw is None:
        raise _Bad(f"not a number, got {raw!r}")
    if isinstance(raw, int | float):
        x = float(raw)
    else:
        try:
            x = float(str(raw).strip())
        except ValueError:
            raise _Bad(f"not a number, got {raw!r}") from None
    if not math.isfinite(x):
        raise _Bad(f"not a finite number, got {raw!r}")
    return x


def _count(raw: Any) -> int:
    x = _number(raw)
    if x != int(x):
        raise _Bad(f"not a whole number, got {raw!r}")
    if x < 0:
        raise _Bad(f"must be >= 0, got {raw!r}")
    return int(x)


def _iso_seconds(raw: Any) -> tuple[float, float]:
    """(whole epoch seconds, fraction) of an ISO-8601 datetime; naive times are UTC."""
    m = _ISO.match(str(raw)) if isinstance(raw, str) else None
    if not m:
        raise _Bad(f"not a date-time like 2023-11-16 18:15:46.680, got {raw!r}")
    base, frac, tz = m.groups()
    try:
        dt = datetime.fromisoformat(base + ("+00:00" if tz in (None, "Z") else tz))
    except ValueError:
        raise _Bad(f"not a valid date-time, got {raw!r}") from None
    return dt.replace(tzinfo=dt.tzinfo or UTC).timestamp(), float("0." + frac) if frac else 0.0


def _hash_ids(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, str):
        parts = [p for p in re.split(r"[\s,;\[\]]+", raw) if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise _Bad(f"not a list of integers, got {raw!r}") from None
    if isinstance(raw, list) and all(isinstance(h, int) and not isinstance(h, bool) for h in raw):
        return tuple(raw)
    raise _Bad(f"not a list of integers, got {raw!r}")


# ---------------------------------------------------------------- table layouts


@dataclass(frozen=True)
class _Layout:
    timestamp: str
    unit: str
    prompt: str | None
    output: str | None
    hash_ids: str | None = None
    jsonl: bool = False
    keep: tuple[tuple[str, frozenset[str]], ...] = ()  # (column, accepted lowercased values)
    sort: bool = False  # requests.jsonl is written in finish order
    null_lengths: bool = False  # failed requests carry no usage: filled with the median
    torn_tail: bool = False  # a killed writer leaves a torn last line


_FIXED = {
    "azure-llm": _Layout("TIMESTAMP", "iso", "ContextTokens", "GeneratedTokens"),
    "burstgpt": _Layout("Timestamp", "s", "Request tokens", "Response tokens"),
    "mooncake": _Layout("timestamp", "ms", "input_length", "output_length", "hash_ids", True),
    "requests": _Layout(
        "intended_start", "s", "prompt_tokens", "output_tokens", None, True, (), True, True, True
    ),
}


Getter = Callable[[str], Any]


def _csv_rows(text: str, layout: _Layout, p: _Problems) -> Iterator[tuple[int, Getter]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    index = {name.strip(): i for i, name in enumerate(header)}
    wanted = [c for c in (layout.timestamp, layout.prompt, layout.output, layout.hash_ids) if c]
    wanted += [c for c, _ in layout.keep]
    missing = [c for c in wanted if c not in index]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        for c in missing:
            p.add(f"missing column (found {found})", 1, repr(c))
        raise p.error()
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            p.add(f"expected {len(header)} fields, got {len(row)}", reader.line_num)
            continue
        yield reader.line_num, lambda c, row=row: row[index[c]]  # type: ignore[misc]


def _jsonl_rows(text: str, layout: _Layout, p: _Problems) -> Iterator[tuple[int, Getter]]:
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON, too deep, an integer too long
            if layout.torn_tail and n == len(lines):
                break
            what = f"{e.msg} (character {e.colno})" if isinstance(e, json.JSONDecodeError) else e
            p.add(f"not valid JSON: {what}", n)
            continue
        if not isinstance(obj, dict):
            p.add(f"not a JSON object, got {type(obj).__name__}", n)
            continue

        def get(c: str, obj: dict[str, Any] = obj) -> Any:
            if c not in obj:
                raise _Bad(f"missing (found {', '.join(map(repr, obj)) or 'no fields'})")
            return obj[c]

        yield n, get


def _parse_table(name: str, text: str, layout: _Layout) -> Trace:
    """Gather the layout's columns row by row, then convert each column at once (a per-cell
    pass runs only on a column that fails, to name every bad cell)."""
    p = _Problems(name)
    names = [c for c in (layout.timestamp, layout.prompt, layout.output, layout.hash_ids) if c]
    lines: list[int] = []
    raw: dict[str, list[Any]] = {c: [] for c in names}
    filtered = 0
    for line, get in (_jsonl_rows if layout.jsonl else _csv_rows)(text, layout, p):
        if any(str(get(c)).strip().lower() not in ok for c, ok in layout.keep):
            filtered += 1
            continue
        lines.append(line)
        for c in names:
            try:
                raw[c].append(get(c))
            except _Bad as e:
                p.add(str(e), line, c)
                raw[c].append(_MISSING)
    if not lines:
        if not p.count:
            p.add("no data rows" + (f" ({filtered} rows filtered out)" if filtered else ""))
        raise p.error()

    line_arr = np.asarray(lines)
    if layout.unit == "iso":
        whole, frac = _iso_column(raw[layout.timestamp], line_arr, layout.timestamp, p)
    else:
        whole = _number_column(raw[layout.timestamp], line_arr, layout.timestamp, p)
        whole = whole * _UNIT[layout.unit]
        frac = np.zeros_like(whole)
    prompt = output = None
    if layout.prompt:
        prompt = _count_column(raw[layout.prompt], line_arr, layout.prompt, p, layout)
    if layout.output:
        output = _count_column(raw[layout.output], line_arr, layout.output, p, layout)
    hashes: list[tuple[int, ...]] = []
    if layout.hash_ids:
        for line, v in zip(lines, raw[layout.hash_ids], strict=True):
            try:
                hashes.append(_hash_ids(v) if v is not _MISSING else ())
            except _Bad as e:
                p.add(str(e), line, layout.hash_ids)
    if not layout.sort:  # among the readable timestamps, listed with every other problem
        readable = np.flatnonzero(np.isfinite(whole + frac) & (whole >= 0))
        ts = whole[readable] + frac[readable]  # ordering only: float precision suffices
        back = np.flatnonzero(np.diff(ts) < 0)
        if back.size:
            i, before = int(readable[back[0] + 1]), int(readable[back[0]])
            p.add(
                f"timestamps go backwards (line {lines[before]} is later); "
                f"{back.size} such place(s): sort the trace by time first",
                lines[i],
                layout.timestamp,
            )
    p.check()

    order = np.argsort(whole + frac, kind="stable") if layout.sort else np.arange(len(lines))
    whole, frac = whole[order], frac[order]
    t = (whole - whole[0]) + (frac - frac[0])
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise p.fail(
            f"line {lines[i]}: timestamps go backwards (line {lines[i - 1]} is later); "
            f"{back.size} such place(s): sort the trace by time first"
        )
    return Trace(
        timestamps=_frozen(t),
        prompt_tokens=None if prompt is None else _frozen(prompt[order]),
        output_tokens=None if output is None else _frozen(output[order]),
        hash_ids=tuple(hashes[i] for i in order) if layout.hash_ids else None,
        source=name,
    )


def _cells(
    values: list[Any], lines: np.ndarray, column: str, p: _Problems, conv: Callable[[Any], Any]
) -> list[Any]:
    """Per-cell conversion, reporting each bad cell; bad cells become None."""
    out: list[Any] = []
    for line, v in zip(lines.tolist(), values, strict=True):
        try:
            out.append(None if v is _MISSING else conv(v))
        except _Bad as e:
            p.add(str(e), line, column)
            out.append(None)
    return out


def _number_column(values: list[Any], lines: np.ndarray, column: str, p: _Problems) -> np.ndarray:
    """Finite timestamps >= 0 (bad cells reported, left as nan)."""
    try:
        if any(isinstance(v, bool) or v is _MISSING or v is None for v in values):
            raise ValueError
        x = np.array(values, dtype=float)
        for i in np.flatnonzero(~np.isfinite(x)):
            p.add(f"not a finite number, got {values[i]!r}", int(lines[i]), column)
    except (ValueError, TypeError):
        cells = _cells(values, lines, column, p, _number)
        x = np.array([np.nan if v is None else v for v in cells])
    for i in np.flatnonzero(x < 0):
        p.add(f"negative timestamp, got {values[i]!r}", int(lines[i]), column)
    return x


_SIMPLE_ISO = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?")


def _iso_column(
    values: list[Any], lines: np.ndarray, column: str, p: _Problems
) -> tuple[np.ndarray, np.ndarray]:
    """(whole epoch seconds, fractions); a fast path for naive YYYY-MM-DD HH:MM:SS[.f*] text."""
    if all(isinstance(v, str) and _SIMPLE_ISO.fullmatch(v) for v in values):
        whole = np.array([v[:19] for v in values], dtype="datetime64[s]").astype(np.int64)
        frac = np.array([float("0" + v[19:]) if len(v) > 19 else 0.0 for v in values])
        return whole.astype(float), frac
    pairs = _cells(values, lines, column, p, _iso_seconds)
    whole = np.array([np.nan if q is None else q[0] for q in pairs])  # bad cells: nan
    frac = np.array([0.0 if q is None else q[1] for q in pairs])
    return whole, frac


def _count_column(
    values: list[Any], lines: np.ndarray, column: str, p: _Problems, layout: _Layout
) -> np.ndarray:
    """Whole numbers >= 0; with layout.null_lengths a null takes the column's median."""
    try:
        if not all(type(v) is int or type(v) is str for v in values):
            raise ValueError
        x = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        nulls = [v is None and layout.null_lengths for v in values]
        conv = _cells([0 if n else v for v, n in zip(values, nulls, strict=True)], lines, column,
                      p, _count)  # fmt: skip
        known = [c for c, n in zip(conv, nulls, strict=True) if c is not None and not n]
        fill = int(np.median(known)) if known else 0
        return np.array([fill if n or c is None else c for c, n in zip(conv, nulls, strict=True)],
                        dtype=np.int64)  # fmt: skip
    for i in np.flatnonzero(x < 0):
        p.add(f"must be >= 0, got {values[i]!r}", int(lines[i]), column)
    return x


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ---------------------------------------------------------------- azure functions


def _parse_functions(name: str, text: str, functions: FunctionSelect | None) -> Trace:
    """Per-minute counts summed over the selected rows; timestamps are the minute starts
    repeated by count (load_trace spreads them inside each minute)."""
    p = _Problems(name)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    fixed = ["HashOwner", "HashApp", "HashFunction", "Trigger"]
    if header[:4] != fixed:
        raise p.fail(f"line 1: expected columns {', '.join(fixed)} first, got {header[:4]}")
    minutes: list[int] = []
    for j, h in enumerate(header[4:], 5):
        try:
            minutes.append(int(h))
        except ValueError:
            p.add(f"minute column is not an integer, got {h!r}", 1, f"{j}")
    p.check()
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) != len(header):
            p.add(f"expected {len(header)} fields, got {len(row)}", line)
            continue
        try:
            counts = np.array(row[4:], dtype=np.int64)
        except ValueError:
            for j, cell in enumerate(row[4:]):
                try:
                    _count(cell)
                except _Bad as e:
                    p.add(str(e), line, f"{header[j + 4]} ({j + 5})")
            continue
        if (counts < 0).any():
            j = int(np.flatnonzero(counts < 0)[0])
            p.add(f"must be >= 0, got {row[j + 4]!r}", line, f"{header[j + 4]} ({j + 5})")
            continue
        ids.append(row[2])
        rows.append(counts)
    if not rows and not p.count:
        p.add("no data rows")
    p.check()
    matrix = np.vstack(rows)
    if isinstance(functions, TopFunctions):
        pick = np.argsort(-matrix.sum(axis=1), kind="stable")[: functions.top]
    elif functions:
        pick = np.array([i for i, h in enumerate(ids) if h.startswith(functions)], dtype=int)
        if pick.size == 0:
            raise p.fail(f"no HashFunction starts with any of {list(functions)}")
    else:
        pick = np.arange(len(rows))
    per_minute = matrix[pick].sum(axis=0)
    if per_minute.sum() == 0:
        raise p.fail("the selected functions have no invocations")
    starts = (np.asarray(minutes) - minutes[0]) * 60.0
    t = np.repeat(starts, per_minute)
    return Trace(_frozen(t - t[0]), None, None, None, name, bin_s=60.0)


# ---------------------------------------------------------------- loading and caching


def _layout(format: str, columns: TraceColumns | None, models: Any, log_types: Any) -> _Layout:
    if format in _TABLE_FORMATS:
        if columns is None:
            raise ValueError(f"format {format!r} needs a columns mapping")
        c = columns
        return _Layout(
            c.timestamp, c.timestamp_unit, c.prompt_tokens, c.output_tokens, c.hash_ids,
            jsonl=format == "jsonl",
        )  # fmt: skip
    base = _FIXED[format]
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
        return _parse_functions(path, text, functions)
    return _parse_table(path, text, _layout(format, columns, models, log_types))


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
    if format not in (*_FIXED, *_TABLE_FORMATS, "azure-functions"):
        raise TraceError(str(p), [f"{p}: unknown trace format {format!r}"])
    if (format in _TABLE_FORMATS) != (columns is not None):
        need = "needs" if format in _TABLE_FORMATS else "takes no"
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
    return Trace(_frozen(t), None, None, None, trace.source, trace.bin_s)


# ---------------------------------------------------------------- scenario models


class _TraceSource(Strict):
    path: str = Field(min_length=1)
    format: TraceFormat
    columns: TraceColumns | None = None
    functions: tuple[str, ...] | TopFunctions | None = None
    models: tuple[str, ...] | None = None
    log_types: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _options_fit_format(self) -> _TraceSource:
        f = self.format
        if f in _TABLE_FORMATS and self.columns is None:
            raise ValueError(f"columns: required for format {f!r}")
        if f not in _TABLE_FORMATS and self.columns is not None:
            raise ValueError(f"columns: only for formats csv and jsonl, not {f!r}")
        if self.functions is not None and f != "azure-functions":
            raise ValueError(f"functions: only for format azure-functions, not {f!r}")
        if (self.models or self.log_types) and f != "burstgpt":
            raise ValueError(f"models, log_types: only for format burstgpt, not {f!r}")
        return self

    def resolve(self, base_dir: Path | None = None) -> Path:
        """The trace's file: a relative path is tried under base_dir (the scenario's folder)
        first, then under the current directory."""
        p = Path(self.path).expanduser()
        if p.is_absolute() or base_dir is None:
            return p
        return base_dir / p if (base_dir / p).exists() or not p.exists() else p

    def load(self, base_dir: Path | None = None, seed: int = 0) -> Trace:
        """The parsed trace (see load_trace); TraceError names every place tried."""
        path = self.resolve(base_dir)
        if not path.exists() and base_dir is not None and not Path(self.path).is_absolute():
            raise TraceError(
                self.path,
                [f"{self.path}: no such file under {base_dir} nor under the current directory"],
            )
        return load_trace(
            path,
            self.format,
            self.columns,
            functions=self.functions,
            models=self.models,
            log_types=self.log_types,
            seed=seed,
        )

    def _has_lengths(self) -> bool:
        if self.format == "azure-functions":
            return False
        c = self.columns
        return c is None or (c.prompt_tokens is not None and c.output_tokens is not None)


class TraceReplay(_TraceSource):
    """Arrivals (and, with lengths: trace, token counts) replayed from a trace.

    time_scale multiplies the trace's timeline (0.5 plays it twice as fast, bursts compressed
    too); rate_scale multiplies the rate keeping bursts (see the module docstring); start_s is
    the offset into the trace, in trace seconds (past the end it wraps). The trace loops when
    the window outlasts it. Relative paths resolve against plan's base_dir (the scenario's
    folder) first, then the current directory. Every copy keeps its rows' hash_ids, so scaled
    traffic shares prefixes as more users of the same services would.
    """

    closed: ClassVar[bool] = False
    type: Literal["trace"]
    time_scale: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    rate_scale: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    start_s: float = Field(0.0, ge=0, le=1e9, allow_inf_nan=False)
    lengths: Literal["trace", "workload"] = "trace"
    block_tokens: int = Field(512, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _lengths_available(self) -> TraceReplay:
        if self.lengths == "trace" and not self._has_lengths():
            raise ValueError(
                "lengths: this trace has no prompt and output token counts; use lengths: workload"
            )
        return self

    def mean_rate(self, duration_s: float, base_dir: Path | None = None) -> float:
        """Requests per second of the replay at rate_scale 1 (reads the trace)."""
        trace = self.load(base_dir)
        return len(trace) / trace.period / self.time_scale * self.rate_scale

    def plan(
        self,
        rng: np.random.Generator,
        duration_s: float,
        rate_scale: float = 1.0,
        base_dir: Path | None = None,
    ) -> TracePlan:
        """Sorted arrivals in [0, duration_s) at rate self.rate_scale * rate_scale."""
        if not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise ValueError(f"rate_scale: must be a finite number > 0, got {rate_scale}")
        if not (duration_s >= 0 and math.isfinite(duration_s)):
            raise ValueError(f"duration_s: must be a finite number >= 0, got {duration_s}")
        seed = int(rng.integers(2**63)) if self.format == "azure-functions" else 0
        trace = self.load(base_dir, seed)
        k = self.rate_scale * rate_scale
        period, window = trace.period, duration_s / self.time_scale
        whole, frac = int(k), k - int(k)
        copies = whole + (frac > 1e-12)
        # rows read before thinning: at least the expected count, and k < 1 reads a whole copy
        check_budget(len(trace) * window / period * copies, f"trace {trace.source}")
        times, rows = [], []
        for j in range(copies):
            jitter = rng.uniform(-0.25, 0.25) if j else 0.0
            offset = self.start_s + period * (j + jitter) / copies
            t, r = _window(trace.timestamps, period, offset, window)
            keep_p = 1.0 if j < whole else frac
            if keep_p < 1.0:
                mask = rng.random(t.size) < keep_p
                t, r = t[mask], r[mask]
            times.append(t)
            rows.append(r)
        t_all, r_all = np.concatenate(times), np.concatenate(rows)
        order = np.argsort(t_all, kind="stable")
        t_all, r_all = t_all[order] * self.time_scale, r_all[order]
        inside = t_all < duration_s
        t_all, r_all = t_all[inside], r_all[inside]
        if self.lengths == "workload":
            return TracePlan(t_all, r_all, None, None, None)
        assert trace.prompt_tokens is not None and trace.output_tokens is not None
        hashes = [trace.hash_ids[i] for i in r_all] if trace.hash_ids is not None else None
        return TracePlan(
            t_all, r_all, trace.prompt_tokens[r_all], trace.output_tokens[r_all], hashes
        )


def _window(
    ts: np.ndarray, period: float, offset: float, window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Times (from offset) and rows of the periodic trace inside [offset, offset + window)."""
    shift = offset % period
    i0 = int(np.searchsorted(ts, shift))
    rows = np.concatenate([np.arange(i0, ts.size), np.arange(i0)])
    rel = ts[rows] - shift
    rel[ts.size - i0 :] += period
    laps = max(1, math.ceil(window / period) + 1)
    t = (rel[None, :] + period * np.arange(laps)[:, None]).ravel()
    r = np.tile(rows, laps)
    inside = t < window
    return t[inside], r[inside]


class TraceLengths(_TraceSource):
    """(prompt, output) token counts resampled from a trace's rows, keeping their correlation."""

    @model_validator(mode="after")
    def _lengths_available(self) -> TraceLengths:
        if not self._has_lengths():
            raise ValueError("format: this trace has no prompt and output token counts")
        return self

    def sample(
        self, rng: np.random.Generator, n: int, base_dir: Path | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """n (prompt, output) pairs drawn with replacement from whole rows."""
        trace = self.load(base_dir)
        assert trace.prompt_tokens is not None and trace.output_tokens is not None
        idx = rng.integers(0, len(trace), size=n)
        return trace.prompt_tokens[idx].copy(), trace.output_tokens[idx].copy()
