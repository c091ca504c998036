"""A streaming OpenAI-compatible client that timestamps every server-sent event line as it arrives.

It reads the response line by line (`http.client` returns a line as soon as it is complete), never
in fixed-size blocks, so chunk times are what the wire delivered. Under Locust the same code runs
on gevent's patched sockets. One connection per request: some servers (llama.cpp) close a streamed
connection while advertising keep-alive, which breaks pooled clients. The host name is resolved
once per endpoint, not on every connect (gevent's resolver threads would fight the sender for the
GIL). A request's `start` is stamped once connected, as its bytes are written, so time spent
connecting or queued in the client is schedule lag or connect time, never TTFT.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import select
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord, Status
from scenarios.scrub import stored_prompt
from scenarios.spec import Target

Clock = Callable[[], float]
Messages = list[dict[str, str]]
DETAIL_CHARS = 200


class MissingApiKey(ValueError):
    pass


def read_api_key(target: Target) -> str | None:
    """The key from the env var the scenario names; never stored anywhere else."""
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env)
    if not key:
        raise MissingApiKey(
            f"target.api_key_env names {target.api_key_env}, which is not set: "
            f"export {target.api_key_env}=... and run again"
        )
    return key


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # ends in /v1 (or whatever prefix the API lives under)
    api: str = "chat"
    model: str = "surgecast-reference"
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    stream: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    max_response_bytes: int = 8 << 20

    @classmethod
    def from_target(cls, target: Target, base_url: str | None, api_key: str | None) -> Endpoint:
        url = base_url or target.base_url
        if not url:
            raise ValueError("no target URL: give --target or target.base_url")
        return cls(
            url.rstrip("/"),
            target.api,
            target.model,
            api_key,
            target.timeout_s,
            target.stream,
            dict(target.extra_body),
            target.max_response_bytes,
        )

    @property
    def path(self) -> str:
        prefix = urlsplit(self.base_url).path.rstrip("/")
        return prefix + ("/chat/completions" if self.api == "chat" else "/completions")

    def body(self, spec: RequestSpec, messages: Messages | None = None) -> dict[str, Any]:
        """The request body; `messages` (a chat's history and new turn) default to the prompt."""
        if messages is None:
            messages = [{"role": "user", "content": spec.prompt or ""}]
        body: dict[str, Any] = {"model": self.model, "max_tokens": spec.max_tokens}
        if self.api == "chat":
            body["messages"] = messages
        else:
            body["prompt"] = "\n".join(m["content"] for m in messages)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return {**body, **self.extra_body}

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def address(self) -> tuple[str, int]:
        """(host, port) to connect to: a plain-HTTP host resolved to its address once (HTTPS
        keeps the name, which the certificate check needs)."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme == "https":
            return host, port
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return host, port  # connecting will fail and say why
        return str(info[0][4][0]), port

    def connect(
        self, timeout: float, address: tuple[str, int] | None = None
    ) -> http.client.HTTPConnection:
        """A connection (not yet open) to `address` (default: resolved now)."""
        host, port = address or self.address()
        if urlsplit(self.base_url).scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        return _AddressConnection(host, port, timeout=timeout)

    @property
    def host_header(self) -> str:
        """The Host header the URL names (kept when connecting to a resolved address)."""
        return urlsplit(self.base_url).netloc


class _AddressConnection(http.client.HTTPConnection):
    """Connects to an address already resolved without looking it up again (gevent's
    `create_connection` sends every connect's lookup, numeric or not, to its resolver's
    thread pool, whose threads then fight the sending loop for the GIL), on Linux with the
    kernel's receive time stamps on."""

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if KERNEL_STAMPS:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = _StampedSocket(sock) if KERNEL_STAMPS else sock


# Linux's SO_TIMESTAMPNS (the socket module does not name it): each receive carries the time
# the kernel took its last packet in, on CLOCK_REALTIME
KERNEL_STAMPS = sys.platform == "linux"
SO_TIMESTAMPNS = 35
_STAMP = struct.Struct("qq")
_ANCILLARY = socket.CMSG_SPACE(_STAMP.size) if KERNEL_STAMPS else 0


class _StampedSocket:
    """A connected socket whose every receive notes when the kernel received the data: a busy
    event loop delays the reading, never that time. http.client reads through it."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.arrival: float | None = None  # CLOCK_REALTIME of the last receive's data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        n, ancillary, _, _ = self._sock.recvmsg_into(
            [view[:nbytes] if nbytes else view], _ANCILLARY
        )
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _STAMP.size:
                seconds, nanoseconds = _STAMP.unpack_from(data)
                self.arrival = seconds + nanoseconds * 1e-9
        return n

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> Any:
        """A reader of this socket's receives; the socket closes once it and the reader have
        (the standard library's reference count, which http.client relies on)."""
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class TargetUnreachable(Exception):
    pass


class TargetRefused(Exception):
    """The target turned the requests away (401/403) before any load was sent."""


AUTH_STATUSES = (401, 403)
READ_BYTES = 1 << 16  # at most, per receive
DRAIN_S = 1.0  # for the end of a finished response, before its connection is kept
MAX_LINE_BYTES = 1 << 20
SSE_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")


def refused_message(endpoint: Endpoint, status: int, detail: str) -> str:
    keyed = "with the API key given" if endpoint.api_key else "without an API key"
    return (
        f"{endpoint.base_url} refused the request {keyed} (HTTP {status}: {detail[:120]}): "
        "set target.api_key_env in the scenario to the variable holding a valid key"
    )


def preflight(endpoint: Endpoint, timeout_s: float = 5.0) -> None:
    """Check the target answers and serves the model before any load is sent.

    Raises TargetUnreachable when nothing answers, MissingModel when /v1/models lists other
    models. A server without /v1/models (or that wants other auth for it) passes.
    """
    request = urllib.request.Request(endpoint.base_url + "/models")
    if endpoint.api_key:
        request.add_header("Authorization", f"Bearer {endpoint.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            listing = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code in AUTH_STATUSES:
            raise TargetRefused(refused_message(endpoint, e.code, str(e.reason))) from None
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TargetUnreachable(f"{endpoint.base_url} does not answer: {reason}") from None
    except ValueError:
        return
    served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
    if served and endpoint.model not in served:
        raise MissingModel(
            f"{endpoint.base_url} does not serve model {endpoint.model!r}; it serves: "
            f"{', '.join(map(str, served))} (set target.model in the scenario)"
        )


class MissingModel(ValueError):
    pass


class StreamError(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail


class StreamingCall:
    """One request. `record` holds its progress, so a cancelled call still leaves a record."""

    def __init__(
        self,
        endpoint: Endpoint,
        spec: RequestSpec,
        clock: Clock,
        store_prompt: str = "none",  # privacy.store_prompts: none, hashed or full
        *,
        messages: Messages | None = None,
        intended_start: float | None = None,
        attempt: int = 0,
        address: tuple[str, int] | None = None,
        pool: ConnectionPool | None = None,
    ):
        self.endpoint = endpoint
        self.address = address or endpoint.address()
        self.pool = pool
        self.spec = spec
        self.clock = clock
        self.messages = messages
        self.text: list[str] = []  # the answer's content, for a session's history
        self.retry_after_s: float | None = None  # the server's Retry-After, if it sent one
        self._chunks = 0
        self._bytes = 0  # of the response body read so far
        self._tokens_seen = 0  # the running completion count, where every chunk carries it
        self._finished = False  # the server sent a finish_reason
        self._completed = False  # the response was read to its end
        self._sock: Any = None  # the connected socket
        planned = spec.arrival if intended_start is None else intended_start
        prompt = "\n".join(m["content"] for m in messages) if messages else spec.prompt
        self.record = RequestRecord(
            id=spec.id,
            intended_start=planned,
            start=planned,
            prompt_tokens=None,
            persona=spec.persona,
            session=spec.session,
            turn=spec.turn,
            prompt=stored_prompt(prompt, store_prompt),
            attempt=attempt,
            planned_prompt_tokens=spec.prompt_tokens,
            planned_output_tokens=spec.max_tokens,
            regenerate=spec.regenerate,
        )

    def run(self) -> RequestRecord:
        rec = self.record
        ep = self.endpoint
        payload = json.dumps(ep.body(self.spec, self.messages)).encode()
        headers = {
            "Host": ep.host_header,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        if ep.api_key:
            headers["Authorization"] = f"Bearer {ep.api_key}"
        began = rec.start = self.clock()
        rec.schedule_lag_s = max(0.0, began - rec.intended_start)
        deadline = began + ep.timeout_s
        patience = self.spec.patience_s  # counted from the first attempt's intended start
        give_up = math.inf if patience is None else rec.intended_start + patience
        first_wait = max(0.001, min(give_up - began, ep.timeout_s))
        conn = None
        keep = False  # the connection goes back to the pool, not closed
        try:
            conn, response = self._send(payload, headers, first_wait, began)
            rec.first_byte = self._arrived()
            rec.http_status = response.status
            if response.status != 200:
                self._http_error(response)
            elif ep.stream:
                self._read_stream(response, deadline)
            else:
                self._read_whole(response)
            keep = self.pool is not None and self._completed and _drained(conn, response)
        except StreamError as e:
            self._fail("error", e.kind, e.detail)
        except TimeoutError:
            if rec.first_token is None and give_up < deadline:
                self._fail("cancelled", "abandoned", f"no token within the user's {patience:g} s")
            else:
                self._fail("timeout", "timeout", f"no complete response within {ep.timeout_s:g} s")
        except ConnectionRefusedError as e:
            self._fail("error", "connection_refused", str(e))
        except (http.client.HTTPException, OSError) as e:
            self._fail("error", _broken_kind(rec), f"{type(e).__name__}: {e}")
        except Exception as e:  # a failing target is recorded, never a crash of the run
            self._fail("error", "client_exception", f"{type(e).__name__}: {e}")
        finally:
            if keep and self.pool is not None and conn is not None:
                self.pool.give(conn)
            elif conn is not None:
                conn.close()
            if rec.end is None:
                rec.end = self.clock()
            rec.response_bytes = self._bytes or None
        return rec

    def _send(
        self, payload: bytes, headers: dict[str, str], connect_wait: float, began: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on a pooled connection if one is idle, else on a new one; a
        pooled connection the server closed before answering is replaced once. `start` is
        stamped just before the bytes are written: connecting is `connect_s`, not TTFT."""
        rec, ep = self.record, self.endpoint
        conn = self.pool.take() if self.pool is not None else None
        while True:
            reused = conn is not None
            if conn is None:
                conn = ep.connect(connect_wait, self.address)
                conn.connect()
            self._sock = conn.sock  # the response outlives conn.sock where the server closes
            # stamped before the send, not after: a client descheduled right after sending
            # (the server taking every core) would otherwise start late and see too short a TTFT
            rec.start = self.clock()
            rec.connect_s = rec.start - began
            try:
                conn.request("POST", ep.path, body=payload, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                conn.close()  # closed while idle (a keep-alive timeout): once more, anew
                conn = None

    def _arrived(self) -> float:
        """When the bytes just read came in, on this call's clock: by the kernel's receive
        stamp where there is one (a busy loop reads them later than that), else now."""
        now = self.clock()
        sock = self._sock
        if isinstance(sock, _StampedSocket) and sock.arrival is not None:
            waited = time.time() - sock.arrival  # in the kernel's buffer, unread
            if 0.0 <= waited < 60.0:  # else the wall clock stepped: trust now
                return now - waited
        return now

    def cancel(self) -> None:
        """Mark the call cancelled: the run ended (or was interrupted) while it was in flight."""
        if not self._completed and self.record.status == "ok":
            self._fail("cancelled", "cancelled", "run ended before the response finished")
            self.record.end = self.clock()

    def _fail(self, status: Status, kind: str, detail: str) -> None:
        rec = self.record
        rec.status = status
        rec.error_kind = kind
        rec.error_detail = self.endpoint.redact(detail)[:DETAIL_CHARS] or None

    def _http_error(self, response: http.client.HTTPResponse) -> None:
        text = response.read(4096).decode("utf-8", "replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text
        retry_after = response.getheader("Retry-After")
        if retry_after is not None:
            try:
                self.retry_after_s = max(0.0, float(retry_after))
            except ValueError:
                self.retry_after_s = None  # an HTTP-date: rare from LLM servers; backoff decides
        kind = f"http_{response.status}"
        self._fail("rejected" if response.status in (429, 503) else "error", kind, str(message))

    def _on_content(self, text: str, now: float) -> None:
        if not text:
            return
        rec = self.record
        if rec.first_token is None:
            rec.first_token = now
        rec.chunk_times.append(now)
        self.text.append(text)
        self._chunks += 1

    def _on_event(self, event: Any, now: float) -> None:
        if not isinstance(event, dict):
            raise StreamError("protocol", f"event is not a JSON object: {str(event)[:80]}")
        if "error" in event:
            err = event["error"]
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise StreamError("stream_error", msg)
        self.record.response_id = self.record.response_id or event.get("id")
        chunks = self._chunks
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            self._on_content(text or "", now)
            if choice.get("finish_reason"):
                self._finished = True
        usage = event.get("usage")
        if self._chunks > chunks:
            self._count_chunk_tokens(
                usage.get("completion_tokens") if isinstance(usage, dict) else None
            )
        self._take_usage(usage)
        timings = event.get("timings")  # llama-server's own, on its last chunk
        if isinstance(timings, dict) and _whole(timings.get("cache_n")) is not None:
            self.record.cached_tokens = timings["cache_n"]

    def _count_chunk_tokens(self, completion_tokens: Any) -> None:
        """Tokens in the chunk just read, from the running completion count on every chunk."""
        rec = self.record
        if _whole(completion_tokens) is None:
            if rec.chunk_tokens is not None:
                rec.chunk_tokens.append(1)
            return
        if rec.chunk_tokens is None:
            rec.chunk_tokens = [1] * (len(rec.chunk_times) - 1)  # chunks before usage appeared
        rec.chunk_tokens.append(max(completion_tokens - self._tokens_seen, 1))
        self._tokens_seen = completion_tokens

    def _take_usage(self, usage: Any) -> None:
        """The server's token counts, where they are whole numbers >= 0 (a record never holds
        what a target made up: strings, fractions, negatives)."""
        if isinstance(usage, dict) and _whole(usage.get("completion_tokens")) is not None:
            self.record.prompt_tokens = _whole(usage.get("prompt_tokens"))
            self.record.output_tokens = _whole(usage.get("completion_tokens"))
            self.record.token_source = "usage"
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and _whole(details.get("cached_tokens")) is not None:
                self.record.cached_tokens = details["cached_tokens"]

    def _read_stream(self, response: http.client.HTTPResponse, deadline: float) -> None:
        """Read the stream as the bytes come (one receive at a time, not a line), time-stamping
        every line by the receive that completed it: lines that came together share a time."""
        done = False
        patience = self.spec.patience_s
        ep_limit = self.endpoint.max_response_bytes
        pending = b""  # a line not yet complete
        while not done:
            limit = deadline
            if patience is not None and self.record.first_token is None:
                limit = min(deadline, self.record.intended_start + patience)
            remaining = limit - self.clock()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)  # conn.sock is gone where the server closes
            data = response.read1(READ_BYTES)
            now = self._arrived()
            if not data:
                break
            self._bytes += len(data)
            if self._bytes > ep_limit:
                raise StreamError(
                    "response_too_large",
                    f"the response passed target.max_response_bytes ({ep_limit:,} bytes): "
                    "the rest was not read",
                )
            *lines, pending = (pending + data).split(b"\n")
            if len(pending) > MAX_LINE_BYTES:
                raise StreamError("protocol", f"a line longer than {MAX_LINE_BYTES:,} bytes")
            for line in lines:
                if self._on_line(line, now):
                    done = True
                    break
        if not done and pending:  # the last line, without its newline
            done = self._on_line(pending, self.clock())
        if not (done or self._finished):
            if _cut_off(response):
                raise StreamError("stream_reset", "the connection closed mid-response")
            raise StreamError("incomplete_stream", "the server closed the stream before finishing")
        self._finish()

    def _on_line(self, line: bytes, now: float) -> bool:
        """One SSE line; True at the stream's `[DONE]`."""
        if not line.startswith(b"data:"):
            if line.strip() and not line.startswith(SSE_FIELDS):
                kind = "sse_missing_data" if line.lstrip().startswith(b"{") else "protocol"
                raise StreamError(kind, f"line is not an SSE field: {line[:80]!r}")
            return False  # blank separators, comments, event:/id:/retry: fields
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        try:
            event = json.loads(data)
        except ValueError:
            raise StreamError("protocol", f"event is not JSON: {data[:80]!r}") from None
        self._on_event(event, now)
        return False

    def _read_whole(self, response: http.client.HTTPResponse) -> None:
        limit = self.endpoint.max_response_bytes
        raw = response.read(limit + 1)
        now = self._arrived()
        self._bytes = len(raw)
        if len(raw) > limit:
            raise StreamError(
                "response_too_large",
                f"the response passed target.max_response_bytes ({limit:,} bytes): the rest "
                "was not read",
            )
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise StreamError("protocol", f"response is not a completion: {raw[:80]!r}") from None
        self._on_content(text, now)
        self._take_usage(body.get("usage"))
        self._finish()

    def _finish(self) -> None:
        rec = self.record
        rec.end = self.clock()
        self._completed = True
        if rec.chunk_tokens is not None and max(rec.chunk_tokens, default=1) <= 1:
            rec.chunk_tokens = None  # one token per chunk: the chunk times say it all
        if rec.output_tokens is None:
            rec.output_tokens = sum(rec.chunk_tokens) if rec.chunk_tokens else self._chunks
            rec.token_source = "chunks"


class ConnectionPool:
    """Idle keep-alive connections to one target, newest first. A connection is only kept when
    its response was read to the end and the server did not say it closes; one the server has
    closed meanwhile (llama-server closes after every stream while advertising keep-alive) is
    found so before reuse and dropped."""

    def __init__(self, size: int = 256):
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self.reused = 0  # requests sent on a kept connection
        self.closed_by_server = 0  # kept connections found closed when wanted

    def take(self) -> http.client.HTTPConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if _still_open(conn):
                self.reused += 1
                return conn
            self.closed_by_server += 1
            conn.close()
        return None

    def give(self, conn: http.client.HTTPConnection) -> None:
        if len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle connection that has nothing to read: the server neither closed it (a read would
    return nothing) nor sent anything unasked."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _drained(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> bool:
    """Read what is left of a finished response (a stream's last, empty chunk); True when the
    connection can carry another request."""
    if response.will_close or conn.sock is None:
        return False
    try:
        conn.sock.settimeout(DRAIN_S)
        response.read()
    except (http.client.HTTPException, OSError):
        return False
    return response.isclosed()


def _cut_off(response: http.client.HTTPResponse) -> bool:
    """At the end of a body: the connection closed before the body's own framing was complete
    (no terminating chunk, or bytes of its Content-Length missing): broken, not finished."""
    if response.chunked:
        return response.chunk_left is not None  # http.client sets None at the last chunk
    return bool(response.length)


def _broken_kind(rec: RequestRecord) -> str:
    """What broke, by how far the request got: never connected, connected but no answer,
    or the answer cut off."""
    if rec.first_byte is not None:
        return "stream_reset"
    if rec.connect_s is not None:
        return "connection_reset"
    return "connection_error"


def _whole(value: Any) -> int | None:
    """`value` if it is a whole number >= 0 (not a bool), else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None
