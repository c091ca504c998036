"""Idle keep-alive connections to one target, kept for the next request."""

from __future__ import annotations

from loadgen.wire import Connection


class ConnectionPool:
    """Idle keep-alive connections to one target, newest first. A connection is only kept when
    its response was read to the end and the server did not say it closes; one the server has
    closed meanwhile (llama-server closes after every stream while advertising keep-alive) is
    found so before reuse and dropped."""

    def __init__(self, size: int = 256):
        self.size = size
        self._idle: list[Connection] = []
        self.reused = 0  # requests sent on a kept connection
        self.closed_by_server = 0  # kept connections found closed when wanted

    def take(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle():
                self.reused += 1
                return conn
            self.closed_by_server += 1
            conn.close()
        return None

    def give(self, conn: Connection) -> None:
        if len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
