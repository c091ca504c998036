"""Azure Functions traces: per-minute invocation counts, summed over the selected functions."""

from __future__ import annotations

import csv
import io

import numpy as np

from scenarios.trace_cells import BadCell, count
from scenarios.trace_errors import Problems
from scenarios.trace_types import FunctionSelect, TopFunctions, Trace, frozen


def parse_functions(name: str, text: str, functions: FunctionSelect | None) -> Trace:
    """Per-minute counts summed over the selected rows; timestamps are the minute starts
    repeated by count (load_trace spreads them inside each minute)."""
    p = Problems(name)
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
                    count(cell)
                except BadCell as e:
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
    return Trace(frozen(t - t[0]), None, None, None, name, bin_s=60.0)
