"""HTTP/1.1 on one connection, for the streaming client: the kernel's arrival time of every
receive, and a response parsed as its bytes come (httptools' parser, which does no I/O)."""

from __future__ import annotations

import select
import socket
import ssl
import struct
import sys
from collections.abc import Callable

import httptools

from loadgen.codings import BodyDecoder, decoder_for

# Linux's SO_TIMESTAMPNS (the socket module does not name it): each receive carries the time
# the kernel took its last packet in, on CLOCK_REALTIME
KERNEL_STAMPS = sys.platform == "linux"
SO_TIMESTAMPNS = 35
_STAMP = struct.Struct("qq")
_ANCILLARY = socket.CMSG_SPACE(_STAMP.size) if KERNEL_STAMPS else 0
READ_BYTES = 1 << 16  # at most, per receive
MAX_HEAD_BYTES = 1 << 16  # a response's status line, headers and interim answers, together


def stamp_receives(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each receive on `sock` with its data's arrival; False where it
    cannot (not Linux)."""
    if KERNEL_STAMPS:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return KERNEL_STAMPS


def receive_stamped(sock: socket.socket, size: int = READ_BYTES) -> tuple[bytes, float | None]:
    """One receive and the kernel's arrival time of its data (CLOCK_REALTIME, as `time.time()`),
    None without a stamp. Needs `stamp_receives(sock)`."""
    data, ancillary, _, _ = sock.recvmsg(size, _ANCILLARY)
    for level, kind, stamp in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= _STAMP.size:
            seconds, nanoseconds = _STAMP.unpack_from(stamp)
            return data, seconds + nanoseconds * 1e-9
    return data, None


class Closed(ConnectionError):
    """The server closed the connection before it answered."""


class ProtocolError(ValueError):
    """The bytes the server sent are not an HTTP/1.1 response."""


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One request, ready to send. A header value holding a line break is refused (it would
    smuggle a header in)."""
    lines = [f"{method} {path} HTTP/1.1"]
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One open connection to the target. Each receive comes with the kernel's arrival time of
    its data (CLOCK_REALTIME) where the kernel says so: a busy event loop delays the reading,
    never that time."""

    def __init__(self, sock: socket.socket, stamped: bool, tls: bool = False):
        self.sock = sock
        self.stamped = stamped
        # under gevent, the non-blocking socket beneath its wrapper (gevent's private `_sock`);
        # TLS keeps bytes of its own beyond the socket's, so it is read through the wrapper
        gevented = type(sock).__module__.startswith("gevent.") and not tls
        self._raw: socket.socket | None = getattr(sock, "_sock", None) if gevented else None

    @classmethod
    def open(cls, host: str, port: int, timeout: float, tls: bool = False) -> Connection:
        """Connect to `host`: for plain HTTP an address already resolved (gevent's
        `create_connection` sends every lookup, numeric or not, to its resolver's thread pool,
        whose threads fight the sending loop for the GIL); for HTTPS the name the certificate
        names."""
        if tls:
            raw = socket.create_connection((host, port), timeout)
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                context = ssl.create_default_context()
                return cls(context.wrap_socket(raw, server_hostname=host), False, tls=True)
            except BaseException:
                raw.close()
                raise
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stamped = stamp_receives(sock)
        except BaseException:
            sock.close()
            raise
        return cls(sock, stamped)

    def send(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def read(
        self,
        on_data: Callable[[bytes, float | None], None],
        done: Callable[[], bool],
        limit: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        """Hand each receive's bytes and arrival time to `on_data` (b"" once the server closed)
        until `done()`; no wait goes past `limit()` on `clock` (else TimeoutError). Under gevent
        `on_data` runs in the hub as the bytes come: no greenlet switch and no timer a receive."""
        if self._raw is not None:
            return self._read_in_hub(self._raw, on_data, done, limit, clock)
        while not done():
            remaining = limit() - clock()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            data, arrival = self._receive(self.sock)
            on_data(data, arrival)
            if not data:
                return
        return None

    def _read_in_hub(
        self,
        raw: socket.socket,
        on_data: Callable[[bytes, float | None], None],
        done: Callable[[], bool],
        limit: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        if done():
            return  # (a stream's end often comes with its last event: no watcher for it)
        gevent = sys.modules["gevent"]
        finished = sys.modules["gevent.event"].Event()
        failure: list[BaseException] = []
        watcher = gevent.get_hub().loop.io(raw.fileno(), 1)

        def readable() -> None:
            try:
                data, arrival = self._receive(raw)
                on_data(data, arrival)
                if data and not done():
                    return
            except BlockingIOError:
                return
            except Exception as e:  # the reader's to raise, not the hub's
                failure.append(e)
            watcher.stop()
            finished.set()

        watcher.start(readable)
        try:
            while not finished.is_set():
                remaining = limit() - clock()
                if remaining <= 0:
                    raise TimeoutError
                finished.wait(remaining)
        finally:
            watcher.stop()
            watcher.close()
        if failure:
            raise failure[0]

    def _receive(self, sock: socket.socket) -> tuple[bytes, float | None]:
        return receive_stamped(sock) if self.stamped else (sock.recv(READ_BYTES), None)

    def idle(self) -> bool:
        """Open and silent: the server neither closed it (a read would return nothing) nor
        sent anything unasked."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        self.sock.close()


class Response:
    """One HTTP response, fed each receive's bytes in turn; its body goes to `on_body` as it
    comes, its framing (chunked or not) and its Content-Encoding (gzip, deflate) undone. A
    head over MAX_HEAD_BYTES, a 101 or a status outside 100-599 is a ProtocolError; a coding
    not undone, a ContentEncodingError."""

    def __init__(self, on_body: Callable[[bytes], None]):
        self._on_body = on_body
        self.status: int | None = None  # once the headers are in (an interim 1xx is skipped)
        self.headers: dict[str, str] = {}  # names in lower case
        self.complete = False  # the whole message came, by its own framing
        self.closed = False  # the server closed the connection
        self.unasked = False  # bytes came after the message ended
        self._reusable = False  # the server's word (HTTP version, Connection header)
        self._decoder: BodyDecoder | None = None  # its Content-Encoding, undone
        self._head_bytes = 0  # read before the status was known
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        """The bytes of one receive; b"" when the server closed the connection."""
        if not data:
            self.closed = True
            if self.status is not None and not self.framed and not self.complete:
                self._end_body()  # a body that runs to the close ends there
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            raise (e.__context__ or e) from None  # what the body's reader raised
        except httptools.HttpParserError as e:
            raise ProtocolError(f"not an HTTP/1.1 response: {e}") from None
        except httptools.HttpParserUpgrade:
            raise ProtocolError("the server switched protocols (HTTP 101) unasked") from None
        if self.status is None:  # a head without end, or interim answers without end
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise ProtocolError(
                    f"no final status within the response's first {MAX_HEAD_BYTES:,} bytes (a "
                    "status line or headers without end, or endless interim answers)"
                )

    @property
    def framed(self) -> bool:
        """The body says where it ends (Content-Length or chunked), not the close."""
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        return chunked or "content-length" in self.headers

    @property
    def cut_off(self) -> bool:
        """The connection closed before the body's own framing was complete."""
        return self.closed and self.framed and not self.complete

    @property
    def keep_alive(self) -> bool:
        """The server will take another request on this connection once this one is read."""
        return self._reusable and not (self.closed or self.unasked)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.unasked = self.complete

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:  # RFC 9110 15: three digits, 1xx to 5xx
            raise ProtocolError(f"status {status:03d} is not an HTTP status")
        if status >= 200:
            self.status = status
            self._reusable = self._parser.should_keep_alive()  # only known until the end
            self._decoder = decoder_for(self.headers.get("content-encoding", ""))
        else:
            self.headers = {}  # 100 Continue, 103 Early Hints: the answer follows

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self._decoder is None:
            self._on_body(body)
            return
        for piece in self._decoder.feed(body):  # each counted before the next is made
            self._on_body(piece)

    def on_message_complete(self) -> None:
        if self.status is not None and not self.complete:
            self._end_body()

    def _end_body(self) -> None:
        self.complete = True
        if self._decoder is not None and self.status is not None:
            self._decoder.finish()
