"""A target's side endpoints (/v1/models, /props, /metrics) answering badly (issue 26, finding
10): an endless body, one that trickles, a thousand headers, a status line without an end. A
run against such a target ends in bounded time with a clean verdict, never a hang, a traceback
or a memory that grows; `loadgen.fetch` holds each side request to a size and a time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.fetch import SideRequestError, fetch
from tests.conftest import run_cli, scenario_dict, write_scenario

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ANSWERS = {  # what the server writes, by the way it misbehaves
    "endless": HEAD + b"\r\n" + b'{"data": [' + b"0," * 5_000_000,
    "trickle": HEAD + b"\r\n" + b'{"data": [',  # then a byte every 0.2 s, never done
    "headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n{}",
    "status-line": b"HTTP/1.1 200 " + b"O" * 100_000 + b"\r\n\r\n{}",
}


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    """A raw TCP server on loopback: the path's first word says how to misbehave."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            request = conn.recv(65536).split(b" ")
            way = request[1].decode().strip("/").split("/")[0] if len(request) > 1 else ""
            try:
                conn.sendall(ANSWERS.get(way, b"HTTP/1.1 404 Not Found\r\n\r\n"))
                while way == "trickle" and not stop.wait(0.2):
                    conn.sendall(b"0,")
            except OSError:
                pass  # the client gave up, as it should

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("way", list(ANSWERS))
def test_a_side_request_is_bounded_in_size_and_time(misbehaving: str, way: str) -> None:
    began = time.monotonic()
    with pytest.raises(SideRequestError):
        fetch(f"{misbehaving}/{way}", timeout_s=2.0, max_bytes=1 << 20)
    assert time.monotonic() - began < 5.0


@pytest.mark.parametrize("way", list(ANSWERS))
def test_a_run_against_it_ends_cleanly(misbehaving: str, way: str, tmp_path: Path) -> None:
    """Its /props, /metrics and /v1/models all misbehave: the run says the target does not
    answer usably and exits 3, in seconds."""
    path = write_scenario(tmp_path / "s.yaml", scenario_dict())
    began = time.monotonic()
    result = run_cli(
        "run", str(path), "--target", f"{misbehaving}/{way}/v1", "--out", str(tmp_path / "r"),
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "target unreachable" in result.stderr
    assert time.monotonic() - began < 40
