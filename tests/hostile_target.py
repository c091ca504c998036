"""A hostile target on loopback (issue 26): an OpenAI-compatible endpoint whose every answer
misbehaves in one of the ways a real server or proxy can (tests/hostile_cases.py).

The request's model picks the misbehaviour: a case's name gets that case; a family's name gets
the family's cases in turn (in an order its seed shuffles); `/v1/models` lists every name. Every
request is logged (model, case, max_tokens).
"""

from __future__ import annotations

import json
import random
import socket
import threading
from dataclasses import dataclass
from typing import Any

from tests.hostile_cases import CASES, FAMILIES, JSON, PIECE, Answer, Case, fixed


@dataclass(frozen=True)
class Served:
    model: str
    case: str
    max_tokens: int | None


class HostileTarget:
    """The server: a thread a connection, each answering one request and closing."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.log: list[Served] = []
        self._lock = threading.Lock()
        self._turns = {f: 0 for f in FAMILIES}
        self._orders = {
            f: random.Random(f"{seed}-{f}").sample(n, len(n)) for f, n in FAMILIES.items()
        }
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}/v1"

    def __enter__(self) -> HostileTarget:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()

    def served(self, case_or_family: str) -> list[Served]:
        return [s for s in self.log if s.model == case_or_family]

    def _serve(self) -> None:
        self._server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self._connections += 1
            rng = random.Random(self.seed * 1_000_003 + self._connections)
            threading.Thread(target=self._answer, args=(conn, rng), daemon=True).start()

    def _answer(self, conn: socket.socket, rng: random.Random) -> None:
        with conn:
            try:
                conn.settimeout(10)
                path, body = _read_request(conn)
                answer = Answer(conn, rng, self._stop)
                if path.endswith("/models"):
                    names = [*CASES, *FAMILIES]
                    listing = {"data": [{"id": n, "object": "model"} for n in names]}
                    answer.send(fixed("200 OK", json.dumps(listing).encode(), JSON))
                    return
                model = str(body.get("model", ""))
                if not path.endswith("/completions") or model not in (*CASES, *FAMILIES):
                    answer.send(fixed("404 Not Found", b'{"error":{"message":"no"}}', JSON))
                    return  # (a run's /metrics and /props)
                case = self._pick(model)
                with self._lock:
                    self.log.append(Served(model, case.name, body.get("max_tokens")))
                case.write(answer)
            except OSError:
                pass  # the client left, as it should at its bounds

    def _pick(self, model: str) -> Case:
        if model in CASES:
            return CASES[model]
        with self._lock:
            order = self._orders[model]
            turn = self._turns[model]
            self._turns[model] += 1
        return CASES[order[turn % len(order)]]


def _read_request(conn: socket.socket) -> tuple[str, dict[str, Any]]:
    """The request's path and JSON body (a GET's is empty)."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(PIECE)
        if not got or len(data) > 1 << 20:
            raise ConnectionError("no whole request")
        data += got
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        got = conn.recv(PIECE)
        if not got:
            raise ConnectionError("body cut off")
        body += got
    parsed = json.loads(body) if body else {}
    return lines[0].split(" ")[1], parsed if isinstance(parsed, dict) else {}
