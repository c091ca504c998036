"""Memory arithmetic against hand-computed numbers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator.engine.core import EngineConfig
from simulator.engine.profiles import (
    A100_80GB,
    H100_80GB,
    L40S_48GB,
    LLAMA_3_8B,
    LLAMA_3_70B,
    QWEN2_5_7B,
    GpuProfile,
    ModelProfile,
    ServingConfig,
    blocks_per_replica,
    engine_config_for,
    kv_bytes_per_token,
    load_seconds,
    max_batch,
    max_context_tokens,
    min_tensor_parallel,
    weights_bytes,
)


def test_kv_bytes_per_token() -> None:
    assert kv_bytes_per_token(LLAMA_3_8B) == 128 * 1024  # 2 x 32 x 8 x 128 x 2
    assert kv_bytes_per_token(LLAMA_3_70B) == 320 * 1024  # 2 x 80 x 8 x 128 x 2
    assert kv_bytes_per_token(QWEN2_5_7B) == 56 * 1024  # 2 x 28 x 4 x 128 x 2


def test_blocks_context_and_batch_of_llama_3_8b_on_an_a100() -> None:
    serving = ServingConfig()  # TP 1, blocks of 16, utilisation 0.9, 2 GiB reserve
    # 80 GiB x 0.9 = 77,309,411,328 B; - 16,060,000,000 B weights - 2,147,483,648 B reserve
    # = 59,101,927,680 B of KV; / (16 x 131,072 B per block) = 28,181.8
    assert weights_bytes(LLAMA_3_8B) == pytest.approx(16.06e9)
    assert blocks_per_replica(LLAMA_3_8B, A100_80GB, serving) == 28181
    assert max_context_tokens(LLAMA_3_8B, A100_80GB, serving) == 8192  # the model's own limit
    assert max_batch(LLAMA_3_8B, A100_80GB, serving, 8192) == 28181 // 512
    engine = engine_config_for(LLAMA_3_8B, A100_80GB, serving, EngineConfig())
    assert engine.num_blocks == 28181 and engine.block_size == 16


def test_tensor_parallel_splits_weights_and_kv() -> None:
    # Llama-3-70B at TP 2 on an A100: 77,309,411,328 B - 141.2e9 B / 2 - 2,147,483,648 B
    # = 4,561,927,680 B per GPU; a block holds 4 of the 8 KV heads there: 16 x 160 KiB
    # = 2,621,440 B -> 1,740.2 blocks
    assert blocks_per_replica(LLAMA_3_70B, A100_80GB, ServingConfig(tensor_parallel=2)) == 1740
    assert load_seconds(LLAMA_3_70B, A100_80GB, ServingConfig(tensor_parallel=2)) == (
        pytest.approx(70.6e9 * 2 / 2 / 16e9)
    )


def test_smallest_tensor_parallel_degree() -> None:
    assert min_tensor_parallel(LLAMA_3_8B, H100_80GB) == 1
    assert min_tensor_parallel(LLAMA_3_70B, H100_80GB) == 2  # 141 GB of weights
    assert min_tensor_parallel(LLAMA_3_70B, A100_80GB) == 2
    assert min_tensor_parallel(LLAMA_3_70B, L40S_48GB) == 4  # 70.6 GB a GPU at TP 2; 35.3 at TP 4
    with pytest.raises(ValueError, match="does not fit on gpu 'L40S-48GB' at tensor_parallel 2"):
        blocks_per_replica(LLAMA_3_70B, L40S_48GB, ServingConfig(tensor_parallel=2))


def test_a_model_too_large_for_eight_gpus_is_a_clear_error() -> None:
    huge = ModelProfile("Huge-1T", 1e12, layers=120, kv_heads=16, head_dim=128)
    with pytest.raises(ValueError, match=r"does not fit on 8 x gpu 'H100-80GB': parameters"):
        min_tensor_parallel(huge, H100_80GB)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelProfile("m", 1e9, layers=0, kv_heads=8, head_dim=128), "layers"),
        (lambda: ModelProfile("m", -1.0, layers=2, kv_heads=8, head_dim=128), "parameters"),
        (lambda: GpuProfile("g", 0.0, 1.0, 10.0), "memory_gib"),
        (lambda: ServingConfig(tensor_parallel=3), "tensor_parallel"),
        (lambda: ServingConfig(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    ],
)
def test_bad_profiles_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()
