"""Planned tokens to served tokens, learned from a server's `usage`.

The plan sizes prompts and answers in tokens, but a server counts with its own tokenizer and
chat template, and may end an answer before max_tokens. The map learned from measured runs,
served prompt = intercept + slope x planned (least squares) and served output = planned x a
ratio drawn from those measured, turns a plan into what that server would serve before the
simulator sees it.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord

KEPT_RATIOS = 101  # output ratios kept, as quantiles of the measured ones
_NAMES = [f.name for f in dataclasses.fields(RequestSpec)]
_FIELDS = operator.attrgetter(*_NAMES)  # a spec's fields, in order (faster than replace)
_PROMPT, _MAX, _PREFIX = (_NAMES.index(n) for n in ("prompt_tokens", "max_tokens", "prefix"))
MIN_PAIRS = 5


@dataclass(frozen=True)
class TokenMap:
    prompt_intercept: float = 0.0
    prompt_slope: float = 1.0
    output_ratios: tuple[float, ...] = ()  # served / planned output, quantiles; () is 1.0
    pairs: int = 0  # requests learned from

    @property
    def identity(self) -> bool:
        same_prompt = self.prompt_intercept == 0.0 and self.prompt_slope == 1.0
        return same_prompt and all(r == 1.0 for r in self.output_ratios)

    @classmethod
    def learn(cls, records: Sequence[RequestRecord]) -> TokenMap:
        """From successful requests with both a plan and a server count; the identity when
        fewer than MIN_PAIRS have them."""
        rows = [
            (r.planned_prompt_tokens, r.prompt_tokens, r.planned_output_tokens, r.output_tokens)
            for r in records
            if r.status == "ok"
            and r.token_source == "usage"
            and r.planned_prompt_tokens
            and r.prompt_tokens
            and r.planned_output_tokens
            and r.output_tokens
        ]
        if len(rows) < MIN_PAIRS:
            return cls()
        planned_p, served_p, planned_o, served_o = np.asarray(rows, dtype=float).T
        if np.ptp(planned_p) > 0:
            slope, intercept = np.polyfit(planned_p, served_p, 1)
        else:
            slope, intercept = 1.0, float(np.mean(served_p - planned_p))
        ratios = np.clip(served_o / planned_o, 0.0, 1.0)
        kept = np.percentile(ratios, np.linspace(0, 100, KEPT_RATIOS))
        return cls(float(intercept), float(slope), tuple(float(r) for r in kept), len(rows))

    def apply(self, plan: Sequence[RequestSpec], seed: int = 0) -> list[RequestSpec]:
        """The plan as this server would serve it (deterministic for `seed`; `build_plan`
        with `served=` gives the same plan, built so at once)."""
        if self.identity:
            return list(plan)
        planned = np.fromiter((s.prompt_tokens for s in plan), np.int64, len(plan))
        outputs = np.fromiter((s.max_tokens for s in plan), np.int64, len(plan))
        prompts, answers = self.lengths(planned, outputs, seed)
        values = _FIELDS  # a spec's fields in order: one new spec from a list of them
        out = []
        for spec, prompt, answer in zip(plan, prompts.tolist(), answers.tolist(), strict=True):
            v = list(values(spec))
            v[_PROMPT], v[_MAX] = prompt, answer
            if spec.prefix:
                v[_PREFIX] = self.prefix(spec.prefix)
            out.append(RequestSpec(*v))
        return out

    def lengths(
        self, prompt: np.ndarray, output: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Planned prompt and output tokens, in plan order, as served (`scenarios.plan.
        Served`): the prompt by the fitted line, the output by a measured ratio drawn for each
        (deterministic for `seed`)."""
        if self.identity:
            return prompt, output
        drawn = np.random.default_rng(seed).choice(
            np.asarray(self.output_ratios or (1.0,)), size=len(prompt)
        )
        prompts = np.maximum(1, np.round(self.prompt_intercept + self.prompt_slope * prompt))
        answers = np.maximum(1, np.round(output * drawn))
        return prompts.astype(np.int64), answers.astype(np.int64)

    def prefix(self, segments: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        """A prompt's shared segments as served: each one's tokens by the fitted slope."""
        if not segments or self.identity:
            return segments
        return tuple((h, max(1, round(t * self.prompt_slope))) for h, t in segments)

    def describe(self) -> str:
        if self.identity:
            return "tokens: planned = served (no usage to learn from, or none needed)"
        ratios = np.asarray(self.output_ratios or (1.0,))
        return (
            f"tokens (from {self.pairs} requests' usage): served prompt = "
            f"{self.prompt_intercept:.1f} + {self.prompt_slope:.3f} x planned; served output = "
            f"planned x {np.mean(ratios):.2f} on average ({np.min(ratios):.2f}-1.00)"
        )
