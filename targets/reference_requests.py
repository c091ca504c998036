"""The reference target's side of a request: reading its body (JSON object, prompt text,
max_tokens), its own timing record of it (`ServedRequest`), and OpenAI-style JSON errors."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from targets.openai_params import BadRequest


@dataclass
class ServedRequest:
    """The target's own timing record of one request (time.monotonic seconds)."""

    id: str
    received: float
    prompt_tokens: int
    max_tokens: int
    first_chunk_written: float | None = None
    chunk_sending: list[float] = field(default_factory=list)  # each chunk's write began
    chunk_written: list[float] = field(default_factory=list)  # ... and had returned
    end: float | None = None
    output_tokens: int = 0
    status: str = "running"
    fault: str | None = None  # the fault injected into it (a TargetFaults field name)

    def wrote_chunk(self, began: float, now: float) -> None:
        """A chunk of the answer was written between `began` and `now`: its bytes reached the
        socket in that window (a stamp after the write alone is late when the process is
        descheduled between the two)."""
        self.chunk_sending.append(began)
        self.chunk_written.append(now)
        if self.first_chunk_written is None:
            self.first_chunk_written = now


def json_error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) as OpenAI-style JSON, not text."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = json_error(f"{e.reason}: {request.method} {request.path}", e.status)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response


def read_prompt(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", "messages")
        parts: list[str] = []
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}]")
            parts.append(content)
        return "\n".join(parts)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string", "prompt")
    return prompt


async def read_json_body(request: web.Request, timeout_s: float) -> dict[str, Any]:
    """The request's JSON object; BadRequest for a slow, non-UTF-8, malformed, too deeply
    nested or non-object body."""
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise BadRequest(f"request body not received within {timeout_s:g} s", None, 408) from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not UTF-8 (byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, huge integers, deep nesting
        raise BadRequest(f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def read_max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {value!r}", "max_tokens")
    return value
