"""Memory, the vertical limit: how much KV cache a model leaves on a GPU, and what fits in it.

Weights take parameters x dtype bytes, split over the tensor-parallel GPUs. The KV cache of one
token takes 2 (K and V) x layers x KV heads x head dimension x dtype bytes, also split over the
GPUs. What the GPU memory (times vLLM's gpu_memory_utilization) leaves after the weights and an
activation reserve, divided by the bytes of a block of `block_size` tokens, is the replica's
number of KV blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.engine.core import EngineConfig

GIB = 1024**3
TP_DEGREES = (1, 2, 4, 8)


def _positive(owner: str, **fields: float) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name}: must be > 0, got {value!r}")


@dataclass(frozen=True)
class ModelProfile:
    name: str
    parameters: float  # count, e.g. 8.03e9
    layers: int
    kv_heads: int  # key-value heads (fewer than attention heads with grouped-query attention)
    head_dim: int
    dtype_bytes: int = 2  # fp16 / bf16
    max_context: int = 8192

    def __post_init__(self) -> None:
        _positive(
            f"model {self.name!r}",
            parameters=self.parameters,
            layers=self.layers,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            dtype_bytes=self.dtype_bytes,
            max_context=self.max_context,
        )


@dataclass(frozen=True)
class GpuProfile:
    name: str
    memory_gib: float
    price_per_hour_usd: float
    load_bandwidth_gbps: float  # GB/s at which weights reach the GPU when a replica starts

    def __post_init__(self) -> None:
        _positive(
            f"gpu {self.name!r}",
            memory_gib=self.memory_gib,
            load_bandwidth_gbps=self.load_bandwidth_gbps,
        )
        if self.price_per_hour_usd < 0:
            raise ValueError(
                f"gpu {self.name!r}.price_per_hour_usd: must be >= 0, got {self.price_per_hour_usd}"
            )


@dataclass(frozen=True)
class ServingConfig:
    """How a replica is deployed on its GPUs (vLLM's names where it has them)."""

    tensor_parallel: int = 1
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = 2.0  # per GPU: activations, CUDA graphs, allocator slack

    def __post_init__(self) -> None:
        if self.tensor_parallel not in TP_DEGREES:
            raise ValueError(
                f"serving.tensor_parallel: must be one of {TP_DEGREES}, got {self.tensor_parallel}"
            )
        _positive("serving", block_size=self.block_size)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                "serving.gpu_memory_utilization: must be in (0, 1], "
                f"got {self.gpu_memory_utilization}"
            )
        if self.activation_reserve_gib < 0:
            raise ValueError(
                f"serving.activation_reserve_gib: must be >= 0, got {self.activation_reserve_gib}"
            )


def weights_bytes(model: ModelProfile) -> float:
    return model.parameters * model.dtype_bytes


def kv_bytes_per_token(model: ModelProfile) -> int:
    """K and V of every layer for one token, over all GPUs of a replica."""
    return 2 * model.layers * model.kv_heads * model.head_dim * model.dtype_bytes


def kv_bytes_per_gpu(model: ModelProfile, gpu: GpuProfile, serving: ServingConfig) -> float:
    """Memory one GPU has left for KV blocks (negative: the weights alone do not fit)."""
    usable = gpu.memory_gib * GIB * serving.gpu_memory_utilization
    reserve = serving.activation_reserve_gib * GIB
    return usable - weights_bytes(model) / serving.tensor_parallel - reserve


def blocks_per_replica(model: ModelProfile, gpu: GpuProfile, serving: ServingConfig) -> int:
    """KV blocks of `block_size` tokens a replica holds (each GPU holds its heads' share)."""
    kv_heads_per_gpu = -(-model.kv_heads // serving.tensor_parallel)  # replicated if fewer
    block_bytes = (
        serving.block_size
        * 2
        * model.layers
        * kv_heads_per_gpu
        * model.head_dim
        * model.dtype_bytes
    )
    free = kv_bytes_per_gpu(model, gpu, serving)
    if free < block_bytes:
        need = (weights_bytes(model) / serving.tensor_parallel) / GIB
        raise ValueError(
            f"model {model.name!r} does not fit on gpu {gpu.name!r} at tensor_parallel "
            f"{serving.tensor_parallel}: weights take {need:.1f} GiB per GPU, "
            f"memory_gib {gpu.memory_gib:g} x gpu_memory_utilization "
            f"{serving.gpu_memory_utilization:g} - activation_reserve_gib "
            f"{serving.activation_reserve_gib:g} leaves no room for one KV block"
        )
    return int(free // block_bytes)


def max_context_tokens(model: ModelProfile, gpu: GpuProfile, serving: ServingConfig) -> int:
    """The longest context one sequence can have: the model's limit or the whole cache."""
    return min(model.max_context, blocks_per_replica(model, gpu, serving) * serving.block_size)


def max_batch(
    model: ModelProfile, gpu: GpuProfile, serving: ServingConfig, context_tokens: int
) -> int:
    """How many sequences of `context_tokens` each the cache holds at once."""
    _positive("max_batch", context_tokens=context_tokens)
    per_seq = -(-context_tokens // serving.block_size)
    return blocks_per_replica(model, gpu, serving) // per_seq


def min_tensor_parallel(
    model: ModelProfile, gpu: GpuProfile, serving: ServingConfig | None = None
) -> int:
    """The smallest degree in 1, 2, 4, 8 with room for the weights and some KV cache."""
    base = serving or ServingConfig()
    for tp in TP_DEGREES:
        try:
            blocks_per_replica(model, gpu, replace(base, tensor_parallel=tp))
        except ValueError:
            continue
        return tp
    need = weights_bytes(model) / GIB
    raise ValueError(
        f"model {model.name!r} does not fit on 8 x gpu {gpu.name!r}: parameters "
        f"{model.parameters:.3g} x dtype_bytes {model.dtype_bytes} = {need:.0f} GiB of weights, "
        f"memory_gib {gpu.memory_gib:g} per GPU"
    )


def load_seconds(model: ModelProfile, gpu: GpuProfile, serving: ServingConfig) -> float:
    """Time to bring the weights onto the GPUs, each loading its shard at the same time."""
    return weights_bytes(model) / serving.tensor_parallel / (gpu.load_bandwidth_gbps * 1e9)


def engine_config_for(
    model: ModelProfile, gpu: GpuProfile, serving: ServingConfig, base: EngineConfig
) -> EngineConfig:
    """`base` with the KV cache a replica of `model` on `gpu` really has."""
    blocks = blocks_per_replica(model, gpu, serving)
    return replace(base, block_size=serving.block_size, kv_cache_tokens=blocks * serving.block_size)


# Models: shapes from each model's config.json on Hugging Face (num_hidden_layers,
# num_key_value_heads, hidden_size / num_attention_heads, max_position_embeddings) and the
# parameter counts on their model cards; bf16 weights and KV cache.
LLAMA_3_8B = ModelProfile("Llama-3-8B", 8.03e9, layers=32, kv_heads=8, head_dim=128)
LLAMA_3_70B = ModelProfile("Llama-3-70B", 70.6e9, layers=80, kv_heads=8, head_dim=128)
QWEN2_5_7B = ModelProfile(
    "Qwen2.5-7B", 7.61e9, layers=28, kv_heads=4, head_dim=128, max_context=32768
)

# GPUs: memory as nvidia-smi reports it (H100 SXM 81559 MiB, A100 81920 MiB, L40S 46068 MiB).
# Prices are approximate public on-demand list prices per GPU-hour in 2024-25 (they vary by
# cloud and commitment: check your own). Load bandwidth is an effective host-to-GPU rate, about
# half the PCIe peak (5.0 x16: 64 GB/s; 4.0 x16: 32 GB/s); slow storage can make it lower.
H100_80GB = GpuProfile("H100-80GB", 79.6, price_per_hour_usd=3.0, load_bandwidth_gbps=32.0)
A100_80GB = GpuProfile("A100-80GB", 80.0, price_per_hour_usd=2.0, load_bandwidth_gbps=16.0)
L40S_48GB = GpuProfile("L40S-48GB", 45.0, price_per_hour_usd=1.2, load_bandwidth_gbps=16.0)

MODELS = {m.name: m for m in (LLAMA_3_8B, LLAMA_3_70B, QWEN2_5_7B)}
GPUS = {g.name: g for g in (H100_80GB, A100_80GB, L40S_48GB)}
