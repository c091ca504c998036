"""Query corpora read by path: CSV, JSON, ShareGPT, OpenAI request logs and plain text.

A scenario names a file and its format, and `load_corpus` reads it into a `Corpus` of single
queries (`texts`) and, for conversational formats, whole conversations as (role, text) turns. Every
problem in a file is reported at once in a `CorpusError`, each naming the file, the line and the
column or field. The catalog reads the project's own query sets (`scenarios/data/`); public
corpora stay outside the project (licences), in a corpus folder (`--corpus-dir`,
`$SURGECAST_CORPUS_DIR`): given one, a corpus with `in_corpus_dir` reads that file, under the
folder, instead of its `path`.

JSON selector (`text_field` for format "json"): dot-separated keys, each optionally followed by
`[n]` (one list item) or `[*]` (every item); a key `*` takes every value of a mapping (or every
item of a list). CLINC150's `data_full.json` (`{"train": [[text, intent], ...], ...}`):
`train[*][0]` reads its 15,000 training queries, `*[*][0]` all 23,700. Without a selector the
top level must be a list of strings.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from scenarios.base import Strict
from scenarios.scrub import scrub

MAX_PROBLEMS = 20  # problems listed in a CorpusError; the rest are counted
DEFAULT_MAX_MB = 256.0  # files larger than this are refused unless the spec raises the limit
_CACHE_SIZE = 16

Role = Literal["system", "user", "assistant"]
_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


class CorpusFile(Strict):
    """Where a corpus lives and how to read its queries.

    `text_field`: the column for "csv" (default `text`), the selector for "json" (see the module
    docstring), the conversations key for "sharegpt" (default `conversations`); unused for
    "openai-jsonl" and "text".
    """

    path: str
    format: Literal["csv", "json", "sharegpt", "openai-jsonl", "text"]
    text_field: str | None = None
    max_texts: int | None = Field(default=None, gt=0)  # keep the first N texts only
    max_mb: float = Field(default=DEFAULT_MAX_MB, gt=0)  # size limit of the file
    # replace e-mail addresses, phone numbers, card numbers and IBANs by placeholders (counted)
    scrub: bool = True


class CorpusSpec(CorpusFile):
    """A scenario's corpus: `path` (relative: to the scenario's folder, else the cwd), or, when a
    corpus folder is given, `in_corpus_dir` (relative: to that folder) when the spec has one."""

    in_corpus_dir: CorpusFile | None = None


CORPUS_DIR_ENV = "SURGECAST_CORPUS_DIR"


def env_corpus_dir() -> Path | None:
    """The corpus folder `$SURGECAST_CORPUS_DIR` names, if set and not empty."""
    value = os.environ.get(CORPUS_DIR_ENV, "").strip()
    return Path(value) if value else None


M = TypeVar("M", bound=BaseModel)


def with_corpus_dir(model: M, corpus_dir: Path, given_by: str = CORPUS_DIR_ENV) -> M:
    """`model` (a scenario) with every corpus that has `in_corpus_dir` replaced by that file,
    a relative path made absolute under `corpus_dir`; `model` itself when none has one. A
    missing folder is a CorpusError naming it and `given_by` (the flag or variable)."""
    root = corpus_dir.expanduser().resolve()

    def swap(spec: CorpusSpec) -> CorpusSpec:
        alt = spec.in_corpus_dir
        if alt is None:
            return spec
        if not root.is_dir():
            raise CorpusError(str(corpus_dir), [f"not a folder (given by {given_by})"])
        path = Path(alt.path).expanduser()
        return CorpusSpec(**{**alt.model_dump(), "path": str(root / path)})

    return _map_corpora(model, swap)


def _map_corpora(value: Any, fn: Callable[[CorpusSpec], CorpusSpec]) -> Any:
    """`value` with `fn` applied to every CorpusSpec in it; unchanged parts are the same objects."""
    if isinstance(value, CorpusSpec):
        return fn(value)
    if isinstance(value, BaseModel):
        changed = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _map_corpora(old, fn)
            if new is not old:
                changed[name] = new
        return value.model_copy(update=changed) if changed else value
    if isinstance(value, list | tuple):
        items = [_map_corpora(v, fn) for v in value]
        same = all(a is b for a, b in zip(items, value, strict=True))
        return value if same else type(value)(items)
    if isinstance(value, dict):
        mapped = {k: _map_corpora(v, fn) for k, v in value.items()}
        return value if all(mapped[k] is value[k] for k in value) else mapped
    return value


@dataclass(frozen=True, slots=True)
class Corpus:
    """Queries read from one file. `conversations` is empty for flat corpora."""

    texts: tuple[str, ...]
    conversations: tuple[tuple[tuple[str, str], ...], ...]
    source: str
    scrubbed: tuple[tuple[str, int], ...] = ()  # identifiers replaced, by kind


class CorpusError(Exception):
    """A corpus that cannot be used; `problems` lists every error found, each with its place."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown = [*shown, f"... and {len(problems) - MAX_PROBLEMS} more"]
        self.problems = shown
        super().__init__("\n".join(f"{path}: {p}" for p in shown))


def resolve_path(path: str, base_dir: Path | None = None) -> Path:
    """`path` as given if absolute; else under `base_dir` if it exists there, else under the cwd."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if base_dir is not None and (base_dir / p).exists():
        return (base_dir / p).resolve()
    return (Path.cwd() / p).resolve()


def load_corpus(spec: CorpusSpec, base_dir: Path | None = None) -> Corpus:
    """Read the corpus `spec` names; cached per (resolved path, mtime, size, spec)."""
    path = resolve_path(spec.path, base_dir)
    try:
        st = path.stat()
    except OSError as e:
        tried = [str(path)]
        if base_dir is not None and not Path(spec.path).is_absolute():
            tried.insert(0, str((base_dir / spec.path).resolve()))
        raise CorpusError(
            spec.path, [f"cannot read file ({e.strerror}); tried {', '.join(tried)}"]
        ) from None
    if not path.is_file():
        raise CorpusError(str(path), ["not a file"])
    return _load_cached(str(path), st.st_mtime_ns, st.st_size, spec)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(path: str, mtime_ns: int, size: int, spec: CorpusSpec) -> Corpus:
    del mtime_ns  # part of the cache key only
    limit = int(spec.max_mb * 1024 * 1024)
    if size > limit:
        raise CorpusError(path, [f"file is {size:,} bytes, over the limit of {limit:,} (max_mb)"])
    data = Path(path).read_bytes()
    return parse_corpus(data, spec, path)


def parse_corpus(data: bytes, spec: CorpusSpec, source: str) -> Corpus:
    """Parse a corpus from bytes (pure; `source` only names the file in errors and the result)."""
    if not data.strip():
        raise CorpusError(source, ["file is empty"])
    text = _decode(data, source)
    texts: list[str]
    convs: list[tuple[tuple[str, str], ...]] = []
    if spec.format == "text":
        texts = [s for s in (line.strip() for line in text.splitlines()) if s]
    elif spec.format == "csv":
        texts = _read_csv(text, spec.text_field or "text", source)
    elif spec.format == "json":
        texts = _read_json(text, spec.text_field, source)
    elif spec.format == "sharegpt":
        texts, convs = _read_sharegpt(text, spec.text_field or "conversations", source)
    else:
        texts, convs = _read_openai(text, source)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CorpusError(source, ["no non-empty texts found"])
    if spec.max_texts is not None:
        texts = texts[: spec.max_texts]
        convs = convs[: spec.max_texts]
    found: Counter[str] = Counter()
    if spec.scrub:
        in_turns: Counter[str] = Counter()
        texts = [scrub(t, found) for t in texts]
        convs = [tuple((role, scrub(t, in_turns)) for role, t in turns) for turns in convs]
        if convs:  # every turn, the texts' among them: counted once
            found = in_turns
    return Corpus(tuple(texts), tuple(convs), source, tuple(sorted(found.items())))


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is dropped); every invalid byte sequence is a problem with its offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    problems: list[str] = []
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while pos < len(data):
        if len(problems) == MAX_PROBLEMS:
            problems.append(f"more invalid bytes after offset {pos} (not listed)")
            break
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            off = pos + e.start
            line = data.count(b"\n", 0, off) + 1
            col = off - (data.rfind(b"\n", 0, off) + 1) + 1
            problems.append(
                f"line {line}, column {col}: not UTF-8 (byte 0x{data[off]:02x} at offset {off})"
            )
            pos = pos + e.end
    raise CorpusError(source, problems)


def _read_csv(text: str, column: str, source: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise CorpusError(source, [f"line 1: no CSV header ({e})"]) from None
    if column not in header:
        raise CorpusError(
            source, [f"line 1: no column {column!r}; columns found: {', '.join(header)}"]
        )
    idx = header.index(column)
    texts: list[str] = []
    problems: list[str] = []
    try:
        for row in reader:
            if not row:
                continue
            if idx >= len(row):
                problems.append(
                    f"line {reader.line_num}, field {column!r}: row has {len(row)} columns, "
                    f"the header {len(header)}"
                )
                continue
            texts.append(row[idx].strip())
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: bad CSV ({e})")
    if problems:
        raise CorpusError(source, problems)
    return texts


def _json_error(e: ValueError | RecursionError, line_offset: int = 0) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno + line_offset}, column {e.colno}: invalid JSON ({e.msg})"
    where = f"line {line_offset + 1}: " if line_offset else ""
    if isinstance(e, RecursionError):
        return f"{where}JSON nested too deeply"
    return f"{where}unusable JSON ({str(e)[:120]})"  # an integer too long to convert


_JSON_ERRORS = (ValueError, RecursionError)  # JSONDecodeError, too deep, too-long integer


def _load_json_or_jsonl(text: str, source: str) -> tuple[list[tuple[int, Any]], list[str]]:
    """Records with their line numbers (0 in a JSON array), and the lines that are not JSON."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            doc = json.loads(text)
        except _JSON_ERRORS as e:
            raise CorpusError(source, [_json_error(e)]) from None
        if not isinstance(doc, list):
            raise CorpusError(source, ["top level: expected a JSON array of records"])
        return [(0, rec) for rec in doc], []
    records: list[tuple[int, Any]] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except _JSON_ERRORS as e:
            problems.append(_json_error(e, n - 1))
    return records, problems


_SEGMENT = re.compile(r"^([^\[\]]+)?((?:\[(?:\*|-?\d+)\])*)$")
_INDEX = re.compile(r"\[(\*|-?\d+)\]")


def select_json(doc: Any, selector: str) -> list[Any]:
    """Values of `doc` at `selector` (see the module docstring); raises ValueError if malformed."""
    current = [doc]
    for seg in selector.split("."):
        m = _SEGMENT.match(seg)
        if m is None:
            raise ValueError(f"bad selector segment {seg!r} in {selector!r}")
        key, indices = m.group(1), _INDEX.findall(m.group(2) or "")
        nxt: list[Any] = []
        for node in current:
            if key == "*":
                if isinstance(node, dict):
                    nxt.extend(node.values())
                elif isinstance(node, list):
                    nxt.extend(node)
            elif key is not None:
                if isinstance(node, dict) and key in node:
                    nxt.append(node[key])
            else:
                nxt.append(node)
        for ix in indices:
            stepped: list[Any] = []
            for node in nxt:
                if not isinstance(node, list):
                    continue
                if ix == "*":
                    stepped.extend(node)
                elif -len(node) <= int(ix) < len(node):
                    stepped.append(node[int(ix)])
            nxt = stepped
        current = nxt
    return current


def _read_json(text: str, selector: str | None, source: str) -> list[str]:
    try:
        doc = json.loads(text)
    except _JSON_ERRORS as e:
        raise CorpusError(source, [_json_error(e)]) from None
    if selector is None:
        values = doc if isinstance(doc, list) else []
        where = "top level"
    else:
        try:
            values = select_json(doc, selector)
        except ValueError as e:
            raise CorpusError(source, [f"text_field: {e}"]) from None
        where = f"selector {selector!r}"
    if not values:
        top = ", ".join(map(str, list(doc)[:10])) if isinstance(doc, dict) else type(doc).__name__
        raise CorpusError(source, [f"{where} matches nothing (top level: {top})"])
    problems = [
        f"{where}, match {i}: expected a string, got {type(v).__name__}"
        for i, v in enumerate(values)
        if not isinstance(v, str)
    ]
    if problems:
        raise CorpusError(source, problems)
    return [v.strip() for v in values]


def _read_sharegpt(
    text: str, key: str, source: str
) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    texts: list[str] = []
    convs: list[tuple[tuple[str, str], ...]] = []
    records, problems = _load_json_or_jsonl(text, source)
    for i, (line, rec) in enumerate(records):
        place = f"line {line}" if line else f"record {i}"
        turns_raw = rec.get(key) if isinstance(rec, dict) else None
        if not isinstance(turns_raw, list):
            problems.append(f"{place}, field {key!r}: missing or not a list")
            continue
        turns: list[tuple[str, str]] = []
        for j, turn in enumerate(turns_raw):
            ok = isinstance(turn, dict) and isinstance(turn.get("value"), str)
            role = _ROLES.get(str(turn.get("from", "")).lower()) if ok else None
            if role is None:
                problems.append(f"{place}, field {key}[{j}]: needs 'from' (human/gpt) and 'value'")
                continue
            turns.append((role, turn["value"]))
        texts.extend(t for r, t in turns if r == "user")
        if turns:
            convs.append(tuple(turns))
    if problems:
        raise CorpusError(source, problems)
    return texts, convs


def _content_text(content: Any) -> str | None:
    """A chat message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return None


def _read_openai(text: str, source: str) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    texts: list[str] = []
    convs: list[tuple[tuple[str, str], ...]] = []
    records, problems = _load_json_or_jsonl(text, source)
    for i, (line, rec) in enumerate(records):
        place = f"line {line}" if line else f"record {i}"
        body = rec
        for _ in range(3):  # unwrap {"body": ...} / {"request": ...} (batch files, proxies' logs)
            if isinstance(body, dict) and "messages" not in body and "prompt" not in body:
                body = body.get("body", body.get("request"))
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            texts.append(body["prompt"])
            convs.append((("user", body["prompt"]),))
            continue
        msgs = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(msgs, list):
            problems.append(f"{place}, field 'messages': missing (also under 'body'/'request')")
            continue
        turns: list[tuple[str, str]] = []
        for j, m in enumerate(msgs):
            role = _ROLES.get(str(m.get("role", "")).lower()) if isinstance(m, dict) else None
            content = _content_text(m.get("content")) if isinstance(m, dict) else None
            if role is None or content is None:
                problems.append(f"{place}, field messages[{j}]: needs 'role' and text 'content'")
                continue
            turns.append((role, content))
        users = [t for r, t in turns if r == "user"]
        if users:
            texts.append(users[-1])  # the query of this request: its last user message
        if turns:
            convs.append(tuple(turns))
    if problems:
        raise CorpusError(source, problems)
    return texts, convs


def named_corpora(model: BaseModel) -> list[CorpusSpec]:
    """Every corpus a scenario (or any part of one) names, each once, in the order met."""
    found: list[CorpusSpec] = []

    def walk(value: object) -> None:
        if isinstance(value, CorpusSpec):
            if value not in found:
                found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(model)
    return found


def scrub_lines(model: BaseModel, base_dir: Path | None) -> list[str]:
    """A line per corpus whose text lost identifiers to the scrubber, saying how many."""
    lines = []
    for spec in named_corpora(model):
        counts = load_corpus(spec, base_dir).scrubbed
        if counts:
            found = ", ".join(f"{n} {NAMES[kind][n != 1]}" for kind, n in counts)
            lines.append(f"{spec.path}: replaced {found} by placeholders (scrub: false keeps them)")
    return lines


def corpus_lines(model: BaseModel, base_dir: Path | None) -> list[str]:
    """A line per corpus file a scenario reads: its resolved path and how many texts it holds."""
    counts: dict[str, int] = {}
    for spec in named_corpora(model):
        corpus = load_corpus(spec, base_dir)
        counts.setdefault(corpus.source, len(corpus.texts))
    return [f"{source} ({n:,} texts)" for source, n in counts.items()]


NAMES = {  # each identifier kind: one, several
    "email": ("e-mail address", "e-mail addresses"),
    "phone": ("phone number", "phone numbers"),
    "card": ("card number", "card numbers"),
    "iban": ("IBAN", "IBANs"),
}
