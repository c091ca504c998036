"""The hostile target's answers (tests/hostile_target.py serves them): each way a real server
or proxy misbehaves, as a `Case` that writes its bytes on one connection and says what a client
must record for it (`Expect`), grouped in families (usage, framing, encoding, endless, huge,
pages, head, resets).

An answer's first few kilobytes are written in pieces cut at seeded random points, so a client's
parser meets the message's boundaries anywhere; endless answers stop when the client leaves, the
server stops, or after ENDLESS_S.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BIG = 100 << 20  # the 100 MB answers
ENDLESS_S = 30.0  # an endless answer gives up after this, whoever is listening
PIECE = 1 << 16


class Answer:
    """One connection's answer: bytes written in seeded pieces, a reset, an endless stream."""

    def __init__(self, conn: socket.socket, rng: random.Random, stop: threading.Event):
        self.conn = conn
        self.rng = rng
        self.stop = stop

    def send(self, data: bytes) -> None:
        """`data`, its first 4 KB cut at up to three random points with a pause between."""
        head, rest = data[:4096], data[4096:]
        cuts = sorted(self.rng.sample(range(1, len(head)), min(3, max(len(head) - 1, 0))))
        for a, b in zip([0, *cuts], [*cuts, len(head)], strict=True):
            self.conn.sendall(head[a:b])
            time.sleep(self.rng.random() * 0.002)
        if rest:
            self.conn.sendall(rest)

    def whole(self, data: bytes) -> None:
        """`data` in one write: the client reads it in one receive."""
        self.conn.sendall(data)

    def repeat(self, piece: bytes, total: int) -> None:
        """`piece` again and again, `total` bytes in all (never held whole)."""
        block = piece * max(1, PIECE // len(piece))
        sent = 0
        while sent < total and not self.stop.is_set():
            self.conn.sendall(block[: total - sent])
            sent += len(block)

    def forever(self, piece: bytes, every_s: float) -> None:
        """`piece` every `every_s` until the client leaves (ENDLESS_S at most)."""
        ends = time.monotonic() + ENDLESS_S
        while time.monotonic() < ends and not self.stop.wait(every_s):
            self.conn.sendall(piece)

    def stall(self) -> None:
        """Send nothing more, the connection open, until the client leaves."""
        self.conn.settimeout(ENDLESS_S)
        while not self.stop.is_set() and self.conn.recv(PIECE):
            pass

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), not a FIN."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()


# an answer's bytes
def head(status: str = "200 OK", *headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"{version} {status}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def fixed(status: str, body: bytes, *headers: str) -> bytes:
    return head(status, *headers, f"Content-Length: {len(body)}") + body


def chunked(body: bytes, size: int = 40) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(p), p)
        for p in (body[i : i + size] for i in range(0, len(body), size))
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(text: str) -> bytes:
    return event(
        {
            "id": "h",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}}],
        }
    )


FINISH = event({"id": "h", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
DONE = b"data: [DONE]\n\n"
SSE = "Content-Type: text/event-stream"
JSON = "Content-Type: application/json"
HTML = "Content-Type: text/html"


def stream(usage: bytes = b"") -> bytes:
    """A whole, well-formed stream of two content chunks; `usage`, its usage chunk's JSON."""
    tail = b'data: {"id":"h","choices":[],"usage":' + usage + b"}\n\n" if usage else b""
    return delta("hello") + delta(" world") + FINISH + tail + DONE


def sse(body: bytes, *headers: str) -> bytes:
    return head("200 OK", SSE, *headers) + body  # runs to the close


def page(status: str, title: str) -> bytes:
    """An HTML error page, as a proxy or load balancer writes one, with what it must not leak."""
    html = (
        f"<html><head><title>{title}</title><style>body{{color:red}}</style>"
        f"<script>alert('x')</script></head><body>\n<h1>{title}</h1>\n"
        "<p>a | pipe, *stars*, [link](x) &amp; \x1b[31mansi\x1b[0m\u202eevil\r\nline</p>"
        "</body></html>"
    ).encode()
    return fixed(status, html, HTML)


@dataclass(frozen=True)
class Expect:
    """What the client must record: its status, error kind and http_status; for a success, the
    source of its token counts; for a bounded read, at most this many body bytes."""

    status: str
    kind: str | None = None
    http: int | None = 200
    tokens: str | None = None
    max_bytes: int | None = None


OK_USAGE = Expect("ok", tokens="usage")
OK_CHUNKS = Expect("ok", tokens="chunks")


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    write: Callable[[Answer], None]
    expect: Expect


def _big_error(a: Answer) -> None:
    a.whole(
        head("500 Internal Server Error", HTML, f"Content-Length: {BIG}") + b"<html><body><pre>"
    )
    a.repeat(b"Traceback (most recent call last): <b>boom</b>\n", BIG)


def _big_json(a: Answer) -> None:
    a.whole(head("200 OK", JSON, f"Content-Length: {BIG}") + b'{"choices":[{"message":{"content":"')
    a.repeat(b"x", BIG)


def _big_stream(a: Answer) -> None:
    a.whole(head("200 OK", SSE))
    a.repeat(delta("flood"), BIG)


def _endless(piece: bytes, every_s: float) -> Callable[[Answer], None]:
    def write(a: Answer) -> None:
        a.send(head("200 OK", SSE) + delta("hi"))
        a.forever(piece, every_s)

    return write


def _stall(a: Answer) -> None:
    a.send(head("200 OK", SSE) + delta("hello"))
    a.stall()


def _trickle(a: Answer) -> None:
    a.send(head("200 OK", SSE) + b"da")
    a.forever(b"t", 0.2)  # one byte at a time, the line never done


def _interim_forever(a: Answer) -> None:
    a.repeat(b"HTTP/1.1 102 Processing\r\n\r\n", BIG)


def _reset_mid_stream(a: Answer) -> None:
    a.send(sse(delta("hello")))
    time.sleep(0.05)
    a.reset()


def _then(data: bytes, after: Callable[[Answer], None]) -> Callable[[Answer], None]:
    def write(a: Answer) -> None:
        a.send(data)
        after(a)

    return write


def _gzip_bomb(a: Answer) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    a.whole(head("200 OK", SSE, "Content-Encoding: gzip") + packer.compress(delta("hi")))
    blank = (b":" + b" " * 1022 + b"\n") * 1024  # SSE comments: no line grows, the body does
    for _ in range(100):  # 100 MB of them, about 100 KB on the wire
        if a.stop.is_set():
            return
        a.conn.sendall(packer.compress(blank))
    a.conn.sendall(packer.flush())


def _gzip_bomb_page(a: Answer) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    te = "Transfer-Encoding: chunked"
    a.whole(head("500 Internal Server Error", HTML, "Content-Encoding: gzip", te))
    blank = b"<p>" + b"x" * (1 << 20) + b"</p>"
    for _ in range(100):  # 100 MB of page, about 100 KB on the wire
        if a.stop.is_set():
            return
        packed = packer.compress(blank)
        if packed:
            a.conn.sendall(b"%x\r\n%s\r\n" % (len(packed), packed))
    packed = packer.flush()
    a.conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed))


def _deflate_raw(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(body) + packer.flush()


def _keep(data: bytes) -> Callable[[Answer], None]:
    return lambda a: a.send(data)


def _one_read(data: bytes) -> Callable[[Answer], None]:
    return lambda a: a.whole(data)


def _cases() -> Iterator[Case]:
    yield from _usage_cases()
    yield from _framing_cases()
    yield from _encoding_cases()
    yield from _endless_cases()
    yield from _huge_cases()
    yield from _page_cases()
    yield from _head_cases()
    yield from _reset_cases()
    yield from _shape_cases()


def _usage_cases() -> Iterator[Case]:
    usages = {
        "constant_usage": (b'{"prompt_tokens":7,"completion_tokens":1}', OK_USAGE),
        "negative_usage": (b'{"prompt_tokens":-5,"completion_tokens":-1}', OK_CHUNKS),
        "huge_usage": (
            b'{"prompt_tokens":%d,"completion_tokens":%d}' % (2**63, 2**64 - 1),
            OK_CHUNKS,
        ),
        "beyond_64_bits_usage": (
            b'{"prompt_tokens":%d,"completion_tokens":%d}' % (10**30, 2**64),
            OK_CHUNKS,
        ),
        "string_usage": (b'{"prompt_tokens":"12","completion_tokens":"3"}', OK_CHUNKS),
        "nan_usage": (b'{"prompt_tokens":NaN,"completion_tokens":Infinity}', OK_CHUNKS),
        "float_usage": (b'{"prompt_tokens":1e300,"completion_tokens":2.5}', OK_CHUNKS),
        "list_usage": (b"[1, 2]", OK_CHUNKS),
    }
    for name, (usage, expect) in usages.items():
        yield Case(name, "usage", _keep(sse(stream(usage))), expect)
    yield Case("absent_usage", "usage", _keep(sse(stream())), OK_CHUNKS)
    crlf = stream().replace(b"\n", b"\r\n")
    yield Case("crlf_lines", "usage", _keep(sse(crlf)), OK_CHUNKS)


def _framing_cases() -> Iterator[Case]:
    te = "Transfer-Encoding: chunked"
    body = stream()
    protocol = Expect("error", "protocol")
    yield Case(
        "bad_chunk_size", "framing", _keep(head("200 OK", SSE, te) + b"zz\r\n" + body), protocol
    )
    truncated = head("200 OK", SSE, te) + b"400\r\n" + body[:60]
    yield Case("truncated_chunk", "framing", _keep(truncated), Expect("error", "stream_reset"))
    overrun = head("200 OK", SSE, te) + b"5\r\n" + body
    yield Case("chunk_overrun", "framing", _keep(overrun), protocol)
    short = head("200 OK", SSE, "Content-Length: 5000") + body[:80]
    yield Case("short_content_length", "framing", _keep(short), Expect("error", "stream_reset"))
    twice = head("200 OK", SSE, "Content-Length: 5", "Content-Length: 7") + body
    head_error = Expect("error", "protocol", None)  # no status: the head was not HTTP
    yield Case("two_content_lengths", "framing", _keep(twice), head_error)
    both = head("200 OK", SSE, "Content-Length: 5", te) + chunked(body)
    yield Case("length_and_chunked", "framing", _keep(both), head_error)
    bare = head("200 OK", SSE).replace(b"\r\n", b"\n") + body
    yield Case("bare_lf_head", "framing", _keep(bare), head_error)
    huge_size = head("200 OK", SSE, te) + b"f" * 24 + b"\r\n" + body
    yield Case("chunk_size_overflow", "framing", _keep(huge_size), protocol)
    huge_length = head("200 OK", SSE, "Content-Length: " + "9" * 30) + body
    yield Case("content_length_overflow", "framing", _keep(huge_length), head_error)
    # (lawful, if rare: in the encoding family, whose runs hold successes; this one's do not)
    extras = chunked(body).replace(b"\r\n", b";ext=1\r\n", 1)[:-2] + b"X-Trailer: t\r\n\r\n"
    ext = _keep(head("200 OK", SSE, te) + extras)
    yield Case("chunk_ext_trailers", "encoding", ext, OK_CHUNKS)


def _encoding_cases() -> Iterator[Case]:
    body = stream(b'{"prompt_tokens":9,"completion_tokens":2}')
    codings = {
        "gzip_stream": ("gzip", gzip.compress(body)),
        "deflate_stream": ("deflate", zlib.compress(body)),
        "raw_deflate_stream": ("deflate", _deflate_raw(body)),
    }
    for name, (coding, packed) in codings.items():
        yield Case(name, "encoding", _keep(sse(packed, f"Content-Encoding: {coding}")), OK_USAGE)
    gz_chunked = head("200 OK", SSE, "Content-Encoding: gzip", "Transfer-Encoding: chunked")
    yield Case(
        "gzip_chunked", "encoding", _keep(gz_chunked + chunked(gzip.compress(body))), OK_USAGE
    )
    brotli = sse(b"\x1b\x2c\x00\xf8\xa5" + body, "Content-Encoding: br")
    yield Case("br_stream", "encoding", _keep(brotli), Expect("error", "content_encoding"))
    lying = sse(body, "Content-Encoding: gzip")  # says gzip, sends it plain
    yield Case(
        "gzip_header_plain_body", "encoding", _keep(lying), Expect("error", "content_encoding")
    )
    error = fixed(
        "502 Bad Gateway", gzip.compress(b"<h1>upstream gone</h1>"), HTML, "Content-Encoding: gzip"
    )
    yield Case("gzip_error_page", "encoding", _keep(error), Expect("error", "http_502", 502))
    corrupt = fixed("502 Bad Gateway", b"<h1>not gzip</h1>", HTML, "Content-Encoding: gzip")
    yield Case(
        "corrupt_gzip_error_page", "encoding", _one_read(corrupt), Expect("error", "http_502", 502)
    )
    stacked = sse(gzip.compress(gzip.compress(body)), "Content-Encoding: gzip, gzip")
    yield Case("stacked_codings", "encoding", _keep(stacked), Expect("error", "content_encoding"))


def _endless_cases() -> Iterator[Case]:
    timeout = Expect("timeout", "timeout")
    yield Case("endless_chunks", "endless", _endless(delta(" more"), 0.02), timeout)
    yield Case("endless_keepalive", "endless", _endless(b": keepalive\n\n", 0.05), timeout)
    yield Case("stall_mid_stream", "endless", _stall, timeout)
    yield Case("trickle_line", "endless", _trickle, timeout)
    yield Case("stall_before_head", "endless", Answer.stall, Expect("timeout", "timeout", None))
    trickle_head = _then(b"HTTP/1.1 200 OK\r\n", lambda a: a.forever(b"X", 0.05))
    yield Case("trickle_head", "endless", trickle_head, Expect("timeout", "timeout", None))


def _huge_cases() -> Iterator[Case]:
    yield Case(
        "huge_error_page", "huge", _big_error, Expect("error", "http_500", 500, max_bytes=1 << 17)
    )
    too_large = Expect("error", "response_too_large", max_bytes=(8 << 20) + (1 << 17))
    yield Case("huge_stream", "huge", _big_stream, too_large)
    yield Case(
        "huge_json_200",
        "huge",
        _big_json,
        Expect("error", "protocol", max_bytes=(1 << 20) + (1 << 17)),
    )
    long_line = sse(b"data: " + b"x" * (3 << 20))
    yield Case(
        "long_sse_line",
        "huge",
        _keep(long_line),
        Expect("error", "protocol", max_bytes=(1 << 20) + (1 << 17)),
    )
    bomb = Expect("error", "response_too_large", max_bytes=(8 << 20) + (1 << 17))
    yield Case("gzip_bomb", "huge", _gzip_bomb, bomb)  # 100 MB in about 100 KB
    yield Case(
        "gzip_bomb_error_page",
        "huge",
        _gzip_bomb_page,
        Expect("error", "http_500", 500, max_bytes=1 << 17),
    )


def _page_cases() -> Iterator[Case]:
    yield Case(
        "html_502",
        "pages",
        _keep(page("502 Bad Gateway", "502 Bad Gateway")),
        Expect("error", "http_502", 502),
    )
    yield Case(
        "html_404",
        "pages",
        _keep(page("404 Not Found", "404 Not Found")),
        Expect("error", "http_404", 404),
    )
    yield Case(
        "html_503",
        "pages",
        _keep(page("503 Service Unavailable", "overloaded")),
        Expect("rejected", "http_503", 503),
    )
    busy = fixed("429 Too Many Requests", b"slow down", "Retry-After: -1e999, or soon")
    yield Case("retry_after_nonsense", "pages", _keep(busy), Expect("rejected", "http_429", 429))
    yield Case(
        "html_200", "pages", _keep(page("200 OK", "Welcome to nginx!")), Expect("error", "protocol")
    )
    yield Case(
        "json_200_not_sse",
        "pages",
        _keep(fixed("200 OK", b'{"error":{"message":"<b>no</b>"}}', JSON)),
        Expect("error", "sse_missing_data"),
    )
    yield Case(
        "empty_200", "pages", _keep(fixed("200 OK", b"", SSE)), Expect("error", "incomplete_stream")
    )
    bad_utf8 = b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe\xc3"}}]}\n\n'
    yield Case(
        "invalid_utf8", "pages", _keep(sse(bad_utf8 + FINISH + DONE)), Expect("error", "protocol")
    )
    text_utf8 = fixed(
        "500 Internal Server Error", b"bad \xff\xfe bytes\x00\x07 here", "Content-Type: text/plain"
    )
    yield Case("invalid_utf8_error", "pages", _keep(text_utf8), Expect("error", "http_500", 500))
    yield Case(
        "wrong_content_type",
        "pages",
        _keep(sse(stream()).replace(SSE.encode(), b"Content-Type: image/png")),
        OK_CHUNKS,
    )


def _head_cases() -> Iterator[Case]:
    flood = head("200 OK", SSE, *(f"X-Flood-{i}: {'v' * 40}" for i in range(500)))
    yield Case("headers_flood", "head", _keep(flood + stream()), OK_CHUNKS)
    endless_head = head("200 OK", SSE)[:-2]
    yield Case(
        "endless_headers",
        "head",
        _then(endless_head, lambda a: a.repeat(b"X-More: vvvvvvvvvvvvvvvv\r\n", BIG)),
        Expect("error", "protocol", None),
    )
    long_status = b"HTTP/1.1 200 " + b"O" * (1 << 20) + b"\r\n"
    yield Case(
        "long_status_line",
        "head",
        _keep(long_status + head("", SSE)[11:] + stream()),
        Expect("error", "protocol", None),
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    yield Case("interim_1xx", "head", _keep(interim + sse(stream())), OK_CHUNKS)
    yield Case("interim_forever", "head", _interim_forever, Expect("error", "protocol", None))
    moved = fixed(
        "301 Moved Permanently", b"<a href='/v2'>moved</a>", HTML, "Location: http://127.0.0.1:9/v2"
    )
    yield Case("redirect_301", "head", _keep(moved), Expect("error", "http_301", 301))
    temp = fixed("307 Temporary Redirect", b"", "Location: /elsewhere")
    yield Case("redirect_307", "head", _keep(temp), Expect("error", "http_307", 307))
    upgrade = (
        head("101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade")
        + b"\x81\x05hello"
    )
    yield Case("switching_protocols", "head", _keep(upgrade), Expect("error", "protocol", None))
    yield Case(
        "not_http", "head", _keep(b"SSH-2.0-OpenSSH_9.6\r\n"), Expect("error", "protocol", None)
    )
    yield Case(
        "status_999", "head", _keep(fixed("999 Odd", b"x")), Expect("error", "protocol", None)
    )
    yield Case(
        "status_000", "head", _keep(fixed("000 Nothing", b"x")), Expect("error", "protocol", None)
    )
    yield Case(
        "http10_to_close", "head", _keep(sse(stream()).replace(b"HTTP/1.1", b"HTTP/1.0")), OK_CHUNKS
    )


def _reset_cases() -> Iterator[Case]:
    yield Case(
        "reset_before_answer", "resets", Answer.reset, Expect("error", "connection_reset", None)
    )
    yield Case(
        "close_before_answer", "resets", lambda a: None, Expect("error", "connection_reset", None)
    )
    yield Case("reset_mid_stream", "resets", _reset_mid_stream, Expect("error", "stream_reset"))
    garbled = sse(b"data: {not json\n\n")
    yield Case("error_in_first_read", "resets", _one_read(garbled), Expect("error", "protocol"))
    said = sse(b'data: {"error":{"message":"overloaded"}}\n\n')
    yield Case(
        "error_event_in_first_read", "resets", _one_read(said), Expect("error", "stream_error")
    )
    not_sse = sse(b"<html>oops</html>\n")
    yield Case("html_in_first_read", "resets", _one_read(not_sse), Expect("error", "protocol"))


def _shape_cases() -> Iterator[Case]:
    """JSON events of the wrong shape: a completion chunk's fields of another type."""
    protocol = Expect("error", "protocol")
    shapes = {
        "choices_null_item": b'{"choices":[null]}',
        "choices_string": b'{"choices":"hello"}',
        "choices_number": b'{"choices":5}',
        "content_number": b'{"choices":[{"index":0,"delta":{"content":123}}]}',
        "content_list": b'{"choices":[{"index":0,"delta":{"content":["a"]}}]}',
        "text_object": b'{"choices":[{"index":0,"text":{"a":1}}]}',
    }
    for name, data in shapes.items():
        body = delta("hello") + b"data: " + data + b"\n\n" + FINISH + DONE
        yield Case(name, "shapes", _keep(sse(body)), protocol)
    odd_id = event({"id": {"x": [1]}, "choices": [{"index": 0, "delta": {"content": "hi"}}]})
    yield Case("id_object", "shapes", _keep(sse(odd_id + FINISH + DONE)), OK_CHUNKS)
    yield Case(
        "error_not_object",
        "shapes",
        _keep(sse(b'data: {"error": 5}\n\n')),
        Expect("error", "stream_error"),
    )
    mid = delta("hello") + b"data: {oops\n\n" + FINISH + DONE
    yield Case("non_json_mid_stream", "shapes", _keep(sse(mid)), protocol)


CASES: dict[str, Case] = {c.name: c for c in _cases()}
FAMILIES: dict[str, list[str]] = {}
for _case in CASES.values():
    FAMILIES.setdefault(_case.family, []).append(_case.name)
