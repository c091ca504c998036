"""A real vLLM for CPU on loopback: limits, streaming records, prefix-cache counters, the CLI.

Tests marked `vllm` need `make vllm` (a separate venv) and start one server for the module (about
a minute on 2 cores, 3.3 GB); `make test-vllm` runs them. The unmarked ones need no vLLM and run
in the default suite. Load is a handful of requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from loadgen.client import Endpoint, StreamingCall
from loadgen.telemetry import parse_prometheus
from scenarios.deployment_spec import Deployment
from scenarios.plan import RequestSpec
from scenarios.text import make_prompt
from simulator.deploy.catalog import Catalog, CatalogFile, Gpu, Model, NumberFormat
from simulator.deploy.memory import memory_plan
from surgecast.calibration import calibrate_runs
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from targets.engine_metrics import KNOWN, kept_series, series_value
from targets.gguf_model import SHAPES, ModelShape, vocabulary
from targets.vllm_launch import VllmOptions, config_for
from targets.vllm_model import ensure_model_dir
from targets.vllm_server import (
    VllmConfig,
    VllmServer,
    VllmServerError,
    cache_info,
    cpu_dtype,
    probe_cache_info,
    read_cache_info,
    vllm_venv,
)
from tests.conftest import LENIENT, engine_level, run_cli, scenario_dict, write_scenario

SEQS, MAX_LEN = 4, 2048
F = TypeVar("F", bound=Callable[..., None])
HAVE_VLLM = (vllm_venv() / "bin" / "python").is_file()
VLLM_MARKS = (
    pytest.mark.vllm,
    pytest.mark.timeout(600),  # the first test waits for the server to start
    pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {vllm_venv()}: run `make vllm`"),
)


def needs_vllm(test: F) -> F:
    for mark in VLLM_MARKS:
        test = mark(test)
    return test


# vLLM 0.32's info metric, as its /metrics serves it (labels shortened to those read here)
CACHE_INFO = (
    'vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",'
    'engine="0",kv_cache_memory_bytes="1073741824",kv_cache_size_tokens="1048576",'
    'num_cpu_blocks="None",num_gpu_blocks="8192",sliding_window="None"} 1.0\n'
)
MODELS = {"data": [{"id": "m", "max_model_len": 2048}]}


def test_cache_info_reads_the_labels_vllm_serves() -> None:
    info = cache_info(CACHE_INFO, MODELS, "0.32.0")
    assert (info.block_size, info.num_blocks, info.kv_cache_tokens) == (128, 8192, 1048576)
    assert info.prefix_caching and info.max_model_len == 2048 and info.version == "0.32.0"
    older = CACHE_INFO.replace('kv_cache_size_tokens="1048576",', "")
    assert cache_info(older, MODELS).kv_cache_tokens == 8192 * 128  # blocks x block size


def test_cache_info_of_another_server_says_so() -> None:
    with pytest.raises(VllmServerError, match="not vLLM"):
        cache_info("llamacpp:requests_processing 0\n", MODELS)


def test_telemetry_keeps_the_series_it_reads() -> None:
    metrics = parse_prometheus(
        CACHE_INFO
        + 'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        + 'vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 5.0\n'
        + "http_requests_total 3\n"
    )
    assert list(kept_series(metrics)) == ['vllm:num_requests_running{engine="0",model_name="m"}']
    assert series_value(metrics, "running") == ("vllm:num_requests_running", 2.0)
    unknown = {"tgi_queue_size": 1.0}
    assert kept_series(unknown) == unknown  # an engine we do not know: everything is kept


def test_float32_unless_the_cpu_computes_bf16() -> None:
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_dtype(avx2) == "float32"
    assert cpu_dtype(avx2.replace("avx2", "avx2 avx512f avx512_bf16")) == "auto"
    assert cpu_dtype(avx2.replace("avx2", "avx2 amx_bf16")) == "auto"
    cmd = VllmConfig(Path("m"), dtype="float32").command(8000)
    assert cmd[cmd.index("--dtype") + 1] == "float32"


def test_missing_venv_says_make_vllm(tmp_path: Path) -> None:
    env = {**os.environ, "SURGECAST_VLLM_VENV": str(tmp_path / "none")}
    result = run_cli("target", "vllm", env=env, timeout=60)
    assert result.returncode == 3
    assert "vLLM is not installed" in result.stderr and "make vllm" in result.stderr
    assert "Traceback" not in result.stderr
    scenario = write_scenario(tmp_path / "s.yaml", scenario_dict())
    out = tmp_path / "run"
    result = run_cli("run", str(scenario), "--target", "vllm", "--out", str(out), env=env)
    assert result.returncode == 3 and "make vllm" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_vllm_flags_need_the_vllm_target(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.yaml", scenario_dict())
    result = run_cli("run", str(scenario), "--vllm-max-num-seqs", "2", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "--vllm-max-num-seqs: only with --target vllm" in result.stderr


def test_model_directory_is_written_once(tmp_path: Path) -> None:
    path = ensure_model_dir("small", cache=tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (8, 1024)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (16, 4)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == config["vocab_size"]
    assert "chat_template" in json.loads((path / "tokenizer_config.json").read_text())
    assert ensure_model_dir("small", cache=tmp_path) == path
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [path.name]


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm() -> Iterator[VllmServer]:
    if not HAVE_VLLM:
        pytest.skip(f"no vLLM venv at {vllm_venv()}: run `make vllm`")
    config = config_for(
        VllmOptions(max_num_seqs=SEQS, max_model_len=MAX_LEN), "surgecast-reference"
    )
    server = VllmServer(config)
    with server:
        assert server.proc is not None
        group = server.proc.pid
        yield server
    with pytest.raises(ProcessLookupError):  # the engine core and worker are gone too
        os.killpg(group, 0)


def _metrics(server: VllmServer) -> dict[str, float]:
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics", timeout=5) as r:
        return parse_prometheus(r.read().decode())


def _count(metrics: dict[str, float], what: str) -> float:
    found = series_value(metrics, what)
    assert found is not None, f"no {what} series"
    return found[1]


def _call(server: VllmServer, spec: RequestSpec, api: str = "chat") -> StreamingCall:
    usage = {"include_usage": True, "continuous_usage_stats": True}  # a token count per chunk
    body = {"ignore_eos": True, "stream_options": usage}
    endpoint = Endpoint(server.base_url, api=api, timeout_s=120, extra_body=body)
    call = StreamingCall(endpoint, spec, time.monotonic)
    call.run()
    return call


def _spec(seed: int, n_prompt: int = 40, max_tokens: int = 16, prompt: str = "") -> RequestSpec:
    text = prompt or make_prompt(np.random.default_rng(seed), n_prompt)
    return RequestSpec(
        id=f"r{seed}", arrival=0.0, prompt_tokens=n_prompt, max_tokens=max_tokens, prompt=text
    )


@needs_vllm
def test_limits_are_read_from_the_server(vllm: VllmServer) -> None:
    limits = vllm.limits
    assert limits is not None
    assert limits.max_num_seqs == SEQS  # given on its command line
    cache = limits.cache
    assert cache.block_size > 0 and cache.num_blocks > 0
    assert cache.kv_cache_tokens == cache.num_blocks * cache.block_size
    assert cache.prefix_caching and cache.max_model_len == MAX_LEN
    assert cache.version.startswith("0.32")
    assert read_cache_info(vllm.base_url) == cache == probe_cache_info(vllm.base_url)
    assert vllm.limits is not None
    recorded = vllm.limits.engine_limits()
    assert recorded["max_num_seqs"] == SEQS and recorded["kv_cache_tokens"] == cache.kv_cache_tokens


@needs_vllm
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_streamed_records_agree_with_the_servers_usage(vllm: VllmServer, api: str) -> None:
    before = _metrics(vllm)
    calls = [_call(vllm, _spec(seed, 30 + 20 * seed, 12 + seed), api) for seed in range(3)]
    after = _metrics(vllm)
    for seed, call in enumerate(calls):
        rec = call.record
        assert rec.status == "ok", rec.error_detail
        assert rec.token_source == "usage"
        # every token decodes to text (ASCII-only vocabulary, no special tokens), yet a busy
        # API server merges the tokens of several steps into one chunk: usage on every chunk
        # says how many each carried
        per_chunk = rec.chunk_tokens or [1] * len(rec.chunk_times)
        assert len(per_chunk) == len(rec.chunk_times)
        assert rec.output_tokens == sum(per_chunk) == 12 + seed
        assert rec.first_token is not None and rec.end is not None
        ttft, e2e = rec.first_token - rec.start, rec.end - rec.start
        assert 0 < ttft <= e2e < 60
    served = sum(c.record.output_tokens or 0 for c in calls)
    prompts = sum(c.record.prompt_tokens or 0 for c in calls)
    assert _count(after, "generation_tokens") - _count(before, "generation_tokens") == served
    assert _count(after, "prompt_tokens") - _count(before, "prompt_tokens") == prompts


@needs_vllm
def test_prefix_cache_hits_are_counted(vllm: VllmServer) -> None:
    assert vllm.limits is not None
    block = vllm.limits.cache.block_size
    prompt = make_prompt(np.random.default_rng(7), 3 * block)  # spans whole blocks
    first = _call(vllm, _spec(70, max_tokens=4, prompt=prompt)).record
    before = _metrics(vllm)
    second = _call(vllm, _spec(71, max_tokens=4, prompt=prompt)).record
    after = _metrics(vllm)
    assert first.status == second.status == "ok"
    assert second.prompt_tokens == first.prompt_tokens and second.prompt_tokens is not None
    hits = _count(after, "prefix_cache_hits") - _count(before, "prefix_cache_hits")
    queries = _count(after, "prefix_cache_queries") - _count(before, "prefix_cache_queries")
    assert queries == second.prompt_tokens
    whole_blocks = (second.prompt_tokens - 1) // block * block  # the last token is recomputed
    assert hits == whole_blocks >= 2 * block
    assert second.cached_tokens == hits  # usage.prompt_tokens_details agrees with the counter


@needs_vllm
def test_run_reads_the_kv_cache_of_an_external_vllm(vllm: VllmServer, tmp_path: Path) -> None:
    data = scenario_dict(
        target={"api": "chat", "timeout_s": 60, "extra_body": {"ignore_eos": True}},
        traffic={"rate": 2, "duration_s": 3, "seed": 2, **LENIENT},
        slos={"ttft": "p(95) < 30000"},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 100},
            "output_tokens": {"dist": "uniform", "low": 8, "high": 16},
        },
    )
    scenario = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli(
        "run", str(scenario), "--target", vllm.base_url, "--out", str(out), "-q", "--no-report"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "target is vLLM" in result.stderr
    assert vllm.limits is not None
    target = json.loads((out / "run.json").read_text())["target"]
    assert target["limits"]["kv_cache_tokens"] == vllm.limits.cache.kv_cache_tokens
    assert target["limits"]["block_size"] == vllm.limits.cache.block_size
    records = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "ok" and r["token_source"] == "usage" for r in records)
    samples = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
    names = {k.split("{")[0] for s in samples for k in s.get("metrics", {})}
    assert names and names <= KNOWN  # only the series surgecast reads
    # the KV cache came from the server; max_num_seqs is not served, so only it is "assumed"
    notes = calibrate_runs([RunFolder(out)]).notes
    assumed = [n for n in notes if "ASSUMED" in n]
    assert len(assumed) == 1 and "max_num_seqs" in assumed[0] and "KV cache" not in assumed[0]
    given = calibrate_runs([RunFolder(out)], max_num_seqs=SEQS)
    assert not [n for n in given.notes if "ASSUMED" in n]
    assert given.engine.block_size == vllm.limits.cache.block_size


@needs_vllm
def test_the_tokenizer_loads_in_vllms_own_libraries(tmp_path: Path) -> None:
    path = ensure_model_dir("tiny", cache=tmp_path)
    code = (
        "import sys; from transformers import AutoTokenizer; "
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); "
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=True); "
        "print(all(t.decode([i], skip_special_tokens=True) for i in range(len(t))), t.eos_token)"
    )
    python = vllm_venv() / "bin" / "python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [str(python), "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "None"]  # every token decodes to text, EOS too


@needs_vllm
def test_run_starts_its_own_vllm_and_its_limits_are_not_assumed(tmp_path: Path) -> None:
    data = scenario_dict(
        traffic={"rate": 2, "duration_s": 3, "seed": 5, **LENIENT},
        slos={"ttft": "p(95) < 30000"},
    )
    scenario = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli(
        *("run", str(scenario), "--target", "vllm", "--vllm-max-num-seqs", "2"),
        *("--vllm-max-model-len", "1024", "--out", str(out), "-q", "--no-report"),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vLLM up at http://127.0.0.1:" in result.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["target"]["kind"] == "vllm"
    limits = meta["target"]["limits"]
    assert (limits["max_num_seqs"], limits["max_batched_tokens"]) == (2, 2048)
    assert meta["target"]["vllm"]["max_model_len"] == 1024
    calibration = calibrate_runs([RunFolder(out)])
    assert not [n for n in calibration.notes if "ASSUMED" in n]
    assert calibration.engine.max_num_seqs == 2
    assert calibration.engine.kv_cache_tokens == limits["kv_cache_tokens"]


@needs_vllm
def test_a_server_that_cannot_start_gives_its_log(tmp_path: Path) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    server = VllmServer(replace(config_for(VllmOptions(), "m"), model=model, start_timeout_s=180))
    with pytest.raises(VllmServerError, match="exited while starting") as err:
        server.start()
    assert "log tail" in str(err.value) and "no-such-architecture" in str(err.value)
    assert server.proc is None  # nothing left running


def test_target_vllm_has_help() -> None:
    result = run_cli("target", "vllm", "--help", timeout=60)
    assert result.returncode == 0 and "make vllm" in result.stdout
    assert "--max-num-seqs" in result.stdout and "--no-prefix-caching" in result.stdout


@needs_vllm
@pytest.mark.engine_load
def test_calibration_on_two_levels_predicts_a_third(vllm: VllmServer, tmp_path: Path) -> None:
    """As against llama-server: fitted on two light open-loop levels (20% and 40% of the
    capacity closed-loop users measured) and a staircase of every batch size, the model predicts a
    heavier level it never saw (65%): median E2E within 30% on this shared machine (the tight
    aim is benchmarks/fidelity.py's)."""
    users = {
        "type": "closed-users",
        "users": 2 * SEQS,
        "think_time": {"dist": "constant", "value": 0},
    }
    capacity = engine_level(vllm.base_url, {"arrival": users, "seed": 1}, tmp_path / "cap")
    rate = capacity.summary.throughput
    stairs = engine_level(
        vllm.base_url, {"rate": 1, "duration_s": 1, "seed": 9}, tmp_path / "stairs", SEQS
    )
    runs = [
        engine_level(vllm.base_url, {"rate": share * rate, "seed": 2 + i}, tmp_path / f"l{i}")
        for i, share in enumerate((0.2, 0.4, 0.65))
    ]
    assert all(r.valid for r in [stairs, *runs]), [r.reasons for r in runs]
    # an external vLLM does not publish its batch limit: given, as --max-num-seqs gives it
    calibration = calibrate_runs([r.folder for r in (runs[0], runs[1], stairs)], max_num_seqs=SEQS)
    assert calibration.engine.max_num_seqs == SEQS
    assert calibration.engine.kv_cache_tokens == read_cache_info(vllm.base_url).kv_cache_tokens
    assert not any("ASSUMED" in n for n in calibration.notes), calibration.notes
    rows = {(r.basis, r.metric, r.quantile): r for r in backtest_run(runs[2].folder, calibration)}
    assert abs(rows[("replay", "e2e", 50)].error_pct) < 30
    assert abs(rows[("replay", "e2e", 95)].error_pct) < 40


def shape_catalog(shape: ModelShape, vocab_size: int, kv_bytes: float) -> Catalog:
    """The vLLM target's model as a catalog entry, its KV cache's format (`kv`), and a device
    (its figures play no part in a KV space given outright)."""
    per_layer = 4 * shape.hidden * shape.hidden + 3 * shape.hidden * shape.ffn
    model = Model(
        parameters=shape.layers * per_layer + 2 * vocab_size * shape.hidden,
        layers=shape.layers,
        hidden_size=shape.hidden,
        attention_heads=shape.heads,
        kv_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads,
        intermediate_size=shape.ffn,
        vocab_size=vocab_size,
        max_context=shape.context,
        source="targets/gguf_model.py SHAPES",
    )
    cpu = Gpu(
        vendor="cpu", memory_gib=16, memory_bandwidth_gbs=10, tflops={"bf16": 1},
        interconnect_gbs=0, load_bandwidth_gbs=1, price_per_hour_usd=0, source="this machine",
    )  # fmt: skip
    formats = {"kv": NumberFormat(bytes=kv_bytes, compute="bf16")}
    formats["bf16"] = NumberFormat(bytes=2, compute="bf16")  # the weights' (no part in it)
    return Catalog(
        [CatalogFile(models={shape.name: model}, gpus={"cpu": cpu}, number_formats=formats)]
    )


def _formula_blocks(server: VllmServer, model_size: str) -> tuple[int, int]:
    """(the blocks `surgecast memory`'s formula gives for the server's model and KV space, the
    num_gpu_blocks the server reports)."""
    assert server.limits is not None
    cache, config = server.limits.cache, server.config
    kv_bytes = 4 if config.dtype == "float32" else 2  # the cache is in the model's dtype
    shape = SHAPES[model_size]
    catalog = shape_catalog(shape, len(vocabulary()[0]), kv_bytes)
    d = Deployment(
        model=shape.name, gpu="cpu", kv_cache="kv",
        kv_cache_gib=config.kv_cache_gib, block_size=cache.block_size,
    )  # fmt: skip
    return memory_plan(d, catalog).blocks, cache.num_blocks


@needs_vllm
def test_the_memory_formula_gives_vllms_own_block_count(vllm: VllmServer) -> None:
    """issue 22: the KV blocks `surgecast memory` computes for the model and the KV space the
    server was given equal the num_gpu_blocks vLLM reports."""
    formula, reported = _formula_blocks(vllm, VllmOptions().model_size)
    assert formula == reported


@needs_vllm
def test_the_memory_formula_holds_for_another_shape_block_and_kv_space() -> None:
    """The small model (8 layers, 4 KV heads of 64), 32-token blocks, 2 GiB of KV space."""
    options = VllmOptions(kv_cache_gib=2, block_size=32, model_size="small", max_model_len=MAX_LEN)
    with VllmServer(config_for(options, "surgecast-reference")) as server:
        formula, reported = _formula_blocks(server, "small")
    assert formula == reported
