"""Step-cost models: how long one engine step takes, given the shape of its batch.

A model is anything with `duration(decode_seqs, prefill_tokens, context_tokens)`; the two here are
linear. A table-based model (interpolating measured step times) can implement the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class StepCostModel(Protocol):
    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        """Seconds for a step that decodes `decode_seqs` sequences, prefills `prefill_tokens`
        tokens and attends over `context_tokens` KV tokens (the batch's context, summed)."""
        ...


@dataclass(frozen=True)
class StepCost:
    """Seconds one step takes: base + per_decode_seq * decoding + per_prefill_token * prompt."""

    base_s: float = 0.012
    per_decode_seq_s: float = 0.0004
    per_prefill_token_s: float = 0.00005

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        return (
            self.base_s
            + self.per_decode_seq_s * decode_seqs
            + self.per_prefill_token_s * prefill_tokens
        )


@dataclass(frozen=True)
class ContextStepCost:
    """The linear cost plus a term per KV token attended: attention reads every context token."""

    base_s: float = 0.012
    per_decode_seq_s: float = 0.0004
    per_prefill_token_s: float = 0.00005
    per_context_token_s: float = 0.0

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        return (
            self.base_s
            + self.per_decode_seq_s * decode_seqs
            + self.per_prefill_token_s * prefill_tokens
            + self.per_context_token_s * context_tokens
        )


# The models a config file can name; a new model joins this union and `cost_from_dict`.
CostModel = StepCost | ContextStepCost


def cost_from_dict(d: dict[str, Any]) -> CostModel:
    """The cost model a calibration or config file describes (told apart by its fields)."""
    if "per_context_token_s" in d:
        return ContextStepCost(**d)
    return StepCost(**d)
