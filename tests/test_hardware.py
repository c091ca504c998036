"""`surgecast hardware`: the machine at hand measured as a catalog GPU entry."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.deploy.catalog import load_catalog
from surgecast.hardware import best_seconds, matmul_flops, measure_cpu
from tests.conftest import run_cli

TINY = ("--size", "64", "--read-mib", "1", "--repeats", "2")


def scripted_clock(durations: list[float]) -> Iterator[float]:
    """A clock whose successive (start, end) readings give `durations` in turn."""
    now = 100.0
    for d in durations:
        yield now
        now += d
        yield now


def test_the_best_of_the_timed_repeats_after_an_untimed_warm_up() -> None:
    calls = []
    clock = scripted_clock([0.3, 0.1, 0.2])
    assert best_seconds(lambda: calls.append(1), 3, lambda: next(clock)) == pytest.approx(0.1)
    assert len(calls) == 4  # the warm-up, then three timed


def test_a_matmul_does_two_flops_per_multiply_add() -> None:
    assert matmul_flops(1000, 2.0) == pytest.approx(1e9)  # 10^9 multiply-adds in 2 s


def test_the_rates_are_the_work_over_the_clocks_time() -> None:
    """Every timing 0.5 s on the clock: the matmul's 2n^3 and the array's bytes over 0.5 s; the
    memory is what the kernel reports (/proc/meminfo's MemTotal)."""
    m = measure_cpu(32, 2, 1, clock=iter([0.0, 0.5] * 4).__next__)
    assert m.matmul_flops == pytest.approx(2 * 32**3 / 0.5)
    assert m.memory_bytes_s == pytest.approx((2 << 20) / 0.5)
    total_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert m.memory_bytes == pytest.approx(total_kib * 1024, rel=1e-3)


def test_the_catalog_file_it_writes_is_a_gpu_the_other_commands_take(tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    result = run_cli("hardware", *TINY, "--name", "my-box", "--price", "0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "matmul GFLOP/s" in result.stdout and f"--catalog {out}" in result.stderr
    gpu = load_catalog([out]).gpu("MY-BOX")  # strictly validated, found in any case
    assert gpu.price_per_hour_usd == 0.5 and gpu.interconnect_gbs == 0
    assert gpu.tflops["bf16"] > 0 and gpu.memory_bandwidth_gbs > 0
    memory = run_cli("memory", "llama-3.1-8b", "my-box", "--tp", "1", "--catalog", str(out))
    assert memory.returncode == 0, memory.stderr
    assert "Llama-3.1-8B x my-box" in memory.stdout


def test_the_threads_asked_for_are_the_childs() -> None:
    result = run_cli("hardware", *TINY, "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["measured"]["threads"] == 1
    assert "1 thread)" in doc["gpus"]["this-machine"]["source"]


def test_a_gpu_without_torch_is_refused_with_what_to_do() -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    result = run_cli("hardware", "--device", "cuda:0")
    assert result.returncode == 2
    assert "needs torch" in result.stderr and "pip install torch" in result.stderr
