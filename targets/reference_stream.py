"""OpenAI streaming chunks written as server-sent events."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web


class ChunkWriter:
    """Writes OpenAI streaming chunks as server-sent events."""

    def __init__(self, response: web.StreamResponse, rid: str, chat: bool, model: str):
        self.response = response
        self.chat = chat
        self.head = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def choice(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    async def send(self, choices: list[dict[str, Any]], **extra: Any) -> None:
        chunk = {**self.head, "choices": choices, **extra}
        await self.response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    async def send_role(self) -> None:
        """A chat stream's first chunk: the assistant's role, with empty content."""
        role = {"role": "assistant", "content": ""}
        await self.send([{"index": 0, "delta": role, "finish_reason": None}])

    async def done(self) -> None:
        """The stream's `[DONE]`, and its end."""
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
