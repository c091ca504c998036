"""The reference target: the engine model behind an OpenAI-compatible HTTP API, on the wall clock.

Serves /v1/chat/completions and /v1/completions (streamed or not), /v1/models, /health, /metrics
(Prometheus text) and /debug/requests (its own record of when it wrote each response's chunks).
Token timing comes from the same `Engine` objects the simulator runs, stepped by an asyncio task
(`targets.live_engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import sys
import time
import uuid
from collections import deque
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from scenarios.spec import TargetFaults
from scenarios.text import count_tokens, output_word
from simulator.engine.core import EngineConfig, EngineSequence
from targets.live_engine import LiveEngine
from targets.openai_params import BadRequest, check_sampling
from targets.reference_faults import FaultInjector
from targets.reference_metrics import metrics_text
from targets.reference_requests import (
    ServedRequest,
    json_error,
    json_errors,
    read_json_body,
    read_max_tokens,
    read_prompt,
)
from targets.reference_stream import ChunkWriter

BODY_TIMEOUT_S = 30.0  # a request body not fully sent by then is refused (408)
HEADER_TIMEOUT_S = 15.0  # a connection without a whole request's headers by then is closed


class RequestLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, where a request it could not parse (a URL or header line over
    8 KB, bad framing, not HTTP) is the client's error: one line saying so, answered 400 by
    aiohttp, never a traceback. Any other error keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            said = " ".join(str(exc_info.message).split())[:160]
            self.warning(f"{msg}: refused (%s): %s", *args, exc_info.code, said)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class ReferenceServer:
    """The aiohttp application around one `LiveEngine`."""

    def __init__(
        self,
        config: EngineConfig,
        model: str = "surgecast-reference",
        history: int = 10000,
        faults: TargetFaults | None = None,
        stream_interval: int = 1,
        api_key: str | None = None,
        debug: bool = False,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ):
        self.config = config
        self.body_timeout_s = body_timeout_s
        self.api_key = api_key  # when set, /v1 wants `Authorization: Bearer <key>`
        self.debug = debug  # serve /debug/requests: every request's timing, unauthenticated
        self.stream_interval = stream_interval  # tokens per chunk, as vLLM's --stream-interval
        self.model = model
        self.faults = faults or TargetFaults()
        self._faults = FaultInjector(self.faults)
        self.live: LiveEngine | None = None
        self.served: deque[ServedRequest] = deque(maxlen=history)
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "success": 0, "aborted": 0}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors, self._authorize])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        if self.debug:
            app.router.add_get("/debug/requests", self._debug_requests)
        app.cleanup_ctx.append(self._engine_task)
        return app

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With an API key set, everything but /health wants it as a bearer token (the scheme's
        case aside, as RFC 9110 has it); 401 otherwise, as OpenAI answers."""
        if self.api_key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            right = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self.api_key.encode()
            )
            if not right:
                message = "Incorrect API key provided." if given else "No API key provided."
                body = {"message": message, "type": "invalid_request_error", "param": None}
                return web.json_response({"error": {**body, "code": "invalid_api_key"}}, status=401)
        return await handler(request)

    async def _engine_task(self, app: web.Application) -> Any:
        self.live = LiveEngine(self.config)
        task = asyncio.create_task(self.live.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "surgecast"}]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        ready = self.live is not None and self.live.ready
        return web.Response(status=200 if ready else 503, text="ok" if ready else "starting")

    async def _debug_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.served])

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.live is not None
        return web.Response(
            body=metrics_text(self.live, self.counters).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        received = time.monotonic()
        try:
            body = await read_json_body(request, self.body_timeout_s)
            if body.get("model", self.model) != self.model:
                raise BadRequest(f"The model `{body.get('model')}` does not exist.", "model", 404)
            prompt_tokens = count_tokens(read_prompt(body, chat))
            max_tokens = read_max_tokens(body)
            check_sampling(body)
        except BadRequest as e:
            return json_error(str(e), e.status, e.param)
        assert self.live is not None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        fault = self._faults.draw() if self.faults.any else None
        if fault in ("reject_429", "error_500"):
            return self._fault_response(fault, rid, received, prompt_tokens)
        seq = EngineSequence(rid, prompt_tokens, max_tokens)
        if not self.live.engine.fits_ever(seq):
            return json_error(
                f"This model's maximum context length is {self.config.kv_cache_tokens} tokens; "
                f"the request needs {seq.kv_tokens} "
                f"({prompt_tokens} prompt + {max_tokens} output).",
                param="max_tokens",
            )
        record = ServedRequest(rid, received, prompt_tokens, max_tokens, fault=fault)
        self.served.append(record)
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            return json_error("'stream_options' must be an object", param="stream_options")
        include_usage = bool(options.get("include_usage", False))
        every_chunk = include_usage and bool(options.get("continuous_usage_stats", False))
        queue = self.live.submit(seq)
        self.counters["prompt_tokens"] += prompt_tokens
        try:
            if stream:
                usage = "every chunk" if every_chunk else "end" if include_usage else None
                if fault == "missing_usage":
                    usage = None
                return await self._stream(request, rid, chat, queue, record, usage, fault)
            return await self._whole(rid, chat, queue, record)
        finally:
            if record.status != "ok":
                self.live.abort(seq)
                self.counters["aborted"] += 1
                record.status = "aborted"

    def _fault_response(
        self, fault: str, rid: str, received: float, prompt_tokens: int
    ) -> web.Response:
        """An injected 429 or 500, recorded as served."""
        response = self._faults.error_response(fault)
        self.served.append(
            ServedRequest(
                rid, received, prompt_tokens, 0, status=f"http_{response.status}", fault=fault
            )
        )
        return response

    def _usage(self, record: ServedRequest) -> dict[str, int]:
        return {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.output_tokens,
            "total_tokens": record.prompt_tokens + record.output_tokens,
        }

    def _finish(self, record: ServedRequest) -> None:
        record.end = time.monotonic()
        record.status = "ok"
        self.counters["success"] += 1

    async def _whole(
        self, rid: str, chat: bool, queue: asyncio.Queue[int | None], record: ServedRequest
    ) -> web.Response:
        words = []
        while (index := await queue.get()) is not None:
            words.append(output_word(index))
            record.output_tokens += 1
            self.counters["generation_tokens"] += 1
        text = " ".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        self._finish(record)
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "usage": self._usage(record),
            }
        )

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        chat: bool,
        queue: asyncio.Queue[int | None],
        record: ServedRequest,
        usage: str | None,  # None, "end" (include_usage) or "every chunk" (vLLM's continuous)
        fault: str | None = None,  # an injected stream fault (a TargetFaults field name)
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        if fault == "slow_headers":
            await asyncio.sleep(self.faults.slow_headers_s)
        await response.prepare(request)
        sse = ChunkWriter(response, rid, chat, self.model)
        try:
            if chat:  # like OpenAI and vLLM: a role-only chunk with empty content comes first
                await sse.send_role()
            if fault == "stall":
                await asyncio.sleep(self.faults.stall_s)
            if not await self._stream_tokens(request, queue, record, sse, usage, fault):
                return response  # the injected fault reset the connection
            await sse.send([sse.choice(None, "length")])
            if usage is not None:
                await sse.send([], usage=self._usage(record))
            await sse.done()
        except ConnectionResetError:  # the client left; `_complete` aborts the sequence
            return response
        self._finish(record)
        return response

    async def _stream_tokens(
        self,
        request: web.Request,
        queue: asyncio.Queue[int | None],
        record: ServedRequest,
        sse: ChunkWriter,
        usage: str | None,
        fault: str | None,
    ) -> bool:
        """Write the tokens as the engine makes them, up to stream_interval to a chunk, with a
        mid-stream fault halfway through; False when that fault reset the connection."""
        pending: list[str] = []  # tokens not yet written: up to stream_interval of them
        while True:
            index = await queue.get()
            if fault and index == record.max_tokens // 2 + 1:  # halfway through
                if fault == "reset_stream" and request.transport is not None:
                    request.transport.abort()
                    return False
                await self._faults.break_stream(fault, sse.response, sse)
            if index is not None:
                word = output_word(index)
                pending.append(word if index == 1 else " " + word)
                record.output_tokens += 1
                self.counters["generation_tokens"] += 1
            if pending and (index is None or len(pending) >= self.stream_interval):
                extra = {"usage": self._usage(record)} if usage == "every chunk" else {}
                began = time.monotonic()
                await sse.send([sse.choice("".join(pending))], **extra)
                pending.clear()
                record.wrote_chunk(began, time.monotonic())
            if index is None:
                return True


async def serve(
    config: EngineConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = "surgecast-reference",
    exit_with_parent: bool = False,
    faults: TargetFaults | None = None,
    stream_interval: int = 1,
    api_key: str | None = None,
    debug: bool = False,
    body_timeout_s: float = BODY_TIMEOUT_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> None:
    """Serve until cancelled; prints the base URL once listening (port 0 picks a free one).

    With `exit_with_parent`, also stop when stdin closes: a parent that starts the target with a
    pipe on its stdin takes the target down with it, even when the parent is killed.
    """
    target = ReferenceServer(
        config,
        model,
        faults=faults,
        stream_interval=stream_interval,
        api_key=api_key,
        debug=debug,
        body_timeout_s=body_timeout_s,
    )
    # handler_cancellation: a client that disconnects cancels its handler, streamed or not, and
    # `_complete` aborts its sequence (as vLLM aborts a request whose client went away).
    # keepalive_timeout: aiohttp closes a connection that has not sent a whole request's
    # headers this long after it opened or after its last answer (slow or idle clients)
    runner = web.AppRunner(
        target.app(),
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=header_timeout_s,
        logger=RequestLog(logging.getLogger("aiohttp.server")),
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    addresses = [ipaddress.ip_address(s.getsockname()[0]) for s in sockets]
    if api_key is None and not all(a.is_loopback for a in addresses):
        print(
            f"warning: serving on {host} without --api-key: anyone who reaches it can use it",
            file=sys.stderr,
            flush=True,
        )
    print(f"surgecast reference target listening on http://{shown}:{bound}/v1", flush=True)
    try:
        if exit_with_parent:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        else:
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
