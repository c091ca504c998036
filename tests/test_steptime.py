"""The first-principles step time against hand-worked figures and the laws it must obey: halving
memory bandwidth doubles a memory-bound decode step and leaves a compute-bound prefill alone;
tensor parallelism halves the work and adds exactly its all-reduce term; efficiencies read off a
fitted cost give that cost back and carry it to another GPU by the ratio of their rates."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import load_catalog
from simulator.deploy.steptime import (
    Efficiency,
    deployment_cost,
    efficiency_from,
    hardware,
    step_cost,
    step_work,
    transfer,
)

CATALOG = load_catalog()
LLAMA_8B = Deployment(model="Llama-3.1-8B", gpu="H100")
PEAK = Efficiency(compute=1, memory=1, attention=1, link=1, overhead_s=0)
MEASURED = Efficiency(compute=0.42, memory=0.71, attention=0.55, link=0.7, overhead_s=0.003)


def test_a_decode_step_at_peak_reads_the_weights_once() -> None:
    cost = deployment_cost(LLAMA_8B, CATALOG, PEAK)
    # 8.03e9 weights x 2 B over 3,350 GB/s; the KV cache of 1,000 tokens: 131,072 B each
    assert cost.duration(1, 0, 0) == pytest.approx(8.03e9 * 2 / 3.35e12)
    assert cost.duration(1, 0, 1000) == pytest.approx((16.06e9 + 1000 * 131_072) / 3.35e12)
    # prefilling 8,192 tokens: 2 x 8.03e9 FLOPs a token at 989 TFLOPS
    assert cost.duration(0, 8192, 0) == pytest.approx(8192 * 2 * 8.03e9 / 989e12)


def test_halving_memory_bandwidth_doubles_a_memory_bound_step_only() -> None:
    work, hw = step_work(LLAMA_8B, CATALOG), hardware(LLAMA_8B, CATALOG)
    full = step_cost(work, hw, MEASURED)
    half = step_cost(work, replace(hw, memory_bytes_s=hw.memory_bytes_s / 2), MEASURED)
    overhead = MEASURED.overhead_s
    for decode, context in ((1, 0), (8, 4000), (32, 60_000)):
        assert half.duration(decode, 0, context) - overhead == pytest.approx(
            2 * (full.duration(decode, 0, context) - overhead)
        )
    assert half.duration(0, 8192, 0) == full.duration(0, 8192, 0)  # compute-bound: unchanged


def test_tensor_parallelism_splits_the_work_and_adds_exactly_its_all_reduce() -> None:
    one = deployment_cost(LLAMA_8B, CATALOG, MEASURED)
    two = deployment_cost(LLAMA_8B.model_copy(update={"tensor_parallel": 2}), CATALOG, MEASURED)
    # two all-reduces a layer of a 4,096-wide bf16 hidden state; a ring moves 2 (2 - 1) / 2 of it
    per_token = 2 * 32 * 4096 * 2 * 1 / (450e9 * 0.7)
    assert two.per_token_comm_s == pytest.approx(per_token) and one.per_token_comm_s == 0
    for decode, prefill, context in ((1, 0, 0), (16, 0, 30_000), (4, 2048, 9000), (0, 8192, 0)):
        split = (one.duration(decode, prefill, context) - one.base_s) / 2  # each GPU's half
        expected = two.base_s + split + per_token * (decode + prefill)
        assert two.duration(decode, prefill, context) == pytest.approx(expected)


def test_formats_and_experts() -> None:
    int4 = step_work(Deployment(model="Llama-3.1-70B", gpu="H100", weights="int4"), CATALOG)
    bf16 = step_work(Deployment(model="Llama-3.1-70B", gpu="H100"), CATALOG)
    embeddings = 128256 * 8192 * 2  # stay 16-bit
    assert int4.weight_bytes == pytest.approx((70.55e9 - embeddings) * 0.5 + embeddings * 2)
    assert int4.flops_per_token == bf16.flops_per_token  # int4 is widened to bf16 to multiply
    moe = step_work(Deployment(model="Mixtral-8x7B", gpu="H100"), CATALOG)
    assert moe.flops_per_token == 2 * 12.88e9 and moe.weight_bytes == pytest.approx(46.70e9 * 2)
    fp8 = Deployment(model="Llama-3.1-8B", gpu="H100", weights="fp8")
    assert hardware(fp8, CATALOG).flops == 1979e12
    assert (
        hardware(fp8.model_copy(update={"gpu": "A100"}), CATALOG).flops == 312e12
    )  # no fp8 units: bf16


def test_efficiencies_read_off_a_fitted_cost_give_it_back() -> None:
    work, hw = step_work(LLAMA_8B, CATALOG), hardware(LLAMA_8B, CATALOG)
    fitted = replace(step_cost(work, hw, MEASURED), compute_per_context_token_s=0.0)
    eff = efficiency_from(fitted, work, hw)
    assert eff == replace(MEASURED, link=Efficiency().link)  # tp 1 says nothing of the link
    again = step_cost(work, hw, eff)
    for name in ("base_s", "per_token_s", "memory_s", "per_context_token_s"):
        assert getattr(again, name) == pytest.approx(getattr(fitted, name))


def test_a_term_the_steps_never_exercised_keeps_the_default_and_none_beats_the_peak() -> None:
    work, hw = step_work(LLAMA_8B, CATALOG), hardware(LLAMA_8B, CATALOG)
    never_compute_bound = replace(deployment_cost(LLAMA_8B, CATALOG, MEASURED), per_token_s=0.0)
    assert efficiency_from(never_compute_bound, work, hw).compute == Efficiency().compute
    faster_than_memory = replace(never_compute_bound, memory_s=1e-4)  # 160 TB/s: a cache
    assert efficiency_from(faster_than_memory, work, hw).memory == 1.0


def test_transfer_to_another_gpu_scales_by_its_rates() -> None:
    fitted = deployment_cost(LLAMA_8B, CATALOG, MEASURED)
    h200 = LLAMA_8B.model_copy(update={"gpu": "H200"})
    moved = transfer(fitted, LLAMA_8B, h200, CATALOG)
    direct = deployment_cost(h200, CATALOG, MEASURED)
    for name in ("base_s", "per_token_s", "memory_s", "per_context_token_s", "per_token_comm_s"):
        assert getattr(moved, name) == pytest.approx(getattr(direct, name))
    overhead = MEASURED.overhead_s
    ratio = (moved.duration(1, 0, 2000) - overhead) / (fitted.duration(1, 0, 2000) - overhead)
    assert ratio == pytest.approx(3350 / 4800)  # a memory-bound step: the bandwidths' ratio
    assert moved.duration(0, 8192, 0) == pytest.approx(fitted.duration(0, 8192, 0))  # same TFLOPS


def test_efficiencies_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="efficiency memory"):
        Efficiency(memory=1.5)
