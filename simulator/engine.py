"""The engine model without a clock: continuous batching, KV-cache admission and step cost.

One `Engine` is one replica. A driver (SimPy process or asyncio task) repeatedly calls
`plan_step()`, waits `step.duration` on its own clock, then calls `complete(step)`. Every sequence
in a step gains one token: a prefill step emits a sequence's first token, as vLLM's does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scenarios.spec import ReferenceTarget


@dataclass(frozen=True)
class StepCost:
    """Seconds one step takes: base + per_decode_seq * decoding + per_prefill_token * prompt."""

    base_s: float = 0.012
    per_decode_seq_s: float = 0.0004
    per_prefill_token_s: float = 0.00005

    def duration(self, decode_seqs: int, prefill_tokens: int) -> float:
        return (
            self.base_s
            + self.per_decode_seq_s * decode_seqs
            + self.per_prefill_token_s * prefill_tokens
        )


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32
    kv_cache_tokens: int = 65536
    max_batched_tokens: int = 8192  # prompt tokens one step may prefill (at least one prompt)
    cold_start_s: float = 0.0
    overhead_s: float = 0.0  # client-to-engine delay a simulated request adds before queueing
    cost: StepCost = field(default_factory=StepCost)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineConfig:
        return cls(**{**d, "cost": StepCost(**d["cost"])})

    def with_cost(self, cost: StepCost, overhead_s: float | None = None) -> EngineConfig:
        return replace(
            self, cost=cost, overhead_s=self.overhead_s if overhead_s is None else overhead_s
        )


@dataclass(eq=False, slots=True)
class Sequence:
    id: str
    prompt_tokens: int
    max_tokens: int
    generated: int = 0

    @property
    def kv_tokens(self) -> int:
        """KV blocks reserved on admission: the prompt and every token it may generate."""
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class Step:
    prefill: tuple[Sequence, ...]
    decode: tuple[Sequence, ...]
    duration: float

    @property
    def sequences(self) -> tuple[Sequence, ...]:
        return self.prefill + self.decode


class Engine:
    """FIFO continuous batching with admission bounded by max_num_seqs and KV capacity."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_used = 0

    def fits_ever(self, seq: Sequence) -> bool:
        return seq.kv_tokens <= self.config.kv_cache_tokens

    def add(self, seq: Sequence) -> None:
        if not self.fits_ever(seq):
            raise ValueError(
                f"request needs {seq.kv_tokens} KV tokens, "
                f"capacity is {self.config.kv_cache_tokens}"
            )
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence (client went away), freeing its KV reservation."""
        if seq in self.running:
            self.running.remove(seq)
            self.kv_used -= seq.kv_tokens
        elif seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    def plan_step(self) -> Step:
        """Admit waiting sequences in order while they fit, and price the step."""
        cfg = self.config
        decode = tuple(self.running)
        prefill: list[Sequence] = []
        budget = cfg.max_batched_tokens
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            head = self.waiting[0]
            if self.kv_used + head.kv_tokens > cfg.kv_cache_tokens:
                break
            if prefill and head.prompt_tokens > budget:
                break
            self.waiting.popleft()
            self.running.append(head)
            self.kv_used += head.kv_tokens
            prefill.append(head)
            budget -= head.prompt_tokens
        prefill_tokens = sum(s.prompt_tokens for s in prefill)
        duration = cfg.cost.duration(len(decode), prefill_tokens)
        return Step(tuple(prefill), decode, duration)

    def complete(self, step: Step) -> list[Sequence]:
        """Each sequence in the step gains a token; returns those that reached max_tokens."""
        finished = []
        for seq in step.sequences:
            seq.generated += 1
            if seq.generated >= seq.max_tokens:
                finished.append(seq)
        for seq in finished:
            if seq in self.running:  # an aborted one is already gone
                self.running.remove(seq)
                self.kv_used -= seq.kv_tokens
        return finished


def engine_from_spec(spec: ReferenceTarget) -> EngineConfig:
    """The EngineConfig a scenario's `reference_target` section describes (ms become s)."""
    return EngineConfig(
        max_num_seqs=spec.max_num_seqs,
        kv_cache_tokens=spec.kv_cache_tokens,
        max_batched_tokens=spec.max_batched_tokens,
        cold_start_s=spec.cold_start_s,
        cost=StepCost(
            spec.step.base_ms / 1000.0,
            spec.step.per_decode_seq_ms / 1000.0,
            spec.step.per_prefill_token_ms / 1000.0,
        ),
    )
