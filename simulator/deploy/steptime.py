"""A deployment's step time from first principles, and a measured step cost carried to another
deployment.

Per engine step and per GPU of a replica: the FLOPs of its tokens (2 per weight a token
multiplies by; attention's 4 per head dimension per KV token attended), the bytes it reads (the
weights once a step, the KV cache of every sequence), and tensor parallelism's all-reduces (two
a layer, each moving 2 (tp - 1) / tp of a token's hidden state) over the interconnect. Against
the GPU's peak rates these give a RooflineCost; the efficiency factors (the fraction of each
peak reached, and a fixed per-step overhead) are what a calibration measures:
`efficiency_from` reads them off a cost fitted on a known deployment, `transfer` carries them to
another; `carry` moves any fitted cost (linear, table, roofline) term by term by the ratios
of two deployments' first-principles rates, keeping it in closed form. Mixture-of-experts
models are priced at their active parameters for compute and at all of their weights for
reads (a batch of more than a few tokens touches every expert).
"""

from __future__ import annotations

from dataclasses import dataclass

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import Catalog
from simulator.deploy.memory import kv_heads_per_gpu, weight_bytes
from simulator.engine.stepcost import CostModel, DecodeTableCost, RooflineCost, StepCost

ACTIVATION_BYTES = 2  # hidden states all-reduced in 16-bit


@dataclass(frozen=True)
class StepWork:
    """What one step asks of each GPU of a replica, per token computed and per KV token read."""

    flops_per_token: float
    flops_per_context_token: float
    weight_bytes: float  # read once a step
    kv_bytes_per_context_token: float
    allreduce_bytes_per_token: float


@dataclass(frozen=True)
class Hardware:
    """A GPU's peak rates: FLOP/s of the format its matmuls run in, memory and link bytes/s."""

    flops: float
    memory_bytes_s: float
    link_bytes_s: float


@dataclass(frozen=True)
class Efficiency:
    """The fraction of each peak a serving engine reaches, and its fixed cost a step (scheduling,
    sampling, kernel launches). Defaults: typical of vLLM on a data-centre GPU, to be replaced by
    a calibration's."""

    compute: float = 0.5
    memory: float = 0.8
    attention: float = 0.6  # of memory bandwidth, reading the KV cache (paged, scattered)
    link: float = 0.7
    overhead_s: float = 0.004

    def __post_init__(self) -> None:
        for name in ("compute", "memory", "attention", "link"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"efficiency {name} must be in (0, 1], got {getattr(self, name)}")


def step_work(d: Deployment, catalog: Catalog) -> StepWork:
    model = catalog.model(d.model)
    tp = d.tensor_parallel
    kv_format = catalog.number_format(d.kv_cache)
    kv_per_token = 2 * model.layers * kv_heads_per_gpu(model, tp) * model.head_dim
    ring = 2 * (tp - 1) / tp  # of the data each GPU sends and receives in a ring all-reduce
    return StepWork(
        flops_per_token=2 * model.per_token_parameters / tp,
        flops_per_context_token=4 * model.layers * model.attention_heads * model.head_dim / tp,
        weight_bytes=weight_bytes(model, catalog.number_format(d.weights).bytes) / tp,
        kv_bytes_per_context_token=kv_per_token * kv_format.bytes,
        allreduce_bytes_per_token=2 * model.layers * model.hidden_size * ACTIVATION_BYTES * ring,
    )


def hardware(d: Deployment, catalog: Catalog) -> Hardware:
    """The deployment's GPU; its matmuls run at the weight format's rate where the GPU has
    units for it, at bf16 where it has not (fp8 weights on an A100 are widened)."""
    gpu = catalog.gpu(d.gpu)
    compute = catalog.number_format(d.weights).compute
    tflops = gpu.tflops.get(compute, gpu.tflops["bf16"])
    return Hardware(tflops * 1e12, gpu.memory_bandwidth_gbs * 1e9, gpu.interconnect_gbs * 1e9)


def step_cost(work: StepWork, hw: Hardware, eff: Efficiency) -> RooflineCost:
    link = work.allreduce_bytes_per_token / (hw.link_bytes_s * eff.link) if hw.link_bytes_s else 0
    return RooflineCost(
        base_s=eff.overhead_s,
        per_token_s=work.flops_per_token / (hw.flops * eff.compute),
        memory_s=work.weight_bytes / (hw.memory_bytes_s * eff.memory),
        per_context_token_s=work.kv_bytes_per_context_token / (hw.memory_bytes_s * eff.attention),
        compute_per_context_token_s=work.flops_per_context_token / (hw.flops * eff.compute),
        per_token_comm_s=link,
    )


def deployment_cost(d: Deployment, catalog: Catalog, eff: Efficiency | None = None) -> RooflineCost:
    return step_cost(step_work(d, catalog), hardware(d, catalog), eff or Efficiency())


def efficiency_from(
    fitted: RooflineCost, work: StepWork, hw: Hardware, default: Efficiency | None = None
) -> Efficiency:
    """The factors a roofline fitted on a known deployment's steps implies; a term the steps
    never exercised (fitted as 0: never compute-bound, no context term) keeps `default`'s.
    Capped at 1: a fit faster than the peak (a cache serving the weights) is no evidence of
    more."""
    base = default or Efficiency()

    def ratio(ideal_s: float, fitted_s: float, fallback: float) -> float:
        return min(ideal_s / fitted_s, 1.0) if fitted_s > 0 and ideal_s > 0 else fallback

    return Efficiency(
        compute=ratio(work.flops_per_token / hw.flops, fitted.per_token_s, base.compute),
        memory=ratio(work.weight_bytes / hw.memory_bytes_s, fitted.memory_s, base.memory),
        attention=ratio(
            work.kv_bytes_per_context_token / hw.memory_bytes_s,
            fitted.per_context_token_s,
            base.attention,
        ),
        link=base.link,  # one deployment's steps cannot tell the link apart (tp is fixed)
        overhead_s=fitted.base_s,
    )


def transfer(
    fitted: RooflineCost, measured_on: Deployment, to: Deployment, catalog: Catalog
) -> RooflineCost:
    """`fitted` (a roofline of `measured_on`'s steps) carried to deployment `to`: the same
    efficiencies against `to`'s work and hardware."""
    eff = efficiency_from(fitted, step_work(measured_on, catalog), hardware(measured_on, catalog))
    return step_cost(step_work(to, catalog), hardware(to, catalog), eff)


def carry(cost: CostModel, source: RooflineCost, target: RooflineCost) -> CostModel:
    """A cost measured on the deployment `source` prices, carried to the one `target` prices
    (both first-principles costs at the same efficiencies): each term scaled by the ratio of the
    rate it stands for (a step's fixed time: the weights' reads; a token's: compute; a context
    token's: KV reads, and attention's compute in a roofline), and tensor parallelism's
    all-reduce per token added or taken away. Carried to its own deployment it is unchanged."""
    compute = target.per_token_s / source.per_token_s
    weights = target.memory_s / source.memory_s
    kv = target.per_context_token_s / source.per_context_token_s
    attention = target.compute_per_context_token_s / source.compute_per_context_token_s
    link = target.per_token_comm_s - source.per_token_comm_s

    def per_token(seconds: float) -> float:
        return max(seconds * compute + link, 0.0)

    if isinstance(cost, StepCost):
        return StepCost(
            cost.base_s * weights,
            per_token(cost.per_decode_seq_s),
            per_token(cost.per_prefill_token_s),
            cost.per_context_token_s * kv,
        )
    if isinstance(cost, DecodeTableCost):
        # a decode step of b sequences: its time at batch 0 is the weights', the rest per token
        fixed = max(cost.decode_s(0), 0.0)
        steps = tuple(
            max(fixed * weights + (s - fixed) * compute + link * b, 0.0)
            for b, s in zip(cost.batch, cost.step_s, strict=True)
        )
        return DecodeTableCost(
            cost.batch, steps, per_token(cost.per_prefill_token_s), cost.per_context_token_s * kv
        )
    return RooflineCost(
        cost.base_s,
        cost.per_token_s * compute,
        cost.memory_s * weights,
        cost.per_context_token_s * kv,
        cost.compute_per_context_token_s * attention,
        max(cost.per_token_comm_s + link, 0.0),
    )
