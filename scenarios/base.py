"""The strict pydantic base every scenario section derives from, and how its validation errors
read: `field.path: what is wrong, got value`."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

SHOWN_CHARS = 80  # values quoted in messages are cut to this length
SECRET_WORDS = "carries a credential"  # a message about a value never to repeat


class Strict(BaseModel):
    """Unknown keys are errors and parsed sections are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def shown(value: Any) -> str:
    """repr of `value` cut to about 80 characters; bounded work on any size of value."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, SHOWN_CHARS, 40, 40
    text = short.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def validation_messages(
    error: ValidationError, data: Any, lines: dict[str, int] | None = None
) -> list[str]:
    """Each problem pydantic found in `data`, as `field.path: what is wrong, got value`;
    with `lines` (parse_yaml's), as `line N: field.path: ...` (the nearest key's line)."""
    errors = [err for err in error.errors() if _relevant(err)] or error.errors()
    messages = [_format(err, data) for err in errors]
    if lines is None:
        return messages
    return [_at_line(err, data, lines) + m for err, m in zip(errors, messages, strict=True)]


def _at_line(err: Any, data: Any, lines: dict[str, int]) -> str:
    path = re.sub(r"\[\d+\]", "", _loc(err["loc"], data)).split(".")
    while path:
        if ".".join(path) in lines:
            return f"line {lines['.'.join(path)]}: "
        path.pop()
    return ""


_BRANCH = re.compile(r"^(tagged-union|function-(after|before|wrap|plain)|literal|union)\[")


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Dotted field path, without the union tags pydantic inserts (`prompt_tokens.lognormal.x`,
    `arrival.tagged-union[...].gamma.rate`)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        tag = isinstance(node, dict) and item not in node
        if (tag and item in (node.get("dist"), node.get("type"))) or _BRANCH.match(item):
            continue  # a union's branch or discriminator tag, not a field
        parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _relevant(err: Any) -> bool:
    """False for a union branch that cannot be what was meant: a mapping tried as a literal
    (`arrival: {type: gamma, ...}` against `arrival: poisson`)."""
    return not (err["type"] == "literal_error" and isinstance(err["input"], dict))


def _format(err: Any, data: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = _loc(err["loc"], data)
    value = err["input"]
    if not err["loc"]:  # a check across sections: its message names its own fields
        return msg
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (got {shown(value)})"
    if isinstance(value, dict | list) or shown(value) in msg or SECRET_WORDS in msg:
        return f"{where}: {msg}"
    return f"{where}: {msg}, got {shown(value)}"
