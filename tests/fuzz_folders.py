"""Fuzzed run folders: a real run folder (tests/data/run-8a52588) with one thing made hostile,
field by field (every field of each record and of each contract document set to each hostile
value), line by line and file by file (missing, a folder, a link, a FIFO, empty, cut short,
garbage, one huge line). Used by tests/test_fuzz_run_folders.py and
benchmarks/fuzz_run_folders.py; the commands run through tests/fuzz_runner.py."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE = Path(__file__).parent / "data" / "run-8a52588"
JSONL = ("requests.jsonl", "simulated.jsonl", "telemetry.jsonl")
DOCS = ("run.json", "summary.json", "calibration.json", "backtest.json", "forecast.json")
OTHER = ("scenario.yaml",)
COPIES = 3  # requests.jsonl three times over: one bad line is then under the 5% that refuse
_MARK = "\u0001X\u0001"  # stands for the hostile value in serialised JSON, then replaced
_DUP = "\u0001D\u0001"  # a second key of the same name


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# Hostile values as raw JSON text (some are not JSON at all: NaN, Infinity, 10^400).
HOSTILE: dict[str, str] = {
    "null": "null",
    "true": "true",
    "false": "false",
    "zero": "0",
    "negative": "-1",
    "negative-float": "-0.5",
    "fraction": "0.5",
    "neg-zero": "-0.0",
    "denormal": "5e-324",
    "int64+1": str(2**63),
    "int-2^64": str(2**64),
    "int-400-digits": "1" + "0" * 400,
    "int-5000-digits": "9" * 5000,  # beyond Python's int parsing limit
    "float-1e308": "1e308",
    "float-1e400": "1e400",  # inf once parsed
    "float--1e400": "-1e400",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "str-NaN": '"NaN"',
    "str-inf": '"inf"',
    "str-number": '"12"',
    "str-empty": '""',
    "str-long": json.dumps("x" * 200_000),
    "str-nul": '"\\u0000"',
    "str-lone-surrogate": '"\\ud800"',
    "str-path": '"../../../../etc/passwd"',
    "list-empty": "[]",
    "list": "[1, 2, 3]",
    "list-null": "[null]",
    "list-str": '["a"]',
    "list-long": json.dumps([0.5] * 50_000),
    "dict-empty": "{}",
    "dict": '{"a": 1}',
    "nested-50": '{"a": ' * 50 + "1" + "}" * 50,
    "nested-100000": _deep(100_000),
}
FIELD_KINDS = (*HOSTILE, "missing", "dup-key")
LINE_KINDS = (
    "truncated",
    "garbage",
    "empty",
    "array",
    "number",
    "crlf",
    "bom",
    "nul",
    "duplicate",
    "reversed",
    "huge-line",
)
FILE_KINDS = (
    "missing",
    "directory",
    "link-missing",
    "link-loop",
    "link-dev-zero",
    "fifo",
    "empty",
    "truncated",
    "garbage",
    "huge-line",
)


@dataclass(frozen=True)
class Case:
    """One hostile change to the base folder: `kind` at `where` in `file` (a field's path,
    a line, or the whole file)."""

    file: str
    level: str  # field (of a document or of one line, or every line), line, file
    where: str  # a field path ("scenario.traffic.rate", "chunk_times"), "every", a line number
    kind: str

    def __str__(self) -> str:
        return f"{self.file}:{self.level}:{self.where}:{self.kind}"


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field path of a JSON value: each key of each object, the first item of each list."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list) and value:
        yield (*prefix, 0)
        yield from paths(value[0], (*prefix, 0))


def _path_text(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _path_of(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def _targets(base: Path) -> list[list[Case]]:
    """Every case, in lists taken in turn: each document, each JSON-lines file's fields on one
    line and on every line, its lines, and the files."""
    lists = []
    for name in DOCS:
        doc = json.loads((base / name).read_text())
        lists.append(
            [Case(name, "field", _path_text(p), k) for p in paths(doc) for k in FIELD_KINDS]
        )
    for name in JSONL:
        first = json.loads((base / name).read_text().splitlines()[0])
        fields = [_path_text(p) for p in paths(first)]
        for scope in ("one", "every"):
            lists.append([Case(name, f"field-{scope}", f, k) for f in fields for k in FIELD_KINDS])
        lists.append([Case(name, "line", "", k) for k in LINE_KINDS])
    names = (*DOCS, *JSONL, *OTHER, ".")
    lists.append([Case(n, "file", "", k) for n in names for k in FILE_KINDS])
    return lists


def cases(n: int, seed: int, base: Path = BASE) -> list[Case]:
    """`n` cases, each list of `_targets` shuffled (seeded) and the lists taken in turn, so a
    short list (a record's fields) is covered whole before a long one (run.json's)."""
    rng = random.Random(seed)
    lists = _targets(base)
    for one in lists:
        rng.shuffle(one)
    out: list[Case] = []
    while len(out) < n and any(lists):
        for one in lists:
            if one and len(out) < n:
                out.append(one.pop())
    return out


def space(base: Path = BASE) -> int:
    """How many distinct cases there are."""
    return sum(len(one) for one in _targets(base))


def make_folder(case: Case, dest: Path, seed: int, base: Path = BASE) -> Path:
    """A copy of `base` at `dest` with `case` applied; its records three times over."""
    shutil.copytree(base, dest)
    records = (dest / "requests.jsonl").read_text().splitlines()
    tripled = [r.replace('"id":"', f'"id":"{n}-', 1) for n in range(COPIES) for r in records]
    (dest / "requests.jsonl").write_text("\n".join(tripled) + "\n")
    rng = random.Random(f"{seed}:{case}")
    target = dest / case.file
    if case.level == "file":
        _file_case(target, case.kind, rng)
    elif case.level == "line":
        _line_case(target, case.kind, rng)
    elif case.file in DOCS:
        target.write_text(_set(json.loads(target.read_text()), case.where, case.kind))
    else:
        _jsonl_field(target, case, rng)
    return dest


def _set(doc: Any, where: str, kind: str) -> str:
    """`doc` as JSON text with the field at `where` made hostile (`kind`)."""
    *parents, last = _path_of(where)
    holder = doc
    for p in parents:
        holder = holder[p]
    if kind == "missing":
        del holder[last]
        return json.dumps(doc)
    if kind == "dup-key" and isinstance(holder, dict):  # the key twice: a hostile one first
        items = list(holder.items())
        holder.clear()
        for key, value in items:
            if key == last:
                holder[_DUP] = _MARK
            holder[key] = value
        return (
            json.dumps(doc)
            .replace(json.dumps(_DUP), json.dumps(last))
            .replace(json.dumps(_MARK), HOSTILE["str-long"])
        )
    holder[last] = _MARK
    raw = HOSTILE["str-long"] if kind == "dup-key" else HOSTILE[kind]
    return json.dumps(doc).replace(json.dumps(_MARK), raw)


def _jsonl_field(target: Path, case: Case, rng: random.Random) -> None:
    lines = target.read_bytes().splitlines()
    chosen = range(len(lines)) if case.level == "field-every" else [rng.randrange(len(lines))]
    for i in chosen:
        lines[i] = _set(json.loads(lines[i]), case.where, case.kind).encode()
    target.write_bytes(b"\n".join(lines) + b"\n")


def _huge_line(target: Path) -> bytes:
    """One record of a JSON-lines file with a million chunk times (about 10 MB), or for
    another file a 10 MB string field."""
    first = json.loads(target.read_bytes().splitlines()[0])
    if "chunk_times" in first:
        t0 = first["start"]
        first["chunk_times"] = [round(t0 + i * 1e-6, 6) for i in range(1_000_000)]
    else:
        first["huge"] = "x" * 10_000_000
    return json.dumps(first).encode()


def _line_case(target: Path, kind: str, rng: random.Random) -> None:
    lines = target.read_bytes().splitlines()
    i = rng.randrange(len(lines))
    if kind == "truncated":
        lines[i] = lines[i][: rng.randrange(1, len(lines[i]))]
    elif kind == "garbage":
        lines[i] = rng.randbytes(200).replace(b"\n", b" ")
    elif kind == "empty":
        lines.insert(i, b"")
    elif kind in ("array", "number"):
        lines[i] = b"[1, 2]" if kind == "array" else b"12"
    elif kind == "crlf":
        lines = [line + b"\r" for line in lines]
    elif kind == "bom":
        lines[0] = b"\xef\xbb\xbf" + lines[0]
    elif kind == "nul":
        lines[i] = lines[i][:10] + b"\x00" + lines[i][10:]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "reversed":
        lines.reverse()
    elif kind == "huge-line":
        lines[i] = _huge_line(target)
    target.write_bytes(b"\n".join(lines) + b"\n")


def _file_case(target: Path, kind: str, rng: random.Random) -> None:
    """The whole file (or with "." the folder itself) replaced or broken."""
    data = target.read_bytes() if target.is_file() else b""
    huge = _huge_line(target) if kind == "huge-line" and target.suffix == ".jsonl" else b""
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    if kind == "directory":
        target.mkdir()
    elif kind == "link-missing":
        target.symlink_to(target.with_name("nowhere"))
    elif kind == "link-loop":
        target.symlink_to(target)
    elif kind == "link-dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        target.write_bytes(rng.randbytes(4096))
    elif kind == "huge-line":
        target.write_bytes(huge or b'{"huge": "' + b"x" * 10_000_000 + b'"}\n')
