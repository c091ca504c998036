"""The client's HTTP/1.1 reading, fed known bytes in every split a network could make."""

from __future__ import annotations

import gzip
import zlib

import pytest

from loadgen.codings import PIECE, ContentEncodingError
from loadgen.wire import ProtocolError, Response, request_bytes

EVENTS = [b'data: {"n":%d}\n\n' % i for i in range(5)]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in EVENTS)
    + b"0\r\nX-Trailer: t\r\n\r\n"
)


def _fed(pieces: list[bytes]) -> tuple[Response, bytes]:
    body: list[bytes] = []
    response = Response(body.append)
    for piece in pieces:
        response.feed(piece)
    return response, b"".join(body)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(CHUNKED)])
def test_a_chunked_stream_split_anywhere_gives_the_same_body(size: int) -> None:
    pieces = [CHUNKED[i : i + size] for i in range(0, len(CHUNKED), size)]
    response, body = _fed(pieces)
    assert body == b"".join(EVENTS)
    assert (response.status, response.complete, response.keep_alive) == (200, True, True)
    assert response.headers["content-type"] == "text/event-stream"


def test_an_interim_answer_is_skipped() -> None:
    response, body = _fed(
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nRetry-After: 2\r\n"
            b"Content-Length: 4\r\n\r\nbusy"
        ]
    )
    assert (response.status, response.headers["retry-after"], body) == (429, "2", b"busy")
    assert response.complete


def test_a_body_without_framing_ends_at_the_close_and_the_connection_with_it() -> None:
    response, body = _fed([b"HTTP/1.0 200 OK\r\n\r\ndata: x\n\n", b""])
    assert (body, response.complete, response.cut_off, response.keep_alive) == (
        b"data: x\n\n",
        True,
        False,
        False,
    )


@pytest.mark.parametrize(
    "head",
    [b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel", b"Content-Length: 10\r\n\r\nhel"],
)
def test_a_framed_body_closed_early_is_cut_off(head: bytes) -> None:
    response, _ = _fed([b"HTTP/1.1 200 OK\r\n" + head, b""])
    assert response.cut_off and not response.complete


def test_connection_close_and_bytes_unasked_forbid_reuse() -> None:
    closing, _ = _fed([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert closing.complete and not closing.keep_alive
    extra, body = _fed([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"])
    assert extra.complete and body == b"ok" and extra.unasked and not extra.keep_alive
    assert extra.status == 200


def test_not_http_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"not an HTTP/1\.1 response"):
        _fed([b"SSH-2.0-OpenSSH_9.6\r\n"])


def test_what_the_body_reader_raises_reaches_the_caller() -> None:
    def refuse(_: bytes) -> None:
        raise KeyError("too big")

    response = Response(refuse)
    with pytest.raises(KeyError, match="too big"):
        response.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_a_request_is_framed_and_a_smuggled_header_refused() -> None:
    raw = request_bytes("POST", "/v1/chat/completions", {"Host": "h:1"}, b"{}")
    assert raw == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n\r\n{}"
    )
    with pytest.raises(ValueError, match="Authorization holds a line break"):
        request_bytes("POST", "/", {"Authorization": "Bearer k\r\nX-Evil: 1"}, b"")


BODY = b"".join(EVENTS)
CODED = {
    "gzip": gzip.compress(BODY),
    "deflate": zlib.compress(BODY),  # zlib-wrapped, as RFC 9110 has it
    "raw-deflate": zlib.compress(BODY)[2:-4],  # bare, as some servers send it
}


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
@pytest.mark.parametrize("coding", list(CODED))
def test_a_compressed_body_split_anywhere_is_decoded(coding: str, size: int) -> None:
    """A server or proxy may compress the body whatever the client asked (it sends
    Accept-Encoding: identity): gzip and deflate are undone as they come."""
    name = coding.removeprefix("raw-")
    message = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: " + name.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n"
        % (len(CODED[coding]), CODED[coding])
    )
    response, body = _fed([message[i : i + size] for i in range(0, len(message), size)])
    assert body == BODY and response.complete


def test_a_compression_bomb_is_handed_on_in_bounded_pieces() -> None:
    """100 MB of zeros in about 100 KB: decoded a piece at a time, so the reader's bound stops
    it after a piece, never after the whole 100 MB is made."""
    pieces: list[int] = []

    def count(data: bytes) -> None:
        pieces.append(len(data))
        if sum(pieces) > 1 << 20:
            raise OverflowError("past the bound")

    bomb = gzip.compress(bytes(100 << 20), 9)
    response = Response(count)
    with pytest.raises(OverflowError):
        response.feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + bomb)
    assert max(pieces) <= PIECE and sum(pieces) <= (1 << 20) + PIECE


@pytest.mark.parametrize(
    ("head", "body", "says"),
    [
        (b"Content-Encoding: br", b"\x1b\x2c\x00", "'br'-encoded, which is not decoded"),
        (b"Content-Encoding: gzip, gzip", b"", "encoded several times"),
        (b"Content-Encoding: gzip", b"data: plain\n\n", "not valid gzip"),
    ],
)
def test_a_coding_not_undone_or_a_lying_one_is_an_error(
    head: bytes, body: bytes, says: str
) -> None:
    with pytest.raises(ContentEncodingError, match=says):
        _fed([b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + body, b""])


def test_a_gzip_body_cut_short_is_an_error() -> None:
    cut = gzip.compress(BODY)[:-10]
    message = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(cut)
    with pytest.raises(ContentEncodingError, match="ended before its stream did"):
        _fed([message + cut])


@pytest.mark.parametrize(
    ("pieces", "says"),
    [
        ([b"HTTP/1.1 200 " + b"O" * 70_000], "no final status within"),
        ([b"HTTP/1.1 200 OK\r\n"] + [b"X-A%d: b\r\n" % i for i in range(10_000)], "no final"),
        ([b"HTTP/1.1 102 Processing\r\n\r\n" * 5000], "endless interim answers"),
        (
            [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"],
            "switched protocols",
        ),
        ([b"HTTP/1.1 000 None\r\nContent-Length: 0\r\n\r\n"], "status 000 is not"),
        ([b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"], "status 999 is not"),
    ],
    ids=["status-line", "headers", "interim", "upgrade", "status-0", "status-999"],
)
def test_a_head_without_end_or_not_http_is_a_protocol_error(pieces: list[bytes], says: str) -> None:
    """Found by the hostile target (tests/hostile_cases.py): an endless head kept the client
    reading (and a header dict growing) until its timeout; a 101 escaped as httptools' own
    exception; a status outside 100-599 was taken as an interim answer or recorded as one
    no reader would load."""
    with pytest.raises(ProtocolError, match=says):
        _fed(pieces)
