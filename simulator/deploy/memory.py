"""Memory in GiB: what a deployment puts on each of its GPUs and the KV cache that is left.

Per GPU, within memory x gpu_memory_utilization (vLLM's budget):
- weights: the non-embedding parameters in the weight format, the embeddings and output head
  in 16-bit (quantisers leave them so), split over the tensor-parallel GPUs;
- activations: the peak of one step of max_num_batched_tokens (hidden states, the MLP's
  intermediate of the experts a token uses, split over the GPUs) and the sampler's fp32 logits
  for max_num_seqs sequences, as vLLM's profiling run sees it (an estimate);
- overhead: the CUDA context, communication buffers and CUDA graphs (a setting);
- the KV cache: the rest, in blocks of block_size tokens; each GPU holds its share of the KV
  heads (all of them, replicated, where there are fewer heads than GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import Catalog, Gpu, Model
from simulator.engine.core import EngineConfig

GIB = 1024**3
ACTIVATION_BYTES = 2  # activations in 16-bit
LOGIT_BYTES = 4  # the sampler's logits in fp32


@dataclass(frozen=True)
class MemoryPlan:
    """One replica's memory, per GPU unless named otherwise. `fits` False: `why` says why."""

    deployment: Deployment
    budget_gib: float  # memory x gpu_memory_utilization
    weights_gib: float
    activations_gib: float
    overhead_gib: float
    kv_cache_gib: float  # may be negative: the rest does not fit
    kv_bytes_per_token: int  # the whole replica's, all layers, K and V
    block_bytes: int  # one block on one GPU
    blocks: int  # per replica (each GPU holds its share of every block)
    model_context: int
    why: str = ""

    @property
    def fits(self) -> bool:
        return not self.why

    @property
    def kv_tokens(self) -> int:
        return self.blocks * self.deployment.block_size

    @property
    def max_context(self) -> int:
        """The longest sequence: the model's limit or the whole cache."""
        return min(self.model_context, self.kv_tokens)

    def max_batch(self, context_tokens: int) -> int:
        """Sequences of `context_tokens` each the cache holds at once (max_num_seqs at most)."""
        per_seq = -(-max(context_tokens, 1) // self.deployment.block_size)
        return min(self.blocks // per_seq, self.deployment.max_num_seqs)


def weight_bytes(model: Model, weights_bytes: float) -> float:
    """All of a replica's weights: the embeddings and output head stay 16-bit."""
    embeddings = model.embedding_parameters
    return (model.parameters - embeddings) * weights_bytes + embeddings * 2


def activation_bytes(model: Model, d: Deployment) -> float:
    """The peak of one step's activations on one GPU (an estimate, see the module's notes)."""
    tp = d.tensor_parallel
    mlp = 3 * model.intermediate_size * model.experts_per_token / tp  # gate+up out, act out
    step = d.max_num_batched_tokens * (2 * model.hidden_size + mlp) * ACTIVATION_BYTES
    return step + d.max_num_seqs * model.vocab_size * LOGIT_BYTES


def kv_heads_per_gpu(model: Model, tensor_parallel: int) -> int:
    return -(-model.kv_heads // tensor_parallel)  # replicated when fewer heads than GPUs


def memory_plan(d: Deployment, catalog: Catalog) -> MemoryPlan:
    """The deployment's memory from its catalog entries (KeyError: a name the catalog lacks)."""
    model, gpu = catalog.model(d.model), catalog.gpu(d.gpu)
    w_bytes = catalog.number_format(d.weights).bytes
    kv_bytes = catalog.number_format(d.kv_cache).bytes
    tp = d.tensor_parallel
    budget = gpu.memory_gib * GIB * d.gpu_memory_utilization
    weights = weight_bytes(model, w_bytes) / tp
    activations = activation_bytes(model, d)
    overhead = d.overhead_gib * GIB
    kv = d.kv_cache_gib * GIB if d.kv_cache_gib else budget - weights - activations - overhead
    per_token = round(2 * model.layers * model.kv_heads * model.head_dim * kv_bytes)
    block = round(
        d.block_size * 2 * model.layers * kv_heads_per_gpu(model, tp) * model.head_dim * kv_bytes
    )
    blocks = max(int(kv // block), 0)
    plan = MemoryPlan(
        d,
        budget / GIB,
        weights / GIB,
        activations / GIB,
        d.overhead_gib,
        kv / GIB,
        per_token,
        block,
        blocks,
        model.max_context,
    )
    why = _why_not(plan, model, gpu)
    return plan if not why else MemoryPlan(**{**plan.__dict__, "why": why})


def load_seconds(d: Deployment, catalog: Catalog) -> float:
    """Time to bring the weights onto the GPUs, each loading its shard at the same time."""
    model, gpu = catalog.model(d.model), catalog.gpu(d.gpu)
    weights = weight_bytes(model, catalog.number_format(d.weights).bytes)
    return weights / d.tensor_parallel / (gpu.load_bandwidth_gbs * 1e9)


def engine_config(plan: MemoryPlan, base: EngineConfig) -> EngineConfig:
    """`base` with the KV cache and batch limit the deployment really has."""
    d = plan.deployment
    return replace(
        base, block_size=d.block_size, kv_cache_tokens=plan.kv_tokens, max_num_seqs=d.max_num_seqs
    )


def _why_not(plan: MemoryPlan, model: Model, gpu: Gpu) -> str:
    d = plan.deployment
    if model.attention_heads % d.tensor_parallel:
        return (
            f"tensor_parallel {d.tensor_parallel} does not divide the model's "
            f"{model.attention_heads} attention heads"
        )
    if plan.blocks >= 1:
        return ""
    used = plan.weights_gib + plan.activations_gib + plan.overhead_gib
    return (
        f"does not fit: weights {plan.weights_gib:.1f} + activations {plan.activations_gib:.1f}"
        f" + overhead {plan.overhead_gib:.1f} = {used:.1f} GiB per GPU, over the "
        f"{plan.budget_gib:.1f} GiB of {gpu.memory_gib:g} GiB x gpu_memory_utilization "
        f"{d.gpu_memory_utilization:g} (try more tensor parallelism or smaller weights)"
    )
