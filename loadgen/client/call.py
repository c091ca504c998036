"""One request to the target, streamed or not (`StreamingCall`): every receive timestamped as it
arrives, the answer's chunks, tokens and errors recorded in its `RequestRecord`."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from loadgen.client.endpoint import Endpoint, Messages
from loadgen.client.parsing import (
    StreamError,
    parse_event,
    plain_text,
    retry_after_seconds,
    whole_count,
)
from loadgen.client.pool import ConnectionPool
from loadgen.codings import ContentEncodingError
from loadgen.looplag import LoopLag
from loadgen.wire import Closed, Connection, ProtocolError, Response, request_bytes
from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord, Status
from scenarios.scrub import PromptStore, mask_quoted
from scenarios.users import give_up_at

Clock = Callable[[], float]
DETAIL_CHARS = 200
DRAIN_S = 1.0  # for the end of a finished response, before its connection is kept
ERROR_BYTES = 4096  # of an error answer's body, kept for its message
MAX_LINE_BYTES = 1 << 20
SSE_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")


class StreamingCall:
    """One request. `record` holds its progress, so a cancelled call still leaves a record."""

    def __init__(
        self,
        endpoint: Endpoint,
        spec: RequestSpec,
        clock: Clock,
        store_prompt: PromptStore | None = None,  # privacy.store_prompts (None: keep none)
        *,
        messages: Messages | None = None,
        intended_start: float | None = None,
        attempt: int = 0,
        address: tuple[str, int] | None = None,
        pool: ConnectionPool | None = None,
        loop_lag: LoopLag | None = None,
    ):
        self.endpoint = endpoint
        self.loop_lag = loop_lag  # where each receive's wait in the kernel is counted
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
        self._done = False  # the stream's [DONE] came
        self._pending = b""  # a stream line not yet complete
        self._body: list[bytes] = []  # a whole (or error) response's body
        self._now = 0.0  # when the receive being read arrived
        self._deadline = math.inf  # the request's timeout
        self._give_up = math.inf  # the user's patience, until the first token
        self._response = Response(self._on_body)
        planned = spec.arrival if intended_start is None else intended_start
        prompt = "\n".join(m["content"] for m in messages) if messages else spec.prompt
        # what the server's error words must not quote, where the run keeps no prompt
        full = store_prompt is not None and store_prompt.mode == "full"
        self._unquotable = "" if full else prompt or ""
        kept = store_prompt.keep(prompt) if store_prompt else None
        self.record = RequestRecord(
            id=spec.id,
            intended_start=planned,
            start=planned,
            prompt_tokens=None,
            persona=spec.persona,
            session=spec.session,
            turn=spec.turn,
            prompt=endpoint.redact(kept) if full and kept else kept,  # a key pasted in a corpus
            attempt=attempt,
            planned_prompt_tokens=spec.prompt_tokens,
            planned_output_tokens=spec.max_tokens,
            regenerate=spec.regenerate,
            token_source="none",  # until the server's usage, or the stream's end, counts them
        )

    def run(self) -> RequestRecord:
        rec = self.record
        ep = self.endpoint
        headers = {
            "Host": ep.host_header,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",  # (gzip and deflate are undone, if sent all the same)
        }
        if ep.api_key:
            headers["Authorization"] = f"Bearer {ep.api_key}"
        payload = json.dumps(ep.body(self.spec, self.messages)).encode()
        began = rec.start = self.clock()
        rec.schedule_lag_s = max(0.0, began - rec.intended_start)
        deadline = self._deadline = began + ep.timeout_s
        patience = self.spec.patience_s  # counted from the first attempt's intended start
        give_up = self._give_up = give_up_at(self.spec, rec.intended_start)
        conn = None
        keep = False  # the connection goes back to the pool, not closed
        try:
            conn = self._send(request_bytes("POST", ep.path, headers, payload), began)
            rec.http_status = self._response.status
            if self._response.status != 200:
                self._http_error(conn)
            elif ep.stream:
                self._read_stream(conn)
            else:
                self._read_whole(conn)
            keep = self.pool is not None and self._completed and self._drained(conn)
        except StreamError as e:
            self._fail("error", e.kind, e.detail)
        except TimeoutError:
            if rec.first_token is None and give_up < deadline:
                self._fail("cancelled", "abandoned", f"no token within the user's {patience:g} s")
            else:
                self._fail("timeout", "timeout", f"no complete response within {ep.timeout_s:g} s")
        except ConnectionRefusedError as e:
            self._fail("error", "connection_refused", str(e))
        except ProtocolError as e:
            self._fail("error", "protocol", str(e))
        except ContentEncodingError as e:
            self._fail("error", "content_encoding", str(e))
        except OSError as e:
            self._fail("error", _broken_kind(rec), f"{type(e).__name__}: {e}")
        except Exception as e:  # a failing target is recorded, never a crash of the run
            self._fail("error", "client_exception", f"{type(e).__name__}: {e}")
        finally:
            rec.http_status = self._response.status  # (also where an error came with it)
            if keep and self.pool is not None and conn is not None:
                self.pool.give(conn)
            elif conn is not None:
                conn.close()
            if rec.end is None:
                rec.end = self.clock()
            rec.response_bytes = self._bytes or None
        return rec

    def _send(self, request: bytes, began: float) -> Connection:
        """Send the request on a pooled connection if one is idle, else on a new one, and read
        until the answer's headers are in; a pooled connection the server closed before
        answering is replaced once. `start` is stamped just before the bytes are written:
        connecting is `connect_s`, not TTFT."""
        rec, ep = self.record, self.endpoint
        conn = self.pool.take() if self.pool is not None else None
        while True:
            reused = conn is not None
            if conn is None:
                wait = max(0.001, self._limit() - self.clock())
                conn = Connection.open(*self.address, timeout=wait, tls=ep.tls)
            # stamped before the send, not after: a client descheduled right after sending
            # (the server taking every core) would otherwise start late and see too short a TTFT
            rec.start = self.clock()
            rec.connect_s = rec.start - began
            try:
                conn.send(request, max(0.001, self._limit() - rec.start))
                self._read_until_status(conn)
                if self._response.status is None:
                    raise Closed("the server closed the connection before answering")
                return conn
            except BaseException as e:
                conn.close()
                stale = isinstance(e, (Closed, ConnectionResetError, BrokenPipeError))
                if not (reused and stale and rec.first_byte is None):
                    raise
                conn = None  # closed while idle (a keep-alive timeout): once more, anew
                self._response = Response(self._on_body)

    def _read_until_status(self, conn: Connection) -> None:
        """Read until the answer's status is in. An error answer's body that fails to read
        (cut off, not the coding it names, too big) is no error of its own: the status says it."""
        response = self._response
        try:
            self._read_until(conn, lambda: response.status is not None)
        except (ProtocolError, StreamError, ContentEncodingError):
            if response.status in (None, 200):
                raise

    def _limit(self) -> float:
        """No receive waits past this: the user's patience until the first token, the
        request's timeout throughout."""
        if self.record.first_token is not None:
            return self._deadline
        return min(self._deadline, self._give_up)

    def _read_until(
        self, conn: Connection, done: Callable[[], bool], limit: float | None = None
    ) -> None:
        """Receive and feed the response until `done()` or the server closes; no receive waits
        past `limit` (default: `_limit()`), else TimeoutError."""
        response = self._response
        conn.read(
            self._on_receive,
            lambda: done() or response.closed,
            self._limit if limit is None else lambda: limit,
            self.clock,
        )

    def _on_receive(self, data: bytes, arrival: float | None) -> None:
        """One receive's bytes; `arrival`: when the kernel took them in (CLOCK_REALTIME), where
        it says so. A busy loop reads them later than that: their time is put back to it."""
        now = self.clock()
        waited = None
        if arrival is not None:
            waited = time.time() - arrival  # in the kernel's buffer, unread
            if 0.0 <= waited < 60.0:
                now -= waited
            else:
                waited = 0.0  # the wall clock stepped: trust now
        self._now = now
        if self.record.first_byte is None and data:
            self.record.first_byte = now
        chunks = self._chunks
        self._response.feed(data)
        if self.loop_lag is not None:  # a loop this late merges chunks closer apart
            self.loop_lag.read(waited, self._chunks - chunks, closed=not data)

    def cancel(self) -> None:
        """Mark the call cancelled: the run ended (or was interrupted) while it was in flight."""
        if not self._completed and self.record.status == "ok":
            self._fail("cancelled", "cancelled", "run ended before the response finished")
            self.record.end = self.clock()

    def _fail(self, status: Status, kind: str, detail: str) -> None:
        rec = self.record
        rec.status = status
        rec.error_kind = kind
        said = mask_quoted(
            self.endpoint.redact(plain_text(detail))[:DETAIL_CHARS], self._unquotable
        )
        rec.error_detail = said or None

    def _http_error(self, conn: Connection) -> None:
        response = self._response
        with contextlib.suppress(
            TimeoutError, OSError, ProtocolError, StreamError, ContentEncodingError
        ):  # the message in the body, as much of it as comes in time
            self._read_until(conn, lambda: response.complete or self._bytes >= ERROR_BYTES)
        text = b"".join(self._body)[:ERROR_BYTES].decode("utf-8", "replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            self.retry_after_s = retry_after_seconds(retry_after)
        status = response.status
        location = response.headers.get("location")
        if status is not None and 300 <= status < 400 and location:
            message = f"redirected to {location} (not followed: give the final URL) {message}"
        kind = f"http_{status}"
        self._fail("rejected" if status in (429, 503) else "error", kind, str(message))

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
        said_id = event.get("id")
        if self.record.response_id is None and isinstance(said_id, str) and len(said_id) <= 200:
            self.record.response_id = said_id  # (a record never holds a made-up id)
        chunks = self._chunks
        for choice in _choices(event):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if not isinstance(text, str | None):
                raise StreamError("protocol", f"a chunk's content is not text: {str(text)[:80]}")
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
        if isinstance(timings, dict) and whole_count(timings.get("cache_n")) is not None:
            self.record.cached_tokens = timings["cache_n"]

    def _count_chunk_tokens(self, completion_tokens: Any) -> None:
        """Tokens in the chunk just read, from the running completion count on every chunk."""
        rec = self.record
        if whole_count(completion_tokens) is None:
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
        if isinstance(usage, dict) and whole_count(usage.get("completion_tokens")) is not None:
            self.record.prompt_tokens = whole_count(usage.get("prompt_tokens"))
            self.record.output_tokens = whole_count(usage.get("completion_tokens"))
            self.record.token_source = "usage"
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and whole_count(details.get("cached_tokens")) is not None:
                self.record.cached_tokens = details["cached_tokens"]

    def _on_body(self, data: bytes) -> None:
        """Body bytes as they come: a stream's lines are read at once, every line stamped with
        the receive that completed it (lines that came together share a time); any other body
        is kept whole."""
        self._bytes += len(data)
        if self._response.status != 200:  # an error's message: its first ERROR_BYTES, no more
            self._body.append(data[: max(0, ERROR_BYTES - (self._bytes - len(data)))])
            if self._bytes >= ERROR_BYTES:
                raise StreamError("error_body", "the error answer was read as far as it is kept")
            return
        limit = self.endpoint.max_response_bytes
        if self._bytes > limit:
            raise StreamError(
                "response_too_large",
                f"the response passed target.max_response_bytes ({limit:,} bytes): the rest "
                "was not read",
            )
        if not self.endpoint.stream:
            self._body.append(data)
            return
        if self._done:
            return  # after [DONE]
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > MAX_LINE_BYTES:
            raise StreamError("protocol", f"a line longer than {MAX_LINE_BYTES:,} bytes")
        for line in lines:
            if self._on_line(line, self._now):
                self._done = True
                return

    def _read_stream(self, conn: Connection) -> None:
        """Read the stream to its `[DONE]` (or the end of the response)."""
        response = self._response
        self._read_until(conn, lambda: self._done or response.complete)
        if not (self._done or response.cut_off) and self._pending:  # a last line, unended
            self._done = self._on_line(self._pending, self.clock())  # (not one cut short)
        if not (self._done or self._finished):
            if response.cut_off:
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
        self._on_event(parse_event(data), now)
        return False

    def _read_whole(self, conn: Connection) -> None:
        response = self._response
        self._read_until(conn, lambda: response.complete)
        if response.cut_off:
            raise StreamError("stream_reset", "the connection closed mid-response")
        raw = b"".join(self._body)
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise StreamError("protocol", f"response is not a completion: {raw[:80]!r}") from None
        self._on_content(text, self._now)
        self._take_usage(body.get("usage"))
        self._finish()

    def _drained(self, conn: Connection) -> bool:
        """Read what is left of a finished response (a stream's last, empty chunk); True when
        the connection can carry another request."""
        response = self._response
        if not response.keep_alive:
            return False
        try:
            self._read_until(conn, lambda: response.complete, self.clock() + DRAIN_S)
        except (TimeoutError, OSError, ProtocolError, StreamError, ContentEncodingError):
            return False
        return response.complete and response.keep_alive

    def _finish(self) -> None:
        rec = self.record
        rec.end = self.clock()
        self._completed = True
        if rec.chunk_tokens is not None and max(rec.chunk_tokens, default=1) <= 1:
            rec.chunk_tokens = None  # one token per chunk: the chunk times say it all
        if rec.output_tokens is None:
            rec.output_tokens = sum(rec.chunk_tokens) if rec.chunk_tokens else self._chunks
            rec.token_source = "chunks"


def _choices(event: dict[str, Any]) -> list[dict[str, Any]]:
    """An event's choices: a list of objects (or none), else StreamError."""
    choices = event.get("choices") or []
    if not (isinstance(choices, list) and all(isinstance(c, dict) for c in choices)):
        raise StreamError("protocol", f"an event's choices are not objects: {str(choices)[:80]}")
    return choices


def _broken_kind(rec: RequestRecord) -> str:
    """What broke, by how far the request got: never connected, connected but no answer,
    or the answer cut off."""
    if rec.first_byte is not None:
        return "stream_reset"
    if rec.connect_s is not None:
        return "connection_reset"
    return "connection_error"
