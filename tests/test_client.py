"""The streaming client against the real reference target over loopback."""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import time

import pytest

from loadgen import wire
from loadgen.client import ConnectionPool, Endpoint, StreamingCall
from loadgen.client.parsing import MAX_COUNT, plain_text, whole_count
from loadgen.looplag import LoopLag
from loadgen.wire import KERNEL_STAMPS
from scenarios.plan import RequestSpec
from scenarios.text import count_tokens, make_prompt
from tests.conftest import FAST_ENGINE, served_requests, write_misses


def _spec(n_prompt: int = 30, max_tokens: int = 12, rid: str = "r1") -> RequestSpec:
    import numpy as np

    prompt = make_prompt(np.random.default_rng(0), n_prompt)
    return RequestSpec(
        id=rid, arrival=0.0, prompt_tokens=n_prompt, max_tokens=max_tokens, prompt=prompt
    )


def _call(endpoint: Endpoint, spec: RequestSpec) -> StreamingCall:
    call = StreamingCall(endpoint, spec, time.monotonic)  # same clock as the target's records
    call.run()
    return call


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_stream_timing_agrees_with_target_record(target_url: str, api: str) -> None:
    endpoint = Endpoint(target_url, api=api)
    spec = _spec(max_tokens=15)
    rec = _call(endpoint, spec).record
    assert rec.status == "ok", rec.error_detail
    served = served_requests(target_url)[rec.response_id or ""]
    # the client's first content chunk matches the target's own first write within a few ms
    assert rec.first_token is not None
    assert len(rec.chunk_times) == 15 == len(served["chunk_written"])
    assert write_misses(rec.chunk_times, served)[0] < 0.005
    # `start` is when the request's bytes left, after connecting: the client's TTFT is the
    # target's own (first write - request read), the connect time kept apart
    assert rec.connect_s is not None and 0 <= rec.connect_s < 0.05
    assert rec.schedule_lag_s is not None and rec.schedule_lag_s >= 0
    assert rec.start >= spec.arrival + rec.schedule_lag_s + rec.connect_s - 1e-9
    assert rec.first_byte is not None and rec.start <= rec.first_byte <= rec.first_token
    server_ttft = served["first_chunk_written"] - served["received"]
    assert abs((rec.first_token - rec.start) - server_ttft) < 0.01
    assert max(write_misses(rec.chunk_times, served)) < 0.005
    # one chunk per engine step of 10.5 ms (10 ms + 0.5 ms for the one decoding sequence): the
    # target's steps run late on a busy machine (12.8 ms in a loaded make test), never early;
    # the client's own accuracy is the line above, against the target's recorded writes
    mean_gap = (rec.chunk_times[-1] - rec.chunk_times[0]) / (len(rec.chunk_times) - 1)
    assert 0.0100 < mean_gap < 0.016
    assert rec.prompt_tokens == count_tokens(spec.prompt or "") == 30
    assert (rec.output_tokens, rec.token_source) == (15, "usage")


def test_role_only_first_chunk_is_not_the_first_token(target_url: str) -> None:
    """The chat stream opens with an empty role chunk at once; TTFT waits for content."""
    rec = _call(Endpoint(target_url), _spec(n_prompt=2000, max_tokens=2)).record
    # a 2000-token prefill costs 10 ms + 2000 * 0.02 ms = 50 ms on this engine
    assert rec.ttft is not None and rec.ttft > 0.045


def test_non_streamed_response(target_url: str) -> None:
    endpoint = Endpoint(target_url, stream=False)
    rec = _call(endpoint, _spec(max_tokens=5)).record
    assert rec.status == "ok"
    assert rec.output_tokens == 5 and rec.token_source == "usage"
    assert rec.first_token == rec.chunk_times[0] and len(rec.chunk_times) == 1


def test_without_usage_tokens_are_counted_from_chunks(target_url: str) -> None:
    endpoint = Endpoint(target_url, extra_body={"stream_options": {"include_usage": False}})
    rec = _call(endpoint, _spec(max_tokens=7)).record
    assert rec.status == "ok"
    assert (rec.output_tokens, rec.token_source) == (7, "chunks")


def test_errors_are_classified_not_raised(target_url: str) -> None:
    wrong_model = _call(Endpoint(target_url, model="nope"), _spec()).record
    assert (wrong_model.status, wrong_model.error_kind) == ("error", "http_404")
    assert "does not exist" in (wrong_model.error_detail or "")

    too_long = _call(Endpoint(target_url), _spec(max_tokens=FAST_ENGINE.kv_cache_tokens)).record
    assert too_long.error_kind == "http_400"
    assert "maximum context length" in (too_long.error_detail or "")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    refused = _call(Endpoint(f"http://127.0.0.1:{dead_port}/v1"), _spec()).record
    assert (refused.status, refused.error_kind) == ("error", "connection_refused")


def test_timeout_is_recorded(target_url: str) -> None:
    endpoint = Endpoint(target_url, timeout_s=0.1)
    rec = _call(endpoint, _spec(max_tokens=200)).record  # 200 steps of >= 10 ms
    assert (rec.status, rec.error_kind) == ("timeout", "timeout")
    assert rec.end is not None and 0.09 < rec.end - rec.start < 0.5


def test_api_key_is_sent_but_never_recorded(target_url: str) -> None:
    secret = "sk-test-7f3a9c0e5b1d"
    endpoint = Endpoint(target_url, model="nope", api_key=secret)
    assert secret not in repr(endpoint)
    rec = _call(endpoint, _spec()).record
    assert secret not in rec.to_json()
    assert endpoint.redact(f"bad key {secret}") == "bad key ***"
    assert endpoint.redact(f"Bearer {secret}, key='{secret}'") == "Bearer ***, key='***'"


def test_a_short_key_is_redacted_as_a_token_not_inside_words() -> None:
    """Issue 26, finding 12: a key "ma" once garbled every message ("***ximum conte***t")."""
    endpoint = Endpoint("http://127.0.0.1:9/v1", api_key="ma")
    said = "maximum context length is 4096 tokens; your key ma was refused (key=ma)"
    assert endpoint.redact(said) == (
        "maximum context length is 4096 tokens; your key *** was refused (key=***)"
    )


def test_ipv6_loopback_url_is_understood() -> None:
    assert Endpoint("http://[::1]:9/v1").address() == ("::1", 9)


def test_block_reader_would_fail_the_agreement_check(target_url: str) -> None:
    """Negative control: reading in 4 KiB blocks sees the first token far too late."""
    endpoint = Endpoint(target_url)
    spec = _spec(max_tokens=20)
    conn = http.client.HTTPConnection(*endpoint.address(), timeout=5.0)
    conn.request(
        "POST",
        endpoint.path,
        body=json.dumps(endpoint.body(spec)),
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    first_block = None
    rid = None
    while block := response.read(4096):
        if first_block is None:
            first_block = time.monotonic()
        for line in block.split(b"\n"):
            if line.startswith(b"data: {") and rid is None:
                rid = json.loads(line[6:])["id"]
    conn.close()
    served = served_requests(target_url)[rid or ""]
    assert first_block is not None
    assert first_block - served["first_chunk_written"] > 0.05  # off by tens of milliseconds


def test_chunks_of_several_tokens_are_counted_from_usage_on_every_chunk() -> None:
    """A server that writes 4 tokens per chunk and usage on every chunk (vLLM's stream_interval
    and continuous_usage_stats): the record keeps the tokens of each chunk, the chunk times
    agree with the server's writes, and ITL is per token, not per chunk."""
    from scenarios.metrics import metric_samples
    from targets.reference_launch import ReferenceTargetProcess

    options = {"include_usage": True, "continuous_usage_stats": True}
    with ReferenceTargetProcess(FAST_ENGINE, stream_interval=4, debug=True) as url:
        endpoint = Endpoint(url, extra_body={"stream_options": options})
        rec = _call(endpoint, _spec(max_tokens=14)).record
        served = served_requests(url)[rec.response_id or ""]
    assert rec.status == "ok", rec.error_detail
    assert rec.chunk_tokens == [4, 4, 4, 2] and rec.output_tokens == 14
    assert max(write_misses(rec.chunk_times, served)) < 0.005
    itl = metric_samples([rec], "itl")
    # the 3 gaps inside the first chunk are unseen; each later chunk of k gives k gaps
    assert len(itl) == 10 and 0.0100 < float(itl.mean()) < 0.0125  # a 10.5 ms step per token


@pytest.mark.skipif(not KERNEL_STAMPS, reason="kernel receive time stamps are Linux's")
@pytest.mark.parametrize("kernel", [True, False])
def test_a_late_reader_stamps_when_the_bytes_came(
    target_url: str, kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader whose clock is read 4 ms late (a busy event loop) still stamps each chunk when
    the kernel received it: within 1 ms of the target's own write, one chunk a read (the
    steps are 10.5 ms apart). Without the kernel's stamps the same reader is 4 ms late."""
    monkeypatch.setattr(wire, "KERNEL_STAMPS", kernel)

    def busy_clock() -> float:
        time.sleep(0.004)  # each time is read 4 ms late; with two reads of it a chunk, 8 ms
        return time.monotonic()

    lag = LoopLag(time.monotonic)
    call = StreamingCall(Endpoint(target_url), _spec(max_tokens=15), busy_clock, loop_lag=lag)
    rec = call.run()
    assert rec.status == "ok", rec.error_detail
    served = served_requests(target_url)[rec.response_id or ""]
    if kernel:
        assert max(write_misses(rec.chunk_times, served)) < 0.001
        # and the loop's lateness is counted: each receive was read 4 ms or more after it came,
        # one chunk a receive
        assert lag.samples >= len(rec.chunk_times) and lag.quantile(0.01) >= 0.004
        assert (lag.chunks, lag.merged, lag.unstamped) == (len(rec.chunk_times), 0, 0)
    else:  # stamped 4 ms or more after each write began
        began = served["chunk_sending"]
        assert min(c - b for c, b in zip(rec.chunk_times, began, strict=True)) > 0.004
        assert lag.samples == 0  # without the kernel's stamp there is no arrival to count from
        assert lag.unstamped >= len(rec.chunk_times)


def test_connections_are_kept_alive_and_streams_stay_exact(target_url: str) -> None:
    """On a server that keeps connections (the reference target, aiohttp), later requests reuse
    them, and their chunk times still agree with the target's own writes."""
    pool = ConnectionPool()
    records = []
    for i in range(8):
        call = StreamingCall(
            Endpoint(target_url), _spec(max_tokens=6, rid=f"k{i}"), time.monotonic, pool=pool
        )
        records.append(call.run())
    pool.close()
    assert all(r.status == "ok" for r in records), [r.error_detail for r in records]
    assert pool.reused == 7 and pool.closed_by_server == 0
    served = served_requests(target_url)
    for rec in records:
        assert max(write_misses(rec.chunk_times, served[rec.response_id or ""])) < 0.005


def _closing_server() -> tuple[socketserver.TCPServer, str]:
    """Says `Connection: keep-alive` and closes after every streamed answer, as llama-server
    does."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.rfile.read(length)
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            )
            for data in (b'{"choices":[{"delta":{"content":"hi"}}]}', b"[DONE]"):
                event = b"data: " + data + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.write(b"0\r\n\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_a_server_that_closes_while_offering_keep_alive_costs_nothing() -> None:
    server, url = _closing_server()
    pool = ConnectionPool()
    try:
        records = [
            StreamingCall(Endpoint(url), _spec(rid=f"c{i}"), time.monotonic, pool=pool).run()
            for i in range(5)
        ]
    finally:
        pool.close()
        server.shutdown()
    assert all(r.status == "ok" and len(r.chunk_times) == 1 for r in records)
    # each kept connection was found closed, or (its close still on the way) failed and was
    # replaced by a new one: every request answered either way
    assert pool.reused + pool.closed_by_server == 4


def test_a_servers_error_words_are_kept_as_one_line_of_plain_text() -> None:
    """Issue 26: an HTML error page was kept raw (tags, a script, line breaks, terminal
    escapes) and reached the console and the reports. Its text is kept, nothing else."""
    page = (
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>b{color:red}</style>"
        "<script>alert('x')</script></head><body>\r\n<h1>Bad &amp; gone</h1><!-- hidden -->"
        "\x1b[31mred\x1b[0m\x00\x07 &lt;script&gt;evil()&lt;/script&gt; a < b <i"
    )
    assert plain_text(page) == "502 Bad Gateway Bad & gone red a < b"
    assert plain_text('{"error": "x"}\n\tthen more') == '{"error": "x"} then more'
    assert plain_text("evil\u202egnp.exe\u200b\u2028x") == "evil gnp.exe x"


@pytest.mark.parametrize("value", [0, 7, MAX_COUNT])
def test_a_whole_count_is_taken(value: int) -> None:
    assert whole_count(value) == value


@pytest.mark.parametrize("value", [-1, 2**31, 2**63, 2**64 - 1, 10**30, 2.0, True, "3", None])
def test_a_made_up_count_is_not(value: object) -> None:
    """Issue 26: a usage of 2**63 was recorded as it came, and the run's requests.jsonl was
    then refused as corrupt (over 2**53), the run lost."""
    assert whole_count(value) is None
