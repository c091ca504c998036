"""A deployment as a user names it: model x GPU x weight format x KV-cache format x tensor
parallelism, with the engine settings that decide its memory (vLLM's names)."""

from __future__ import annotations

import itertools

from pydantic import Field

from scenarios.base import Strict


class Deployment(Strict):
    model: str = Field(description="A model of the catalog (name or alias).")
    gpu: str = Field(description="A GPU of the catalog (name or alias).")
    weights: str = Field("bf16", description="Number format of the weights (bf16, fp8, int4...).")
    kv_cache: str = Field("bf16", description="Number format of the KV cache (bf16, fp8).")
    tensor_parallel: int = Field(1, ge=1, le=64, description="GPUs a replica spans.")
    max_num_seqs: int = Field(256, ge=1, le=65536, description="Sequences in a batch, at most.")
    max_num_batched_tokens: int = Field(
        8192, ge=1, le=1 << 20, description="Tokens in one engine step, at most."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="The share of each GPU's memory the engine may take."
    )
    block_size: int = Field(16, ge=1, le=4096, description="Tokens in a KV-cache block.")
    overhead_gib: float = Field(
        1.0,
        ge=0,
        le=1024,
        description="Per GPU, beyond weights and activations: the CUDA context, communication "
        "buffers, CUDA graphs.",
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        le=1 << 20,
        description="KV-cache memory per GPU given outright (vLLM on CPU: "
        "VLLM_CPU_KVCACHE_SPACE) instead of what the GPU's memory leaves.",
    )

    def label(self) -> str:
        parts = [self.model, self.gpu, f"w:{self.weights}", f"kv:{self.kv_cache}"]
        return " x ".join(parts) + (f" x tp{self.tensor_parallel}")


class DeploymentOptions(Strict):
    """The deployments `forecast` chooses between: every combination of the lists (each left
    out: the measured deployment's own), carried from the one the calibration measured."""

    measured: Deployment = Field(
        description="The deployment that served the calibration's runs (its GPU, model, "
        "formats and engine settings)."
    )
    models: list[str] = Field(default_factory=list, max_length=64)
    gpus: list[str] = Field(default_factory=list, max_length=64)
    weights: list[str] = Field(default_factory=list, max_length=16)
    kv_cache: list[str] = Field(default_factory=list, max_length=16)
    tensor_parallel: list[int] = Field(default_factory=list, max_length=16)
    catalog: list[str] = Field(
        default_factory=list, description="Catalog files of your own, over the shipped one."
    )
    transfer_error: float = Field(
        0.15,
        ge=0,
        le=2,
        description="Relative error of a step time carried to another deployment (as "
        "benchmarks/transfer.py measures it): widens the chosen fleet's interval.",
    )

    def combinations(self) -> list[Deployment]:
        m = self.measured
        lists = (
            self.models or [m.model],
            self.gpus or [m.gpu],
            self.weights or [m.weights],
            self.kv_cache or [m.kv_cache],
            self.tensor_parallel or [m.tensor_parallel],
        )
        return [
            m.model_copy(
                update={"model": a, "gpu": b, "weights": c, "kv_cache": d, "tensor_parallel": e}
            )
            for a, b, c, d, e in itertools.product(*lists)
        ]
