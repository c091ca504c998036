"""Step-cost models: how long one engine step takes, given the shape of its batch.

A model is anything with `duration(decode_seqs, prefill_tokens, context_tokens)` and the three
methods for a run of pure-decode steps of one batch (its context growing by `decode_seqs` tokens a
step) that the simulator uses to jump over such runs; the two here are linear. A table-based model
(interpolating measured step times) can implement the same protocol (`decode_run` from `duration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


class StepCostModel(Protocol):
    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        """Seconds for a step that decodes `decode_seqs` sequences, prefills `prefill_tokens`
        tokens and attends over `context_tokens` KV tokens (the batch's context, summed)."""
        ...

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        """The durations of `n` pure-decode steps, each exactly as `duration` gives it, the first
        attending over `context_tokens`, each next one over `decode_seqs` more."""
        ...

    def run_s(self, decode_seqs: int, context_tokens: int, n: int) -> float:
        """Their total, in closed form (equal to summing `decode_run` up to rounding)."""
        ...

    def steps_within(self, decode_seqs: int, context_tokens: int, seconds: float) -> int:
        """How many whole steps of such a run fit in `seconds` (in closed form)."""
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

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        return [self.duration(decode_seqs, 0)] * n

    def run_s(self, decode_seqs: int, context_tokens: int, n: int) -> float:
        return n * self.duration(decode_seqs, 0)

    def steps_within(self, decode_seqs: int, context_tokens: int, seconds: float) -> int:
        return _whole_steps(self.duration(decode_seqs, 0), 0.0, seconds)


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

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        if not self.per_context_token_s:
            return [self.duration(decode_seqs, 0, context_tokens)] * n
        last = context_tokens + n * decode_seqs
        step = decode_seqs or 1  # no decoding sequence: the context stays, n steps all the same
        contexts = range(context_tokens, last, step) if decode_seqs else [context_tokens] * n
        duration = self.duration
        return [duration(decode_seqs, 0, c) for c in contexts]

    def run_s(self, decode_seqs: int, context_tokens: int, n: int) -> float:
        first = self.duration(decode_seqs, 0, context_tokens)  # an arithmetic series
        return n * first + self.per_context_token_s * decode_seqs * n * (n - 1) / 2

    def steps_within(self, decode_seqs: int, context_tokens: int, seconds: float) -> int:
        first = self.duration(decode_seqs, 0, context_tokens)
        return _whole_steps(first, self.per_context_token_s * decode_seqs, seconds)


def _whole_steps(first: float, growth: float, seconds: float) -> int:
    """The most whole steps n with n * first + growth * n (n - 1) / 2 <= seconds."""
    if seconds < first or first <= 0:
        return 0 if seconds < first else 1 << 62
    if growth <= 0:
        n = int(seconds / first)
    else:  # the positive root of growth/2 n^2 + (first - growth/2) n - seconds = 0
        b = first - growth / 2
        n = int((-b + math.sqrt(b * b + 2 * growth * seconds)) / growth)

    def total(k: int) -> float:
        return k * first + growth * k * (k - 1) / 2

    while n > 0 and total(n) > seconds:  # correct the root's rounding
        n -= 1
    while total(n + 1) <= seconds:
        n += 1
    return n


# The models a config file can name; a new model joins this union and `cost_from_dict`.
CostModel = StepCost | ContextStepCost


def cost_from_dict(d: dict[str, Any]) -> CostModel:
    """The cost model a calibration or config file describes (told apart by its fields)."""
    if "per_context_token_s" in d:
        return ContextStepCost(**d)
    return StepCost(**d)
