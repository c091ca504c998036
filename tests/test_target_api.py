"""The reference target as a well-behaved OpenAI server: sampling parameters checked as vLLM
checks them, no 500 on any request its schema allows to be written (fuzzed), slow bodies timed
out, and a request whose client leaves aborted, streamed or not. Real HTTP over loopback."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from targets.openai_params import CHECKS
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import FAST_ENGINE

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[str, int]]:
    """(host, port) of a reference target with 1 s body and 2 s header timeouts."""
    with ReferenceTargetProcess(FAST_ENGINE, body_timeout_s=1.0, header_timeout_s=2.0) as url:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port
        yield parts.hostname, parts.port


def _post(target: tuple[str, int], body: bytes, path: str = CHAT) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*target, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def _chat(**fields: Any) -> bytes:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
    return json.dumps(body).encode()


def _metric(target: tuple[str, int], name: str) -> float:
    conn = http.client.HTTPConnection(*target, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name))


BAD = [
    ("temperature", -0.5),
    ("temperature", "hot"),
    ("top_p", 0),
    ("top_p", 1.5),
    ("top_k", -2),
    ("top_k", 1.5),
    ("min_p", 2),
    ("presence_penalty", 3),
    ("frequency_penalty", -2.5),
    ("repetition_penalty", 0),
    ("n", 2),
    ("n", True),
    ("seed", "x"),
    ("min_tokens", -1),
    ("stop", 5),
    ("stop", ["a", 1]),
    ("stream", "yes"),
    ("ignore_eos", 1),
    ("top_logprobs", 21),
    ("max_tokens", 0),
    ("stream_options", "on"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_a_bad_sampling_parameter_is_a_400_naming_it(
    target: tuple[str, int], name: str, value: Any
) -> None:
    status, body = _post(target, _chat(**{name: value}))
    assert status == 400, body
    assert body["error"]["param"] == name and body["error"]["type"] == "invalid_request_error"


def test_good_sampling_parameters_are_served(target: tuple[str, int]) -> None:
    good = {
        "temperature": 0,
        "top_p": 1,
        "top_k": -1,
        "min_p": 0.1,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "repetition_penalty": 1.1,
        "n": 1,
        "seed": 42,
        "min_tokens": 1,
        "stop": ["\n"],
        "stream": False,
        "ignore_eos": True,
        "logprobs": False,
        "top_logprobs": 0,
        "temperature_is_unknown_and_ignored": "as vLLM ignores unknown fields",
    }
    status, body = _post(target, _chat(**good))
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 2
    assert set(CHECKS) <= set(good)  # every checked parameter has a good value served


def test_min_tokens_above_max_tokens_is_refused(target: tuple[str, int]) -> None:
    status, body = _post(target, _chat(min_tokens=5))  # max_tokens 2
    assert status == 400 and body["error"]["param"] == "min_tokens"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\xff\xfe{}", "not UTF-8 (byte 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_hostile_bodies_are_400s_not_500s(target: tuple[str, int], raw: bytes, says: str) -> None:
    status, body = _post(target, raw)
    assert status == 400 and says in body["error"]["message"], body


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [*CHECKS, "messages", "model", "max_tokens", "max_completion_tokens", "stream_options"]
small_tokens = st.integers(min_value=-3, max_value=3) | json_value


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.fixed_dictionaries(
        {"max_tokens": small_tokens},
        optional={name: json_value for name in FIELDS if name != "max_tokens"},
    ),
    completions=st.booleans(),
)
def test_fuzzed_requests_never_get_a_500(
    target: tuple[str, int], body: dict[str, Any], completions: bool
) -> None:
    """Any JSON in any field of the request schema: an answer or a JSON error, never a 500."""
    if not completions:
        body.setdefault("messages", [{"role": "user", "content": "x"}])
    else:
        body.setdefault("prompt", "x")
    status, answer = _post(
        target, json.dumps(body).encode(), "/v1/completions" if completions else CHAT
    )
    assert status in (200, 400, 404), (status, answer)
    if status != 200:
        assert isinstance(answer, dict) and "message" in answer["error"]


def test_a_body_that_never_finishes_is_timed_out(target: tuple[str, int]) -> None:
    with socket.create_connection(target, timeout=10) as s:
        s.sendall(
            b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"messages"'
        )
        started = time.monotonic()
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "not received within 1 s" in answer
    assert time.monotonic() - started < 5


def test_headers_that_never_finish_close_the_connection(target: tuple[str, int]) -> None:
    with socket.create_connection(target, timeout=10) as s:
        s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        started = time.monotonic()
        closed = s.recv(4096)  # b"": the target closed it
        waited = time.monotonic() - started
    assert closed == b"" and 1.5 < waited < 8, (closed[:100], waited)


def test_a_connection_between_requests_stays_usable(target: tuple[str, int]) -> None:
    """The header timeout leaves a prompt client's keep-alive connection alone."""
    conn = http.client.HTTPConnection(*target, timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", CHAT, _chat(), {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["usage"]
            time.sleep(0.5)
    finally:
        conn.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_aborts_its_request(target: tuple[str, int], stream: bool) -> None:
    """A long request whose client disconnects is aborted: the engine stops generating for it."""
    before = _metric(target, "surgecast_request_aborted_total")
    with socket.create_connection(target, timeout=10) as s:
        body = _chat(max_tokens=3000, stream=stream, ignore_eos=True)  # fits the 4096-token cache
        s.sendall(
            b"POST "
            + CHAT.encode()
            + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.3)  # generating: 3000 tokens at 10 ms a step take 30 s
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(target, "surgecast_request_aborted_total") == before + 1:
            break
        time.sleep(0.1)
    assert _metric(target, "surgecast_request_aborted_total") == before + 1
    assert _metric(target, "surgecast_num_requests_running") == 0


def test_an_overlong_request_line_or_header_is_a_400_and_one_log_line() -> None:
    """Issue 26: every URL over 8 KB made the target log a traceback (aiohttp refuses the line,
    and its handler logged the exception whole). Now each is a 400 and one line of log (a
    `%` in the URL taken as text, not as a format), and the target serves on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgecast", "serve", "--port", "0", "--exit-with-parent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1].split("/")[0])
        answers = []
        for raw in (
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/models?q=" + b"%41" * 30_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(raw)
                answers.append(s.recv(4096).split(b"\r\n", 1)[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            served = s.recv(4096).split(b"\r\n", 1)[0]
    finally:
        proc.stdin.close()  # --exit-with-parent: it stops
        proc.wait(timeout=20)
    log = proc.stderr.read()
    assert answers == [b"HTTP/1.0 400 Bad Request"] * 3 and served == b"HTTP/1.1 200 OK"
    assert "Traceback" not in log and "Logging error" not in log, log[-2000:]
    refused = [line for line in log.splitlines() if "refused (400)" in line]
    assert len(refused) == 3 and all(len(line) < 300 for line in refused), log[-2000:]
