"""The faults the reference target injects (`TargetFaults`), drawn per request: a 429 or 500,
a broken stream, a crash after N requests."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time

from aiohttp import web

from scenarios.spec import TargetFaults
from targets.reference_requests import json_error
from targets.reference_stream import ChunkWriter


class FaultInjector:
    """Draws each request's fault from `faults` (seeded) and writes what that fault writes."""

    def __init__(self, faults: TargetFaults):
        self.faults = faults
        self._draws = faults.draws()  # as the simulator draws them, its twin
        self._requests = 0

    def draw(self) -> str | None:
        """This request's injected fault (a TargetFaults field name), or None; a target set to
        die exits abruptly once its request count is reached, in-flight requests and all."""
        self._requests += 1
        if self.faults.die_after is not None and self._requests >= self.faults.die_after:
            asyncio.get_running_loop().call_soon(os._exit, 70)  # a crash: no cleanup, no reply
        return self._draws.next()

    def error_response(self, fault: str) -> web.Response:
        """An injected 429 (with Retry-After) or 500."""
        if fault == "reject_429":
            status, message = 429, "Rate limit reached (injected by the reference target)."
        else:
            status, message = 500, "Internal error (injected by the reference target)."
        response = json_error(message, status)
        if status == 429:
            response.headers["Retry-After"] = self.retry_after()
        return response

    def retry_after(self) -> str:
        """Seconds, or with `retry_after_date` an HTTP-date: whole seconds, rounded up so that
        a client honouring it waits at least retry_after_s."""
        wait = self.faults.retry_after_s
        if not self.faults.retry_after_date:
            return f"{wait:g}"
        return email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)

    async def break_stream(
        self, fault: str, response: web.StreamResponse, sse: ChunkWriter
    ) -> None:
        """Write what an injected mid-stream fault writes."""
        if fault == "malformed_sse":  # an event without its `data:` prefix
            chunk = {**sse.head, "choices": [sse.choice("oops")]}
            await response.write(json.dumps(chunk).encode() + b"\n\n")
        elif fault == "oversized":
            await sse.send([sse.choice("x" * self.faults.oversized_bytes)])
