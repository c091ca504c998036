"""The engine model without a clock: a scheduler, a paged KV cache and a step-cost model.

One `Engine` is one replica. A driver (see `simulator.engine.drive`) repeatedly calls `plan_step()`,
waits `step.duration` on its own clock, then calls `complete_step(step)`. A sequence gains one
token in the step that computes its last uncomputed token: a prefill step emits a sequence's first
token, as vLLM's does (with chunked prefill, the step with the prompt's last chunk).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scenarios.spec import ReferenceTargetSpec
from simulator.engine.kvcache import BlockManager
from simulator.engine.scheduler import EngineSequence, Scheduler, SchedulerConfig, Step
from simulator.engine.stepcost import (
    CostModel,
    StepCost,
    StepCostModel,
    cost_from_dict,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineSequence",
    "Step",
    "StepCost",
    "engine_from_spec",
]


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32
    kv_cache_tokens: int = (
        65536  # KV capacity; the cache holds kv_cache_tokens // block_size blocks
    )
    max_batched_tokens: int = 8192  # tokens a step may compute, decodes included (>= max_num_seqs)
    cold_start_s: float = 0.0
    overhead_s: float = 0.0  # client-to-engine delay a simulated request adds before queueing
    cost: CostModel = field(default_factory=StepCost)
    block_size: int = 16
    enable_prefix_caching: bool = False
    enable_chunked_prefill: bool = True

    @property
    def num_blocks(self) -> int:
        return max(self.kv_cache_tokens // self.block_size, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineConfig:
        """Reads what `to_dict` wrote, older files (without the newer keys) included."""
        return cls(**{**d, "cost": cost_from_dict(d["cost"])})

    def with_cost(self, cost: CostModel, overhead_s: float | None = None) -> EngineConfig:
        return replace(
            self, cost=cost, overhead_s=self.overhead_s if overhead_s is None else overhead_s
        )


class Engine:
    """Continuous batching over a paged KV cache, priced by a step-cost model."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.kv = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                config.max_num_seqs, config.max_batched_tokens, config.enable_chunked_prefill
            ),
            self.kv,
        )
        self.waiting = self.scheduler.waiting
        self.running = self.scheduler.running
        self._cost: StepCostModel = config.cost
        self._capacity = self.kv.num_blocks * self.kv.block_size  # tokens

    @property
    def cost(self) -> StepCostModel:
        return self._cost

    @property
    def kv_used(self) -> int:
        """KV tokens the held blocks can store."""
        return self.kv.num_used * self.kv.block_size

    def fits_ever(self, seq: EngineSequence) -> bool:
        return seq.prompt_tokens + seq.max_tokens <= self._capacity

    def add(self, seq: EngineSequence) -> None:
        if not self.fits_ever(seq):
            cfg = self.config
            raise ValueError(
                f"request needs {seq.kv_tokens} KV tokens, capacity is {cfg.kv_cache_tokens} "
                f"({cfg.num_blocks} blocks of {cfg.block_size})"
            )
        self.scheduler.add(seq)

    def abort(self, seq: EngineSequence) -> None:
        """Drop a sequence (client went away or timed out), freeing its KV blocks."""
        self.scheduler.abort(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    def plan_step(self) -> Step:
        step = self.scheduler.schedule()
        step.duration = self._cost.duration(
            len(step.decode), step.prefill_tokens, step.context_tokens
        )
        return step

    def complete_step(self, step: Step) -> tuple[list[EngineSequence], list[EngineSequence]]:
        """Apply a step: (sequences that gained a token, those that reached max_tokens)."""
        return self.scheduler.update(step.prefill, step.decode)

    def complete(self, step: Step) -> list[EngineSequence]:
        """Apply a step; returns the sequences that reached max_tokens."""
        return self.complete_step(step)[1]


def engine_from_spec(spec: ReferenceTargetSpec) -> EngineConfig:
    """The EngineConfig a scenario's `reference_target` section describes (ms become s, each
    scaled by its slowdown)."""
    k = spec.slowdown / 1000.0
    return EngineConfig(
        max_num_seqs=spec.max_num_seqs,
        kv_cache_tokens=spec.kv_cache_tokens,
        max_batched_tokens=spec.max_batched_tokens,
        cold_start_s=spec.cold_start_s,
        cost=StepCost(
            spec.step.base_ms * k,
            spec.step.per_decode_seq_ms * k,
            spec.step.per_prefill_token_ms * k,
        ),
    )
