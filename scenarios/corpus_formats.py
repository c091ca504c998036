"""Reading a corpus file's formats into query texts: CSV, JSON (with a selector), ShareGPT,
OpenAI request logs; every problem in a file collected with its line and column or field."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Literal

MAX_PROBLEMS = 20  # problems listed in a CorpusError; the rest are counted

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


class CorpusError(Exception):
    """A corpus that cannot be used; `problems` lists every error found, each with its place."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown = [*shown, f"... and {len(problems) - MAX_PROBLEMS} more"]
        self.problems = shown
        super().__init__("\n".join(f"{path}: {p}" for p in shown))


def decode(data: bytes, source: str) -> str:
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


def read_csv(text: str, column: str, source: str) -> list[str]:
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


def read_json(text: str, selector: str | None, source: str) -> list[str]:
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


def read_sharegpt(
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


def read_openai(text: str, source: str) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
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
