"""Prometheus text parsing and the NVML sampler's behaviour without a GPU."""

from __future__ import annotations

import pytest

from loadgen.telemetry import NvmlSampler, PrometheusSampler, metrics_url_for, parse_prometheus

EXPOSITION = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
vllm:prompt_tokens_total{model_name="m"} 1.5e3
http_requests_total{code="200",handler="/v1/chat/completions"} 12
broken_line_without_value
nan_metric NaN
"""


def test_parse_prometheus_text() -> None:
    m = parse_prometheus(EXPOSITION)
    assert m == {
        'vllm:num_requests_running{model_name="m"}': 3.0,
        'vllm:prompt_tokens_total{model_name="m"}': 1500.0,
        'http_requests_total{code="200",handler="/v1/chat/completions"}': 12.0,
    }


def test_metrics_url_is_the_api_root() -> None:
    assert metrics_url_for("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url_for("http://[::1]:8000/v1/") == "http://[::1]:8000/metrics"


def test_unreachable_metrics_endpoint_reports_once() -> None:
    sampler = PrometheusSampler("http://127.0.0.1:9/metrics", timeout_s=0.5)
    first = sampler.sample()
    assert first is not None and "error" in first
    assert sampler.sample() is None  # it stops trying


def test_nvml_sampler_without_gpu_says_why() -> None:
    sampler = NvmlSampler()
    if sampler.available:  # a GPU machine: real samples
        data = sampler.sample()
        assert data is not None and data["gpus"]
        assert 0 <= data["gpus"][0]["gpu_util_pct"] <= 100
        sampler.close()
    else:
        assert sampler.error and "NVML unavailable" in sampler.error
        assert sampler.sample() is None


def test_nvml_memory_matches_the_driver_on_a_real_gpu() -> None:
    """On a GPU machine: an allocation made through CUDA shows in NVML's memory reading."""
    sampler = NvmlSampler()
    if not sampler.available:
        pytest.skip(f"no GPU here ({sampler.error})")
    torch = pytest.importorskip("torch", reason="torch allocates the GPU memory to look for")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    assert sampler.devices and sampler.devices[0]["uuid"].startswith("GPU-")
    torch.zeros(1, device="cuda:0")  # the CUDA context takes its own few hundred MiB first
    torch.cuda.synchronize()
    before = sampler.sample()
    block = torch.empty(4 << 30, dtype=torch.uint8, device="cuda:0")  # 4 GiB
    torch.cuda.synchronize()
    after = sampler.sample()
    free, total = torch.cuda.mem_get_info(0)
    del block
    sampler.close()
    assert before is not None and after is not None
    gpu = after["gpus"][0]
    grown = gpu["mem_used_bytes"] - before["gpus"][0]["mem_used_bytes"]
    assert abs(grown - (4 << 30)) < (256 << 20)  # the driver rounds to its own pages
    # NVML's used and total both include the driver's reserve, which CUDA's total leaves out:
    # what is free agrees.
    assert gpu["mem_total_bytes"] >= total
    assert abs((gpu["mem_total_bytes"] - gpu["mem_used_bytes"]) - free) < (64 << 20)
    assert 0 <= gpu["gpu_util_pct"] <= 100
