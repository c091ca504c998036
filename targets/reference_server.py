"""The reference target: the engine model behind an OpenAI-compatible HTTP API, on the wall clock.

Serves /v1/chat/completions and /v1/completions (streamed or not), /v1/models, /health, /metrics
(Prometheus text) and /debug/requests (its own record of when it wrote each response's chunks).
Token timing comes from the same `Engine` objects the simulator runs, stepped by an asyncio task.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import json
import math
import os
import sys
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from scenarios.spec import TargetFaults
from scenarios.text import count_tokens, output_word
from simulator.engine.core import Engine, EngineConfig, EngineSequence
from simulator.engine.drive import DriveLoop, EngineEvents, Sleep
from targets.openai_params import BadRequest, check_sampling

CATCH_UP_S = 0.01  # a step that overslept by less than this is absorbed, not accumulated
BODY_TIMEOUT_S = 30.0  # a request body not fully sent by then is refused (408)
HEADER_TIMEOUT_S = 15.0  # a connection without a whole request's headers by then is closed


@dataclass
class ServedRequest:
    """The target's own timing record of one request (time.monotonic seconds)."""

    id: str
    received: float
    prompt_tokens: int
    max_tokens: int
    first_chunk_written: float | None = None
    chunk_written: list[float] = field(default_factory=list)
    end: float | None = None
    output_tokens: int = 0
    status: str = "running"
    fault: str | None = None  # the fault injected into it (a TargetFaults field name)


class LiveEngine:
    """Runs the drive loop on the wall clock and hands each sequence's tokens to its waiter."""

    def __init__(self, config: EngineConfig):
        self.engine = Engine(config)
        events = EngineEvents()
        events.token.add_listener(self._on_token)
        events.finish.add_listener(self._on_finish)
        self.loop = DriveLoop(self.engine, time.monotonic, events, cold=True)
        self._wake = asyncio.Event()
        self._queues: dict[EngineSequence, asyncio.Queue[int | None]] = {}

    @property
    def ready(self) -> bool:
        return self.loop.ready

    @property
    def steps(self) -> int:
        return self.loop.steps

    @property
    def busy_s(self) -> float:
        return self.loop.busy_s

    def submit(self, seq: EngineSequence) -> asyncio.Queue[int | None]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._queues[seq] = queue
        self.loop.submit(seq)
        self._wake.set()
        return queue

    def abort(self, seq: EngineSequence) -> None:
        self.loop.abort(seq)
        self._queues.pop(seq, None)

    def _on_token(self, seq: EngineSequence, now: float) -> None:
        queue = self._queues.get(seq)
        if queue is not None:
            queue.put_nowait(seq.generated)

    def _on_finish(self, seq: EngineSequence, now: float) -> None:
        queue = self._queues.pop(seq, None)
        if queue is not None:
            queue.put_nowait(None)

    async def run(self) -> None:
        """Sleeps each step to its deadline: a step that overslept a little is caught up."""
        deadline = time.monotonic()
        for command in self.loop.run():
            if isinstance(command, Sleep):
                now = time.monotonic()
                start = deadline if now - deadline < CATCH_UP_S else now
                deadline = start + command.seconds
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            else:
                self._wake.clear()
                await self._wake.wait()
                deadline = time.monotonic()


def _error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) as OpenAI-style JSON, not text."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error(f"{e.reason}: {request.method} {request.path}", e.status)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
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


async def _json_body(request: web.Request, timeout_s: float) -> dict[str, Any]:
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


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {value!r}", "max_tokens")
    return value


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
        self._faults = self.faults.draws()
        self._requests = 0
        self.live: LiveEngine | None = None
        self.served: deque[ServedRequest] = deque(maxlen=history)
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "success": 0, "aborted": 0}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors, self._authorize])
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
        """With an API key set, the API wants it as a bearer token (401 otherwise, as OpenAI)."""
        if self.api_key and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
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
        eng = self.live.engine
        rows = [
            ("num_requests_running", "gauge", "Sequences in the running batch.", len(eng.running)),
            ("num_requests_waiting", "gauge", "Sequences waiting for admission.", len(eng.waiting)),
            (
                "kv_cache_usage_ratio",
                "gauge",
                "Fraction of KV-cache tokens reserved.",
                eng.kv_used / eng.config.kv_cache_tokens,
            ),
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens admitted.",
                self.counters["prompt_tokens"],
            ),
            (
                "generation_tokens_total",
                "counter",
                "Tokens generated.",
                self.counters["generation_tokens"],
            ),
            ("request_success_total", "counter", "Requests completed.", self.counters["success"]),
            (
                "request_aborted_total",
                "counter",
                "Requests the client abandoned.",
                self.counters["aborted"],
            ),
            ("engine_steps_total", "counter", "Engine steps run.", self.live.steps),
            ("engine_busy_seconds_total", "counter", "Seconds spent stepping.", self.live.busy_s),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP surgecast_{name} {help_text}",
                f"# TYPE surgecast_{name} {kind}",
                f"surgecast_{name} {value}",
            ]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        received = time.monotonic()
        try:
            body = await _json_body(request, self.body_timeout_s)
            if body.get("model", self.model) != self.model:
                raise BadRequest(f"The model `{body.get('model')}` does not exist.", "model", 404)
            prompt_tokens = count_tokens(_prompt_text(body, chat))
            max_tokens = _max_tokens(body)
            check_sampling(body)
        except BadRequest as e:
            return _error(str(e), e.status, e.param)
        assert self.live is not None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        fault = self._draw_fault() if self.faults.any else None
        if fault in ("reject_429", "error_500"):
            return self._fault_response(fault, rid, received, prompt_tokens)
        seq = EngineSequence(rid, prompt_tokens, max_tokens)
        if not self.live.engine.fits_ever(seq):
            return _error(
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
            return _error("'stream_options' must be an object", param="stream_options")
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

    def _draw_fault(self) -> str | None:
        """This request's injected fault (a TargetFaults field name), or None; a target set to
        die exits abruptly once its request count is reached, in-flight requests and all."""
        self._requests += 1
        if self.faults.die_after is not None and self._requests >= self.faults.die_after:
            asyncio.get_running_loop().call_soon(os._exit, 70)  # a crash: no cleanup, no reply
        return self._faults.next()

    def _fault_response(
        self, fault: str, rid: str, received: float, prompt_tokens: int
    ) -> web.Response:
        """An injected 429 or 500, recorded as served."""
        if fault == "reject_429":
            status, message = 429, "Rate limit reached (injected by the reference target)."
        else:
            status, message = 500, "Internal error (injected by the reference target)."
        self.served.append(
            ServedRequest(rid, received, prompt_tokens, 0, status=f"http_{status}", fault=fault)
        )
        response = _error(message, status)
        if status == 429:
            response.headers["Retry-After"] = self._retry_after()
        return response

    def _retry_after(self) -> str:
        """Seconds, or with `retry_after_date` an HTTP-date: whole seconds, rounded up so that
        a client honouring it waits at least retry_after_s."""
        wait = self.faults.retry_after_s
        if not self.faults.retry_after_date:
            return f"{wait:g}"
        return email.utils.formatdate(math.ceil(time.time() + wait), usegmt=True)

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
        sse = _ChunkWriter(response, rid, chat, self.model)
        try:
            if chat:  # like OpenAI and vLLM: a role-only chunk with empty content comes first
                await sse.send(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            pending: list[str] = []  # tokens not yet written: up to stream_interval of them
            if fault == "stall":
                await asyncio.sleep(self.faults.stall_s)
            while True:
                index = await queue.get()
                if fault and index == record.max_tokens // 2 + 1:  # halfway through
                    if fault == "reset_stream" and request.transport is not None:
                        request.transport.abort()
                        return response
                    await self._break_stream(fault, response, sse)
                if index is not None:
                    word = output_word(index)
                    pending.append(word if index == 1 else " " + word)
                    record.output_tokens += 1
                    self.counters["generation_tokens"] += 1
                if pending and (index is None or len(pending) >= self.stream_interval):
                    extra = {"usage": self._usage(record)} if usage == "every chunk" else {}
                    await sse.send([sse.choice("".join(pending))], **extra)
                    pending.clear()
                    now = time.monotonic()
                    record.chunk_written.append(now)
                    if record.first_chunk_written is None:
                        record.first_chunk_written = now
                if index is None:
                    break
            await sse.send([sse.choice(None, "length")])
            if usage is not None:
                await sse.send([], usage=self._usage(record))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client left; `_complete` aborts the sequence
            return response
        self._finish(record)
        return response

    async def _break_stream(
        self, fault: str, response: web.StreamResponse, sse: _ChunkWriter
    ) -> None:
        """Write what an injected mid-stream fault writes."""
        if fault == "malformed_sse":  # an event without its `data:` prefix
            chunk = {**sse.head, "choices": [sse.choice("oops")]}
            await response.write(json.dumps(chunk).encode() + b"\n\n")
        elif fault == "oversized":
            await sse.send([sse.choice("x" * self.faults.oversized_bytes)])


class _ChunkWriter:
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
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    print(f"surgecast reference target listening on http://{shown}:{bound}/v1", flush=True)
    try:
        if exit_with_parent:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        else:
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
