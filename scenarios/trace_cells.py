"""A trace's cells as values: numbers, counts, ISO dates and hash-id lists, one cell or a whole
column at once (a per-cell pass runs only on a column that fails, to name every bad cell)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from scenarios.trace_errors import Problems

_ISO = re.compile(
    r"^\s*(\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?)?)(?:[.,](\d+))?\s*(Z|[+-]\d\d:?\d\d)?\s*$"
)
_SIMPLE_ISO = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
MISSING = object()  # a cell the row does not have (its problem already listed)


class BadCell(ValueError):
    """A cell that is not what its column needs; the message says what it got."""


# ---------------------------------------------------------------- one cell


def number(raw: Any) -> float:
    if isinstance(raw, bool) or raw is None:
        raise BadCell(f"not a number, got {raw!r}")
    if isinstance(raw, int | float):
        x = float(raw)
    else:
        try:
            x = float(str(raw).strip())
        except ValueError:
            raise BadCell(f"not a number, got {raw!r}") from None
    if not math.isfinite(x):
        raise BadCell(f"not a finite number, got {raw!r}")
    return x


def count(raw: Any) -> int:
    x = number(raw)
    if x != int(x):
        raise BadCell(f"not a whole number, got {raw!r}")
    if x < 0:
        raise BadCell(f"must be >= 0, got {raw!r}")
    return int(x)


def iso_seconds(raw: Any) -> tuple[float, float]:
    """(whole epoch seconds, fraction) of an ISO-8601 datetime; naive times are UTC."""
    m = _ISO.match(str(raw)) if isinstance(raw, str) else None
    if not m:
        raise BadCell(f"not a date-time like 2023-11-16 18:15:46.680, got {raw!r}")
    base, frac, tz = m.groups()
    try:
        dt = datetime.fromisoformat(base + ("+00:00" if tz in (None, "Z") else tz))
    except ValueError:
        raise BadCell(f"not a valid date-time, got {raw!r}") from None
    return dt.replace(tzinfo=dt.tzinfo or UTC).timestamp(), float("0." + frac) if frac else 0.0


def hash_ids(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, str):
        parts = [p for p in re.split(r"[\s,;\[\]]+", raw) if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise BadCell(f"not a list of integers, got {raw!r}") from None
    if isinstance(raw, list) and all(isinstance(h, int) and not isinstance(h, bool) for h in raw):
        return tuple(raw)
    raise BadCell(f"not a list of integers, got {raw!r}")


# ---------------------------------------------------------------- whole columns


def _cells(
    values: list[Any], lines: np.ndarray, column: str, p: Problems, conv: Callable[[Any], Any]
) -> list[Any]:
    """Per-cell conversion, reporting each bad cell; bad cells become None."""
    out: list[Any] = []
    for line, v in zip(lines.tolist(), values, strict=True):
        try:
            out.append(None if v is MISSING else conv(v))
        except BadCell as e:
            p.add(str(e), line, column)
            out.append(None)
    return out


def number_column(values: list[Any], lines: np.ndarray, column: str, p: Problems) -> np.ndarray:
    """Finite timestamps >= 0 (bad cells reported, left as nan)."""
    try:
        if any(isinstance(v, bool) or v is MISSING or v is None for v in values):
            raise ValueError
        x = np.array(values, dtype=float)
        for i in np.flatnonzero(~np.isfinite(x)):
            p.add(f"not a finite number, got {values[i]!r}", int(lines[i]), column)
    except (ValueError, TypeError):
        cells = _cells(values, lines, column, p, number)
        x = np.array([np.nan if v is None else v for v in cells])
    for i in np.flatnonzero(x < 0):
        p.add(f"negative timestamp, got {values[i]!r}", int(lines[i]), column)
    return x


def iso_column(
    values: list[Any], lines: np.ndarray, column: str, p: Problems
) -> tuple[np.ndarray, np.ndarray]:
    """(whole epoch seconds, fractions); a fast path for naive YYYY-MM-DD HH:MM:SS[.f*] text."""
    if all(isinstance(v, str) and _SIMPLE_ISO.fullmatch(v) for v in values):
        whole = np.array([v[:19] for v in values], dtype="datetime64[s]").astype(np.int64)
        frac = np.array([float("0" + v[19:]) if len(v) > 19 else 0.0 for v in values])
        return whole.astype(float), frac
    pairs = _cells(values, lines, column, p, iso_seconds)
    whole = np.array([np.nan if q is None else q[0] for q in pairs])  # bad cells: nan
    frac = np.array([0.0 if q is None else q[1] for q in pairs])
    return whole, frac


def count_column(
    values: list[Any], lines: np.ndarray, column: str, p: Problems, null_lengths: bool
) -> np.ndarray:
    """Whole numbers >= 0; with `null_lengths` a null takes the column's median."""
    try:
        if not all(type(v) is int or type(v) is str for v in values):
            raise ValueError
        x = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        nulls = [v is None and null_lengths for v in values]
        conv = _cells([0 if n else v for v, n in zip(values, nulls, strict=True)], lines, column,
                      p, count)  # fmt: skip
        known = [c for c, n in zip(conv, nulls, strict=True) if c is not None and not n]
        fill = int(np.median(known)) if known else 0
        return np.array([fill if n or c is None else c for c, n in zip(conv, nulls, strict=True)],
                        dtype=np.int64)  # fmt: skip
    for i in np.flatnonzero(x < 0):
        p.add(f"must be >= 0, got {values[i]!r}", int(lines[i]), column)
    return x
