"""Compile a scenario into the one list of RequestSpecs that both executors run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenarios.spec import Constant, Distribution, LogNormal, Normal, Retry, Scenario, Uniform
from scenarios.text import make_prompt


@dataclass(frozen=True, slots=True)
class RequestSpec:
    id: str
    arrival: float  # seconds from run start: the intended send time
    prompt_tokens: int
    max_tokens: int
    prompt: str | None = None  # None in plans made only for simulation
    persona: str = "default"
    session: int = 0
    turn: int = 0
    # (hash, tokens) segments the prompt begins with, in order: two requests whose chains start
    # alike share those prompt tokens byte for byte (trace hash_ids, shared system prompts,
    # a session's history). Engines with prefix caching may skip their prefill.
    prefix: tuple[tuple[int, int], ...] = ()
    # Sessions: a follow-up is sent `think_s` after the request `after` ended (its `arrival` is
    # then only the plan's estimate); one due later than `not_after` is not sent.
    after: str | None = None
    think_s: float = 0.0
    not_after: float | None = None
    regenerate: bool = False  # resend the previous turn's messages for a new answer
    patience_s: float | None = None  # the user cancels when no token came within it
    retry: Retry | None = None  # how the client retries a 429 or 5xx
    message_tokens: int = 0  # the new user message's tokens (0: the whole prompt)
    text_seed: int = 0  # seeds the prompt text when it is rendered at send time


def sample_lengths(dist: Distribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """Integer token lengths drawn from `dist`, clipped to its [min, max]."""
    if isinstance(dist, Constant):
        x = np.full(n, float(dist.value))
    elif isinstance(dist, Uniform):
        x = rng.integers(dist.low, dist.high + 1, size=n).astype(float)
    elif isinstance(dist, Normal):
        x = rng.normal(dist.mean, dist.std, size=n)
    elif isinstance(dist, LogNormal):
        x = dist.median * np.exp(rng.normal(0.0, dist.sigma, size=n))
    else:  # pragma: no cover - the schema admits no other kind
        raise TypeError(f"unknown distribution {dist!r}")
    hi = dist.max if dist.max is not None else np.inf
    return np.clip(np.rint(x), max(dist.min, 1), hi).astype(int)


def poisson_arrivals(rng: np.random.Generator, rate: float, duration_s: float) -> np.ndarray:
    """Arrival times of a Poisson process of `rate` per second on [0, duration_s)."""
    expected = rate * duration_s
    n_draw = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n_draw))
    while times[-1] < duration_s:  # practically never: 6 sigma of headroom
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n_draw))
        times = np.concatenate([times, more])
    return times[times < duration_s]


def build_plan(
    scenario: Scenario,
    *,
    seed: int | None = None,
    rate_scale: float = 1.0,
    duration_s: float | None = None,
    with_text: bool = True,
) -> list[RequestSpec]:
    """The scenario's requests in arrival order; deterministic for a given seed.

    Independent random streams feed arrivals, lengths and text, so scaling the rate does not
    reshuffle the length sequence.
    """
    seed = scenario.traffic.seed if seed is None else seed
    rng_arrival, rng_prompt, rng_output, rng_text = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    duration = scenario.traffic.duration_s if duration_s is None else duration_s
    arrivals = poisson_arrivals(rng_arrival, scenario.traffic.rate * rate_scale, duration)
    n = len(arrivals)
    prompt_lens = sample_lengths(scenario.workload.prompt_tokens, rng_prompt, n)
    output_lens = sample_lengths(scenario.workload.output_tokens, rng_output, n)
    return [
        RequestSpec(
            id=f"r{i:06d}",
            arrival=float(arrivals[i]),
            prompt_tokens=int(prompt_lens[i]),
            max_tokens=int(output_lens[i]),
            prompt=make_prompt(rng_text, int(prompt_lens[i])) if with_text else None,
            session=i,
        )
        for i in range(n)
    ]
