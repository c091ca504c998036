"""Load-generator accuracy: `surgecast run` against a truth server, beside a plain aiohttp client.

    python benchmarks/load_generator.py [--rates 100,200,400,700,1000,1500] [--duration-s 5]
        [--processes N] [--server-closes]

The truth server (this file, `--serve`, on core 0) answers each streamed request after 50 ms with
32 content chunks 10 ms apart, on keep-alive connections with chunked framing as vLLM and OpenAI
do (`--server-closes`: one response per connection, as llama-server). It logs when each request
arrived, by the kernel's receive stamp (a busy server reads late but logs when the bytes came),
and when it wrote each chunk (intervals on its own clock). For each rate, an open-loop Poisson
plan is sent by `surgecast run` (with `--processes N`, by N generator processes) and then by a
plain asyncio/aiohttp open-loop client on pooled connections (`--baseline`), each on every other
core (core 1 alone on a 2-core machine). Per run: the achieved rate, the client-added TTFT error
(client TTFT minus the server's own, first write - request arrival) at p50/p99, the per-gap ITL
error at p99, schedule lag p99, surgecast's own p99 event-loop lag, the clients' CPU use (startup
included), surgecast's CPU per request while sending (ms/req: every generator process and the
master together; with `--processes N` on the same cores it shows what splitting costs) and
surgecast's verdict (valid, or invalid: exit 3). The last lines give the highest
rate each client held with p99 added TTFT and ITL errors <= 5 ms, and for surgecast the highest
it also called valid. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.wire import receive_stamped, stamp_receives

TTFT_S, CHUNKS, GAP_S = 0.05, 32, 0.01
ACCURATE_MS = 5.0
ROOT = Path(__file__).resolve().parent.parent
CHUNK = b'data: {"id":"%s","choices":[{"index":0,"delta":{"content":"tok "}}]}\n\n'
LAST = b'data: {"id":"%s","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CLOSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n"
)


class TruthServer:
    """The truth server: raw non-blocking sockets on an asyncio loop, so each request's arrival
    comes from the kernel's receive stamp (a busy server reads late, but logs when the bytes came)
    and each chunk's write time is taken right after its send. Keep-alive with chunked framing,
    as vLLM and OpenAI serve; with `closes`, one response per connection, as llama-server."""

    def __init__(self, closes: bool):
        self.closes = closes
        self.log: dict[str, dict[str, Any]] = {}
        self.count = 0
        self.loop = asyncio.get_running_loop()

    def listen(self, port: int) -> None:
        sock = socket.create_server(("127.0.0.1", port), backlog=4096)
        sock.setblocking(False)
        self.loop.add_reader(sock, self._accept, sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stamp_receives(conn)
            self.loop.add_reader(conn, self._read, conn, bytearray())

    def _close(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn)
        conn.close()

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        try:
            data, stamp = receive_stamped(conn)
        except BlockingIOError:
            return
        except OSError:
            return self._close(conn)
        if not data:
            return self._close(conn)
        arrived = time.monotonic()
        if stamp is not None:  # the kernel's arrival, on the monotonic clock
            arrived -= time.time() - stamp
        buffer += data
        while True:
            head, sep, rest = bytes(buffer).partition(b"\r\n\r\n")
            if not sep:
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            del buffer[: len(head) + 4 + length]
            self._answer(conn, head.split(b" ")[1], arrived)

    def _answer(self, conn: socket.socket, path: bytes, arrived: float) -> None:
        if path.endswith(b"/models"):
            self._json(conn, {"object": "list", "data": [{"id": "surgecast-reference"}]})
        elif path.endswith(b"/log"):
            self._json(conn, self.log)
            self.log = {}
        elif path.endswith(b"/completions"):
            self.count += 1
            rid = b"chatcmpl-%d" % self.count
            writes: list[float] = []
            self.log[rid.decode()] = {"received": arrived, "writes": writes}
            conn.send(CLOSE_HEAD if self.closes else STREAM_HEAD)
            due = self.loop.time() + TTFT_S
            self.loop.call_at(due, self._chunk, conn, rid, writes, due)
        else:
            conn.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _chunk(self, conn: socket.socket, rid: bytes, writes: list[float], due: float) -> None:
        if conn.fileno() < 0:
            return
        last = len(writes) == CHUNKS
        event = (LAST % rid + b"data: [DONE]\n\n") if last else CHUNK % rid
        if not self.closes:
            event = b"%x\r\n%s\r\n%s" % (len(event), event, b"0\r\n\r\n" if last else b"")
        try:
            conn.send(event)
        except OSError:
            return self._close(conn)
        if not last:
            writes.append(time.monotonic())
            self.loop.call_at(due + GAP_S, self._chunk, conn, rid, writes, due + GAP_S)
        elif self.closes:
            self._close(conn)

    def _json(self, conn: socket.socket, data: object) -> None:
        body = json.dumps(data).encode()
        conn.setblocking(True)  # the log can be larger than one send
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        conn.setblocking(False)


async def serve(port: int, closes: bool) -> None:
    TruthServer(closes).listen(port)
    await asyncio.Event().wait()


async def baseline(url: str, rate: float, duration_s: float, seed: int, out: Path) -> None:
    """A plain open-loop client: a task per planned request, on pooled connections."""
    import aiohttp

    gaps = np.random.default_rng(seed).exponential(1.0 / rate, int(rate * duration_s * 2))
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    loop = asyncio.get_running_loop()
    rows: list[dict[str, Any]] = []
    body = {"model": "surgecast-reference", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=0)  # keeps connections alive where the server does
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = loop.time() + 0.2

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            lag = loop.time() - (t0 + at)
            start = time.monotonic()
            times: list[float] = []
            rid = ""
            async with session.post(url + "/chat/completions", json=body) as resp:
                async for line in resp.content:
                    now = time.monotonic()
                    if line.startswith(b"data: {") and b'"content"' in line:
                        times.append(now)
                        rid = rid or json.loads(line[6:])["id"]
            rows.append({"id": rid, "lag": lag, "start": start, "chunks": times})

        done = await asyncio.gather(*(one(float(a)) for a in arrivals), return_exceptions=True)
    failed = sum(isinstance(d, BaseException) for d in done)
    out.write_text(json.dumps({"planned": len(arrivals), "failed": failed, "rows": rows}))


def _pinned(*cores: int) -> Any:
    return lambda: os.sched_setaffinity(0, set(cores)) if hasattr(os, "sched_setaffinity") else None


def _client_cores() -> tuple[int, ...]:
    """Every core but the truth server's (core 0); core 1 alone on a 2-core machine."""
    return tuple(range(1, max(2, os.cpu_count() or 2)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _truth_log(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url + "/log", timeout=30) as r:
        return dict(json.load(r))


def _errors(rows: list[dict[str, Any]], log: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Client-added TTFT and ITL errors (ms) of the rows the server logged, and schedule lag.
    Each is a difference of two intervals on one clock, so the clients' time origins cancel."""
    ttft, itl = [], []
    for row in rows:
        truth = log.get(row["id"])
        if truth is None or len(row["chunks"]) != CHUNKS or len(truth["writes"]) != CHUNKS:
            continue
        ttft.append((row["chunks"][0] - row["start"]) - (truth["writes"][0] - truth["received"]))
        itl.extend(np.diff(row["chunks"]) - np.diff(truth["writes"]))
    starts = sorted(r["start"] for r in rows)
    lag = [r["lag"] for r in rows if r.get("lag") is not None]
    return {
        "matched": len(ttft),
        "rate": (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0,
        "ttft_p50": float(np.percentile(ttft, 50)) * 1000 if ttft else float("nan"),
        "ttft_p99": float(np.percentile(ttft, 99)) * 1000 if ttft else float("nan"),
        "itl_p99": float(np.percentile(np.abs(itl), 99)) * 1000 if itl else float("nan"),
        "lag_p99": float(np.percentile(lag, 99)) * 1000 if lag else float("nan"),
    }


def _timed(cmd: list[str]) -> tuple[int, float, float]:
    """Run `cmd` on the client cores: (exit code, wall seconds, CPU seconds of it and its
    children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    code = subprocess.run(
        cmd, cwd=ROOT, preexec_fn=_pinned(*_client_cores()), stdout=subprocess.DEVNULL, check=False
    ).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, time.monotonic() - t, cpu


def run_surgecast(
    url: str, rate: float, duration_s: float, tmp: Path, processes: int = 1
) -> dict[str, Any]:
    import yaml

    scenario = {
        "name": f"loadgen-{rate:g}",
        "target": {"api": "chat", "timeout_s": 10},
        "traffic": {"rate": rate, "duration_s": duration_s, "seed": 7, "max_lateness_ms": 100},
        "workload": {
            "prompt_tokens": {"dist": "constant", "value": 8},
            "output_tokens": {"dist": "constant", "value": CHUNKS},
        },
    }
    path = tmp / f"s{rate:g}.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp / f"run{rate:g}"
    cmd = [sys.executable, "-m", "surgecast", "run", str(path), "--target", url]
    cmd += ["--processes", str(processes)]
    code, wall, cpu = _timed([*cmd, "--out", str(out), "-q", "--no-report"])
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    rows = [
        {
            "id": r["response_id"],
            "start": r["start"],
            "lag": r.get("schedule_lag_s"),
            "chunks": r["chunk_times"],
        }
        for r in records
        if r["status"] == "ok" and r.get("response_id")
    ]
    verdict = "valid" if code in (0, 99) else f"INVALID ({code})"
    generator = json.loads((out / "run.json").read_text()).get("generator", {})
    loop_lag = generator.get("loop_lag", {}).get("p99_ms", float("nan"))
    hosts = generator.get("hosts") or [{"cpu": generator.get("cpu", {}).get("mean", np.nan)}]
    return {
        "loop_lag_p99": loop_lag,
        "cores": sum(h["cpu"] for h in hosts),  # while sending: every process, the master's too
        "client": "surgecast" if processes == 1 else f"surgecast x{processes}",
        "exit": verdict,
        "wall": wall,
        "cpu": cpu,
        "rows": rows,
        "planned": len(records),
    }


def run_baseline(url: str, rate: float, duration_s: float, tmp: Path) -> dict[str, Any]:
    out = tmp / f"base{rate:g}.json"
    cmd = [sys.executable, __file__, "--baseline", url, "--rate", str(rate)]
    code, wall, cpu = _timed([*cmd, "--duration-s", str(duration_s), "--out", str(out)])
    data = json.loads(out.read_text()) if out.exists() else {"planned": 0, "rows": []}
    rows, planned = data["rows"], data["planned"]
    return {
        "loop_lag_p99": float("nan"),
        "cores": float("nan"),
        "client": "aiohttp",
        "exit": "-" if code == 0 else f"failed ({code})",
        "wall": wall,
        "cpu": cpu,
        "rows": rows,
        "planned": planned,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100,200,400,700,1000,1500")
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="surgecast's generator processes (--processes); the clients get every core but "
        "the truth server's",
    )
    p.add_argument(
        "--server-closes",
        action="store_true",
        help="the truth server closes each connection after its response, as llama-server "
        "does (default: keep-alive with chunked framing, as vLLM and OpenAI)",
    )
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--baseline", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.serve:
        asyncio.run(serve(a.serve, a.server_closes))
        return 0
    if a.baseline:
        asyncio.run(baseline(a.baseline, a.rate, a.duration_s, 7, a.out))
        return 0
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)]
        + (["--server-closes"] if a.server_closes else []),
        preexec_fn=_pinned(0),
    )
    url = f"http://127.0.0.1:{port}/v1"
    time.sleep(1.0)
    ours = "surgecast" if a.processes == 1 else f"surgecast x{a.processes}"
    best: dict[str, float] = {ours: 0.0, "aiohttp": 0.0}
    best_valid = 0.0  # accurate, and surgecast said so
    header = (
        f"{'client':>12} {'rate':>6} {'achieved':>8} {'matched':>11} {'ttft p50':>8} "
        f"{'ttft p99':>8} {'itl p99':>7} {'sched p99':>9} {'loop p99':>8} {'cpu %':>5} "
        f"{'ms/req':>6}  verdict"
    )
    print(f"client cores {_client_cores()}, truth server on core 0", flush=True)
    print(header, flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rate in (float(r) for r in a.rates.split(",")):
                for client in ("surgecast", "aiohttp"):  # each matched against the log as it ends
                    res = (
                        run_surgecast(url, rate, a.duration_s, Path(tmp), a.processes)
                        if client == "surgecast"
                        else run_baseline(url, rate, a.duration_s, Path(tmp))
                    )
                    e = _errors(res["rows"], _truth_log(url))
                    held = e["matched"] >= 0.98 * res["planned"]  # the plan, answered and matched
                    accurate = held and max(e["ttft_p99"], e["itl_p99"]) <= ACCURATE_MS
                    if accurate:
                        best[res["client"]] = max(best[res["client"]], rate)
                        if res["exit"] == "valid":
                            best_valid = max(best_valid, rate)
                    print(
                        f"{res['client']:>12} {rate:6.0f} {e['rate']:8.0f} "
                        f"{e['matched']:5d}/{res['planned']:<5d} "
                        f"{e['ttft_p50']:8.2f} {e['ttft_p99']:8.2f} {e['itl_p99']:7.2f} "
                        f"{e['lag_p99']:9.2f} {res['loop_lag_p99']:8.2f} "
                        f"{100 * res['cpu'] / res['wall']:5.0f} "
                        f"{1000 * res['cores'] * a.duration_s / max(res['planned'], 1):6.2f}  "
                        f"{res['exit']}",
                        flush=True,
                    )
    finally:
        server.kill()
    ratio = best[ours] / best["aiohttp"] if best["aiohttp"] else float("nan")
    print(
        f"highest rate with p99 added TTFT and ITL errors <= {ACCURATE_MS:g} ms: {ours} "
        f"{best[ours]:g} req/s, aiohttp {best['aiohttp']:g} req/s (ratio {ratio:.2f}); "
        f"{ours} accurate and called valid: {best_valid:g} req/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
