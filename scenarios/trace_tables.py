"""Table traces (azure-llm, burstgpt, mooncake, requests, and csv/jsonl by their columns): each
format's layout, its rows read from CSV or JSON lines, and the rows parsed into a `Trace`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scenarios.trace_cells import (
    MISSING,
    UNIT_SECONDS,
    BadCell,
    count_column,
    hash_ids,
    iso_column,
    number_column,
)
from scenarios.trace_errors import Problems
from scenarios.trace_types import Trace, frozen


@dataclass(frozen=True)
class Layout:
    """Where a table format keeps each field, and how its rows are read."""

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


FIXED_LAYOUTS = {
    "azure-llm": Layout("TIMESTAMP", "iso", "ContextTokens", "GeneratedTokens"),
    "burstgpt": Layout("Timestamp", "s", "Request tokens", "Response tokens"),
    "mooncake": Layout("timestamp", "ms", "input_length", "output_length", "hash_ids", True),
    "requests": Layout(
        "intended_start", "s", "prompt_tokens", "output_tokens", None, True, (), True, True, True
    ),
}


Getter = Callable[[str], Any]


def csv_rows(text: str, layout: Layout, p: Problems) -> Iterator[tuple[int, Getter]]:
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


def jsonl_rows(text: str, layout: Layout, p: Problems) -> Iterator[tuple[int, Getter]]:
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
                raise BadCell(f"missing (found {', '.join(map(repr, obj)) or 'no fields'})")
            return obj[c]

        yield n, get


def parse_table(name: str, text: str, layout: Layout) -> Trace:
    """Gather the layout's columns row by row, then convert each column at once (a per-cell
    pass runs only on a column that fails, to name every bad cell)."""
    p = Problems(name)
    lines, raw = _gather(text, layout, p)
    line_arr = np.asarray(lines)
    whole, frac = _timestamps(raw[layout.timestamp], line_arr, layout, p)
    prompt = output = None
    if layout.prompt:
        prompt = count_column(raw[layout.prompt], line_arr, layout.prompt, p, layout.null_lengths)
    if layout.output:
        output = count_column(raw[layout.output], line_arr, layout.output, p, layout.null_lengths)
    hashes = (
        _hash_column(raw[layout.hash_ids], lines, layout.hash_ids, p) if layout.hash_ids else []
    )
    if not layout.sort:  # among the readable timestamps, listed with every other problem
        _check_sorted(whole, frac, lines, layout.timestamp, p)
    p.check()

    order = np.argsort(whole + frac, kind="stable") if layout.sort else np.arange(len(lines))
    t = _relative_times(whole[order], frac[order], lines, p)
    return Trace(
        timestamps=frozen(t),
        prompt_tokens=None if prompt is None else frozen(prompt[order]),
        output_tokens=None if output is None else frozen(output[order]),
        hash_ids=tuple(hashes[i] for i in order) if layout.hash_ids else None,
        source=name,
    )


def _gather(text: str, layout: Layout, p: Problems) -> tuple[list[int], dict[str, list[Any]]]:
    """The line of every row the layout keeps, and each of its columns' raw cells (MISSING
    where a row lacks one); no rows at all is a problem."""
    names = [c for c in (layout.timestamp, layout.prompt, layout.output, layout.hash_ids) if c]
    lines: list[int] = []
    raw: dict[str, list[Any]] = {c: [] for c in names}
    filtered = 0
    for line, get in (jsonl_rows if layout.jsonl else csv_rows)(text, layout, p):
        if any(str(get(c)).strip().lower() not in ok for c, ok in layout.keep):
            filtered += 1
            continue
        lines.append(line)
        for c in names:
            try:
                raw[c].append(get(c))
            except BadCell as e:
                p.add(str(e), line, c)
                raw[c].append(MISSING)
    if not lines:
        if not p.count:
            p.add("no data rows" + (f" ({filtered} rows filtered out)" if filtered else ""))
        raise p.error()
    return lines, raw


def _timestamps(
    values: list[Any], lines: np.ndarray, layout: Layout, p: Problems
) -> tuple[np.ndarray, np.ndarray]:
    """(whole seconds, fractions) of the timestamp column, in the layout's unit."""
    if layout.unit == "iso":
        return iso_column(values, lines, layout.timestamp, p)
    whole = number_column(values, lines, layout.timestamp, p) * UNIT_SECONDS[layout.unit]
    return whole, np.zeros_like(whole)


def _hash_column(
    values: list[Any], lines: list[int], column: str, p: Problems
) -> list[tuple[int, ...]]:
    """Each row's hash ids (a bad cell is a problem and left out)."""
    hashes: list[tuple[int, ...]] = []
    for line, v in zip(lines, values, strict=True):
        try:
            hashes.append(hash_ids(v) if v is not MISSING else ())
        except BadCell as e:
            p.add(str(e), line, column)
    return hashes


def _check_sorted(
    whole: np.ndarray, frac: np.ndarray, lines: list[int], column: str, p: Problems
) -> None:
    """A problem where the readable timestamps first go backwards."""
    readable = np.flatnonzero(np.isfinite(whole + frac) & (whole >= 0))
    ts = whole[readable] + frac[readable]  # ordering only: float precision suffices
    back = np.flatnonzero(np.diff(ts) < 0)
    if back.size:
        i, before = int(readable[back[0] + 1]), int(readable[back[0]])
        p.add(
            f"timestamps go backwards (line {lines[before]} is later); "
            f"{back.size} such place(s): sort the trace by time first",
            lines[i],
            column,
        )


def _relative_times(
    whole: np.ndarray, frac: np.ndarray, lines: list[int], p: Problems
) -> np.ndarray:
    """Seconds from the first request (whole and fractional parts apart, for precision);
    TraceError where they go backwards."""
    t = (whole - whole[0]) + (frac - frac[0])
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise p.fail(
            f"line {lines[i]}: timestamps go backwards (line {lines[i - 1]} is later); "
            f"{back.size} such place(s): sort the trace by time first"
        )
    return t
