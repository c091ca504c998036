"""A real llama.cpp llama-server on loopback: launch, limits, streaming records, failures.

The binary is built once (`make llama-server`, which `make test` runs first) and cached; the
session fixture restores it, or builds it when missing (several minutes on 2 cores, hence the long
module timeout). Request counts are small and every tolerance is wide enough for a noisy 2-core
machine.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from loadgen.client import Endpoint, StreamingCall
from scenarios.plan import RequestSpec
from scenarios.text import make_prompt
from surgecast.calibration import calibrate_runs
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from targets.gguf_model import ensure_model, vocabulary
from targets.llama_build import BuildError, cached_server, ensure_server
from targets.llama_server import (
    LlamaServer,
    LlamaServerConfig,
    LlamaServerError,
    probe_limits,
    read_limits,
)
from tests.conftest import LENIENT, ROOT, engine_level, run_cli, scenario_dict, write_scenario

pytestmark = pytest.mark.timeout(900)  # the first test may wait for the build

SLOTS, CTX = 4, 2048


@pytest.fixture(scope="session")
def llama_files() -> tuple[Path, Path]:
    """(binary, model), restored from the cache or built there once."""
    return ensure_server(build=True), ensure_model("tiny")


@pytest.fixture(scope="session")
def llama(llama_files: tuple[Path, Path]) -> Iterator[LlamaServer]:
    binary, model = llama_files
    with LlamaServer(LlamaServerConfig(binary, model, slots=SLOTS, ctx=CTX)) as server:
        yield server


class TimedCall(StreamingCall):
    """The client's call, also keeping the server's own `timings` from the last chunk."""

    timings: dict[str, Any] | None = None

    def _on_event(self, event: Any, now: float) -> None:
        if isinstance(event, dict) and isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        super()._on_event(event, now)


def _spec(seed: int, n_prompt: int = 40, max_tokens: int = 24) -> RequestSpec:
    prompt = make_prompt(np.random.default_rng(seed), n_prompt)
    return RequestSpec(
        id=f"r{seed}", arrival=0.0, prompt_tokens=n_prompt, max_tokens=max_tokens, prompt=prompt
    )


def _call(server: LlamaServer, spec: RequestSpec, api: str = "chat") -> TimedCall:
    endpoint = Endpoint(server.base_url, api=api, timeout_s=60)
    call = TimedCall(endpoint, spec, time.monotonic)
    call.run()
    return call


def test_limits_from_props_match_the_launch_flags(llama: LlamaServer) -> None:
    assert llama.limits is not None
    assert llama.limits.total_slots == SLOTS
    assert llama.limits.n_ctx_slot == CTX // SLOTS  # no unified KV cache: -c is split
    assert llama.limits.kv_cache_tokens == CTX
    assert llama.limits.model_alias == "surgecast-reference"
    assert read_limits(llama.base_url) == llama.limits == probe_limits(llama.base_url)
    with urllib.request.urlopen(llama.base_url.removesuffix("/v1") + "/slots", timeout=5) as r:
        slots = json.load(r)
    assert len(slots) == SLOTS
    assert {s["n_ctx"] for s in slots} == {CTX // SLOTS}
    assert llama.startup_s < 30  # 0.3 s when the machine is quiet


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_streamed_record_agrees_with_server_timings(llama: LlamaServer, api: str) -> None:
    call = _call(llama, _spec(seed=1 if api == "chat" else 2), api)
    rec, t = call.record, call.timings
    assert rec.status == "ok", rec.error_detail
    assert t is not None, "llama-server sent no timings in its last chunk"
    # one token, one chunk (ASCII-only vocabulary): server, usage and chunk counts agree
    assert rec.token_source == "usage"
    assert rec.output_tokens == t["predicted_n"] == len(rec.chunk_times) == 24
    assert rec.prompt_tokens == t["prompt_n"] + t.get("cache_n", 0)
    assert rec.first_token is not None and rec.end is not None
    ttft, e2e = rec.first_token - rec.start, rec.end - rec.start
    prompt_s, predicted_s = t["prompt_ms"] / 1000, t["predicted_ms"] / 1000
    # the client's span holds the server's work (2 ms of clock slack) plus transport, parsing and
    # scheduling, which stay well under a second even on a loaded 2-core machine
    assert prompt_s - 0.002 <= ttft < prompt_s + 1.0
    assert prompt_s + predicted_s - 0.002 <= e2e < prompt_s + predicted_s + 1.0
    # decoding as the client saw it (first to last chunk) is the server's generation time
    decode = rec.chunk_times[-1] - rec.chunk_times[0]
    assert abs(decode - predicted_s) < 0.1 + 0.25 * predicted_s


def test_usage_counts_the_prompt_and_answer(llama: LlamaServer) -> None:
    short, long = _call(llama, _spec(3, 20, 5)).record, _call(llama, _spec(4, 120, 7)).record
    assert (short.status, long.status) == ("ok", "ok")
    assert short.prompt_tokens is not None and long.prompt_tokens is not None
    assert long.prompt_tokens > short.prompt_tokens > 0
    assert (short.output_tokens, long.output_tokens) == (5, 7)


def test_connection_closed_after_a_stream_yet_each_call_succeeds(llama: LlamaServer) -> None:
    """llama-server closes a streamed connection; the client opens one per request."""
    endpoint = Endpoint(llama.base_url)
    body = json.dumps(endpoint.body(_spec(5, 20, 4))).encode()
    conn = http.client.HTTPConnection(*endpoint.address(), timeout=30)
    try:
        conn.request("POST", endpoint.path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        reused_ok = True
        try:
            conn.request("POST", endpoint.path, body=body)
            conn.getresponse().read()
        except (http.client.HTTPException, OSError):
            reused_ok = False
    finally:
        conn.close()
    # the quirk: keep-alive is advertised, yet the socket is closed; a pooled client would fail
    assert response.getheader("Keep-Alive") and not reused_ok
    records = [_call(llama, _spec(10 + i, 20, 4)).record for i in range(3)]
    assert [r.status for r in records] == ["ok"] * 3


def test_tokenizer_is_ascii_only() -> None:
    tokens, merges = vocabulary()
    printable = {chr(c) for c in range(0x21, 0x7F)}
    byte_chars = {"Ġ", "ĉ", "Ċ", "č"}  # space, tab, newline, carriage return in GPT-2's table
    for token in tokens[3:]:
        assert set(token) <= printable | byte_chars, token
    assert len(merges) == len(tokens) - 3 - 98


@pytest.mark.parametrize("weights", ["q8_0", "q4_0"])
def test_quantised_model_is_served(
    tmp_path: Path, llama_files: tuple[Path, Path], weights: str
) -> None:
    import gguf

    model = ensure_model("tiny", cache=tmp_path, weights=weights)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(model).tensors}
    assert types["blk.0.ffn_up.weight"] == weights.upper()
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert model.stat().st_size < llama_files[1].stat().st_size  # smaller than f16
    with LlamaServer(LlamaServerConfig(llama_files[0], model, slots=1, ctx=512)) as server:
        assert _call(server, _spec(3, 20, 4)).record.status == "ok"


def test_missing_binary_gives_a_clear_error(tmp_path: Path, llama_files: tuple[Path, Path]) -> None:
    missing = tmp_path / "llama-server"
    with pytest.raises(LlamaServerError, match=r"binary not found.*make llama-server"):
        LlamaServer(LlamaServerConfig(missing, llama_files[1])).start()
    with pytest.raises(BuildError, match=r"not built.*make llama-server"):
        ensure_server(build=False, cache=tmp_path)
    env = {**os.environ, "SURGECAST_CACHE": str(tmp_path)}
    result = run_cli("target", "llama-server", env=env, timeout=60)
    assert result.returncode == 3
    assert "llama-server is not built" in result.stderr and "make llama-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_without_a_compiler_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    with pytest.raises(BuildError, match=r"cmake, c\+\+, cc not found.*apt-get install"):
        ensure_server(build=True, cache=tmp_path)
    assert not cached_server(tmp_path).exists()


def test_a_server_that_cannot_start_gives_its_log(
    tmp_path: Path, llama_files: tuple[Path, Path]
) -> None:
    bad_model = tmp_path / "broken.gguf"
    bad_model.write_bytes(b"GGUF not really a model")
    server = LlamaServer(LlamaServerConfig(llama_files[0], bad_model, start_timeout_s=60))
    with pytest.raises(LlamaServerError, match="exited while starting") as err:
        server.start()
    assert "log tail" in str(err.value)
    assert server.proc is None  # nothing left running


def test_run_reads_batch_limits_from_an_external_llama_server(
    llama: LlamaServer, tmp_path: Path
) -> None:
    data = scenario_dict(
        # lenient lateness and SLOs: a stall of the noisy machine must not fail this test
        traffic={"rate": 3, "duration_s": 3, "seed": 2, **LENIENT},
        slos={"ttft": "p(95) < 30000"},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 120},
            "output_tokens": {"dist": "uniform", "low": 8, "high": 24},
        },
    )
    scenario = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli(
        "run", str(scenario), "--target", llama.base_url, "--out", str(out), "-q", "--no-report"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "target is llama-server: 4 slots x 512 tokens" in result.stderr
    target = json.loads((out / "run.json").read_text())["target"]
    assert target["kind"] == "external"
    assert target["limits"]["max_num_seqs"] == SLOTS
    assert target["limits"]["kv_cache_tokens"] == CTX
    records = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "ok" for r in records)
    assert all(r["token_source"] == "usage" for r in records)
    # the limits come from the run, not from the fit's quality (a 3 s run on a busy machine
    # may fit too noisily to be used: `surgecast calibrate` would refuse it, exit 3)
    calibration = calibrate_runs([RunFolder(out)])
    assert not [n for n in calibration.notes if "ASSUMED" in n]
    engine = calibration.engine
    assert (engine.max_num_seqs, engine.kv_cache_tokens) == (SLOTS, CTX)
    # without the server's limits, only the limit the command line did not give is "assumed"
    meta = json.loads((out / "run.json").read_text())
    del meta["target"]["limits"]
    (out / "run.json").write_text(json.dumps(meta))
    notes = calibrate_runs([RunFolder(out)], max_num_seqs=3).notes
    assumed = [n for n in notes if "ASSUMED" in n]
    assert len(assumed) == 1 and "KV cache" in assumed[0] and "max_num_seqs" not in assumed[0]


def test_server_killed_mid_run_makes_the_run_invalid(
    llama_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """`run --target llama-server` starts its own server; killing it mid-run exits 3."""
    data = scenario_dict(traffic={"rate": 4, "duration_s": 6, "seed": 3})
    scenario = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    cmd = ["run", str(scenario), "--target", "llama-server", "--slots", "2", "--ctx", "1024"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgecast", *cmd, "--out", str(out), "-q", "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        victim = _wait_for_llama_child(proc, out / "requests.jsonl", timeout_s=120)
        victim.kill()
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, stderr[-3000:]
    assert "llama-server died during the run (exit code -9)" in stderr
    assert "Traceback" not in stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["target"]["kind"] == "llama-server"
    assert meta["target"]["limits"]["max_num_seqs"] == 2
    assert meta["validity"]["valid"] is False


def _wait_for_llama_child(
    proc: subprocess.Popen[str], records: Path, timeout_s: float
) -> psutil.Process:
    """The llama-server the CLI started, once a few of its requests have finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        done = records.read_text().count("\n") if records.exists() else 0
        children = [c for c in psutil.Process(proc.pid).children() if "llama-server" in c.name()]
        if children and done >= 3:
            return children[0]
        time.sleep(0.1)
    raise AssertionError("no llama-server child with finished requests in time")


def test_cached_binary_is_reused(llama_files: tuple[Path, Path]) -> None:
    binary = llama_files[0]
    assert binary == cached_server()
    started = time.monotonic()
    assert ensure_server(build=False) == binary
    assert time.monotonic() - started < 1.0


@pytest.fixture(scope="module")
def compute_bound(llama_files: tuple[Path, Path]) -> Iterator[LlamaServer]:
    """llama-server with the ~100M-parameter model: its steps take milliseconds of compute,
    as a GPU deployment's do (the tiny model's tokens outrun the server's writes)."""
    binary, _ = llama_files
    config = LlamaServerConfig(binary, ensure_model("small"), slots=SLOTS, ctx=SLOTS * 1024)
    with LlamaServer(config) as server:
        yield server


@pytest.mark.engine_load
def test_calibration_on_two_levels_predicts_a_third(
    compute_bound: LlamaServer, tmp_path: Path
) -> None:
    """Fitted on two light open-loop levels (20% and 40% of the capacity measured first, with
    closed-loop users), the model predicts a heavier one it never saw (65%): median E2E within
    30% (the tight aim is benchmarks/fidelity.py's, on a quiet machine)."""
    users = {
        "type": "closed-users",
        "users": 2 * SLOTS,
        "think_time": {"dist": "constant", "value": 0},
    }
    capacity = engine_level(compute_bound.base_url, {"arrival": users, "seed": 1}, tmp_path / "cap")
    rate = capacity.summary.throughput
    runs = [
        engine_level(
            compute_bound.base_url, {"rate": share * rate, "seed": 2 + i}, tmp_path / f"l{i}"
        )
        for i, share in enumerate((0.2, 0.4, 0.65))
    ]
    assert all(r.valid for r in runs), [r.reasons for r in runs]
    calibration = calibrate_runs([r.folder for r in runs[:2]])
    assert calibration.engine.max_num_seqs == SLOTS  # read from the server, not assumed
    rows = {(r.basis, r.metric, r.quantile): r for r in backtest_run(runs[2].folder, calibration)}
    assert abs(rows[("replay", "e2e", 50)].error_pct) < 30
    assert abs(rows[("replay", "e2e", 95)].error_pct) < 40
