"""The reference target's check of an OpenAI request's sampling parameters, as vLLM checks them.

A bad value is a 400 that names its parameter (`param`), never a 500 and never silently taken:
a load test against the reference target should fail where it would fail against vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard


class BadRequest(Exception):
    """A request the target refuses: message, the parameter at fault, the HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


Check = tuple[Callable[[Any], bool], Callable[[Any], bool], str]  # type, range, what is wanted

# vLLM's SamplingParams rules (0.x), for the parameters a load test sends
CHECKS: dict[str, Check] = {
    "temperature": (_number, lambda v: v >= 0, "a number >= 0"),
    "top_p": (_number, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (_integer, lambda v: v == -1 or v >= 0, "an integer >= 0, or -1 (off)"),
    "min_p": (_number, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "presence_penalty": (_number, lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
    "frequency_penalty": (_number, lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
    "repetition_penalty": (_number, lambda v: v > 0, "a number > 0"),
    "n": (_integer, lambda v: v == 1, "1 (the reference target answers one choice)"),
    "seed": (_integer, lambda v: -(2**63) <= v < 2**64, "a 64-bit integer"),
    "min_tokens": (_integer, lambda v: v >= 0, "an integer >= 0"),
    "stop": (
        _strings,
        lambda v: len(v) <= 16 if isinstance(v, list) else True,
        "a string or a list of up to 16 strings",
    ),
    "stream": (lambda v: isinstance(v, bool), lambda v: True, "true or false"),
    "ignore_eos": (lambda v: isinstance(v, bool), lambda v: True, "true or false"),
    "logprobs": (lambda v: isinstance(v, bool | int), lambda v: True, "a boolean or an integer"),
    "top_logprobs": (_integer, lambda v: 0 <= v <= 20, "an integer in [0, 20]"),
}


def check_sampling(body: dict[str, Any]) -> None:
    """BadRequest naming the first sampling parameter out of type or range (null is allowed:
    the parameter's default)."""
    for name, (kind, in_range, wanted) in CHECKS.items():
        value = body.get(name)
        if value is None:
            continue
        if not kind(value) or not in_range(value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            raise BadRequest(f"'{name}' must be {wanted}, got {shown}", name)
    min_tokens, max_tokens = body.get("min_tokens"), body.get("max_tokens")
    if _integer(min_tokens) and _integer(max_tokens) and min_tokens > max_tokens:
        raise BadRequest(
            f"'min_tokens' ({min_tokens}) must be at most 'max_tokens' ({max_tokens})",
            "min_tokens",
        )
