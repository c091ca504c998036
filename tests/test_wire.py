"""The client's HTTP/1.1 reading, fed known bytes in every split a network could make."""

from __future__ import annotations

import pytest

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
