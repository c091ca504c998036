"""Step-cost models: how long one engine step takes, given the shape of its batch.

A model is anything with `duration(decode_seqs, prefill_tokens, context_tokens)` and the three
methods for a run of pure-decode steps of one batch (its context growing by `decode_seqs` tokens a
step) that the simulator uses to jump over such runs. `StepCost` is linear (with a term per KV
token attended, or without); two can bend: `DecodeTableCost` interpolates step time over decode
batch size, `RooflineCost` takes the larger of a compute and a memory term.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, fields, replace
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


class _ContextCost(Protocol):
    @property
    def per_context_token_s(self) -> float: ...

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float: ...


class _ArithmeticRuns:
    """For models whose decode step grows by per_context_token_s x decode_seqs each step (the
    context grows by one token a sequence): a run's total and fit in closed form."""

    def run_s(self: _ContextCost, decode_seqs: int, context_tokens: int, n: int) -> float:
        first = self.duration(decode_seqs, 0, context_tokens)  # an arithmetic series
        return n * first + self.per_context_token_s * decode_seqs * n * (n - 1) / 2

    def steps_within(
        self: _ContextCost, decode_seqs: int, context_tokens: int, seconds: float
    ) -> int:
        first = self.duration(decode_seqs, 0, context_tokens)
        return _whole_steps(first, self.per_context_token_s * decode_seqs, seconds)


@dataclass(frozen=True)
class StepCost(_ArithmeticRuns):
    """Seconds one step takes, linear in its batch: base + per_decode_seq x decoding sequences
    + per_prefill_token x prompt tokens + per_context_token x KV tokens attended (attention reads
    every context token; 0 by default: the plain linear model)."""

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
        duration = self.duration
        return [duration(decode_seqs, 0, c) for c in _contexts(decode_seqs, context_tokens, n)]


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


@dataclass(frozen=True)
class DecodeTableCost(_ArithmeticRuns):
    """Step time by decode batch size, read off a table: piecewise linear between the measured
    batch sizes `batch`, linear beyond them with the end segment's slope (never falling), plus the
    per-prompt-token and per-context-token terms of the linear models."""

    batch: tuple[float, ...] = (1.0,)  # increasing decode batch sizes
    step_s: tuple[float, ...] = (0.012,)  # a decode step's time at each (context aside)
    per_prefill_token_s: float = 0.00005
    per_context_token_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.batch) != len(self.step_s) or not self.batch:
            raise ValueError("a step table needs as many times as batch sizes, at least one")
        if any(b >= c for b, c in zip(self.batch, self.batch[1:], strict=False)):
            raise ValueError(f"the table's batch sizes must increase: {self.batch}")

    def decode_s(self, decode_seqs: float) -> float:
        """The table's step time at `decode_seqs` (interpolated, or extrapolated)."""
        xs, ys = self.batch, self.step_s
        if len(xs) == 1:
            return ys[0]
        i = min(max(bisect_right(xs, decode_seqs) - 1, 0), len(xs) - 2)
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        if decode_seqs > xs[-1]:  # outside: from the end knot at the end segment's slope,
            i, slope = i + 1, max(slope, 0.0)  # never falling
        elif decode_seqs < xs[0]:
            slope = max(slope, 0.0)
        return max(ys[i] + slope * (decode_seqs - xs[i]), 0.0)

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        return (
            self.decode_s(decode_seqs)
            + self.per_prefill_token_s * prefill_tokens
            + self.per_context_token_s * context_tokens
        )

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        return [self.duration(decode_seqs, 0, c) for c in _contexts(decode_seqs, context_tokens, n)]


@dataclass(frozen=True)
class RooflineCost:
    """A step is bound by compute or by memory traffic, whichever takes longer, plus what is
    not overlapped with either (a fixed overhead, tensor parallelism's all-reduces):
      base + per_token_comm x tokens
           + max(per_token x tokens + compute_per_context_token x context,
                 memory + per_context_token x context)
    where tokens are those computed (decoded + prefilled) and context the KV tokens attended.
    Small decode batches are memory-bound (weights and KV cache read once a step); large batches
    and prefills are compute-bound. The last two terms are 0 in a roofline fitted from one
    deployment's steps; a deployment's first-principles cost (simulator.deploy.steptime) has
    them."""

    base_s: float = 0.002
    per_token_s: float = 0.0004
    memory_s: float = 0.01
    per_context_token_s: float = 0.0
    compute_per_context_token_s: float = 0.0
    per_token_comm_s: float = 0.0

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        tokens = decode_seqs + prefill_tokens
        compute = self.per_token_s * tokens + self.compute_per_context_token_s * context_tokens
        memory = self.memory_s + self.per_context_token_s * context_tokens
        return self.base_s + self.per_token_comm_s * tokens + max(compute, memory)

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        return [self.duration(decode_seqs, 0, c) for c in _contexts(decode_seqs, context_tokens, n)]

    def run_s(self, decode_seqs: int, context_tokens: int, n: int) -> float:
        """Both bounds grow linearly along the run (the context by decode_seqs a step), so the
        larger one changes at most once: two arithmetic series."""
        d = decode_seqs
        compute = self.per_token_s * d + self.compute_per_context_token_s * context_tokens
        memory = self.memory_s + self.per_context_token_s * context_tokens  # of the first step
        grow_c, grow_m = self.compute_per_context_token_s * d, self.per_context_token_s * d
        (a1, g1), (a2, g2) = sorted([(compute, grow_c), (memory, grow_m)], reverse=True)
        # the first step's larger bound stays the larger, or the other overtakes it at the
        # first step i with a2 + g2 i > a1 + g1 i
        overtaken = n if g1 >= g2 else math.floor((a1 - a2) / (g2 - g1)) + 1
        switch = min(n, overtaken)
        fixed = n * (self.base_s + self.per_token_comm_s * d)
        return fixed + _series(a1, g1, 0, switch) + _series(a2, g2, switch, n)

    def steps_within(self, decode_seqs: int, context_tokens: int, seconds: float) -> int:
        """The most n with run_s(n) <= seconds, by bisection (every step lasts at least the
        first, so n <= seconds / first)."""
        first = self.duration(decode_seqs, 0, context_tokens)
        if seconds < first:
            return 0
        if first <= 0:
            return 1 << 62
        lo, hi = 1, int(seconds / first) + 2  # run_s(lo) <= seconds < run_s(hi)
        while self.run_s(decode_seqs, context_tokens, hi) <= seconds:
            hi *= 2  # rounding of seconds / first
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.run_s(decode_seqs, context_tokens, mid) <= seconds:
                lo = mid
            else:
                hi = mid
        return lo


def _series(first: float, growth: float, start: int, stop: int) -> float:
    """The sum of first + growth x i over steps start <= i < stop."""
    if stop <= start:
        return 0.0
    return (stop - start) * first + growth * (stop * (stop - 1) - start * (start - 1)) / 2


def _contexts(decode_seqs: int, context_tokens: int, n: int) -> range | list[int]:
    """The context of each of `n` decode steps, growing by `decode_seqs` a step."""
    if not decode_seqs:  # no decoding sequence: the context stays, n steps all the same
        return [context_tokens] * n
    return range(context_tokens, context_tokens + n * decode_seqs, decode_seqs)


Fitted = StepCost | DecodeTableCost | RooflineCost  # what a calibration fits


@dataclass(frozen=True)
class TransferredCost:
    """A measured cost carried to a deployment not measured: each step as the measured model
    prices it, times the ratio of the two deployments' first-principles times for that step
    (`source`: the deployment measured, `target`: the other; see simulator.deploy.steptime).
    Carried to the deployment it was measured on, it is the measured cost unchanged."""

    measured: Fitted
    source: RooflineCost
    target: RooflineCost

    def duration(self, decode_seqs: int, prefill_tokens: int, context_tokens: int = 0) -> float:
        measured = self.measured.duration(decode_seqs, prefill_tokens, context_tokens)
        ideal = self.source.duration(decode_seqs, prefill_tokens, context_tokens)
        return measured * self.target.duration(decode_seqs, prefill_tokens, context_tokens) / ideal

    def decode_run(self, decode_seqs: int, context_tokens: int, n: int) -> list[float]:
        return [self.duration(decode_seqs, 0, c) for c in _contexts(decode_seqs, context_tokens, n)]

    def run_s(self, decode_seqs: int, context_tokens: int, n: int) -> float:
        return math.fsum(self.decode_run(decode_seqs, context_tokens, n))  # no closed form

    def steps_within(self, decode_seqs: int, context_tokens: int, seconds: float) -> int:
        first = self.duration(decode_seqs, 0, context_tokens)
        if first <= 0:
            return 1 << 62 if seconds >= 0 else 0
        n, total, context = 0, 0.0, context_tokens
        while True:  # steps never shrink along a decode run: at most seconds / first of them
            step = self.duration(decode_seqs, 0, context)
            if total + step > seconds:
                return n
            n, total, context = n + 1, total + step, context + decode_seqs


# The models a config file can name; a new model joins this union and `cost_from_dict`.
CostModel = Fitted | TransferredCost


def cost_from_dict(d: dict[str, Any]) -> CostModel:
    """The cost model a calibration or config file describes (told apart by its fields)."""
    if "step_s" in d:
        return DecodeTableCost(
            tuple(map(float, d["batch"])),
            tuple(map(float, d["step_s"])),
            float(d["per_prefill_token_s"]),
            float(d.get("per_context_token_s", 0.0)),
        )
    if "measured" in d:
        fitted = cost_from_dict(d["measured"])
        assert not isinstance(fitted, TransferredCost), "a transfer of a transfer"
        return TransferredCost(fitted, RooflineCost(**d["source"]), RooflineCost(**d["target"]))
    if "memory_s" in d:
        return RooflineCost(**d)
    return StepCost(**d)  # with or without a context term (files before it have none)


def scaled(cost: CostModel, factor: float) -> CostModel:
    """`cost` with every time (the fields in seconds) multiplied by `factor`."""
    if isinstance(cost, TransferredCost):
        measured = scaled(cost.measured, factor)
        assert not isinstance(measured, TransferredCost)
        return replace(cost, measured=measured)
    changes: dict[str, Any] = {}
    for f in fields(cost):
        v = getattr(cost, f.name)
        if f.name.endswith("_s"):
            changes[f.name] = tuple(x * factor for x in v) if isinstance(v, tuple) else v * factor
    return replace(cost, **changes)
