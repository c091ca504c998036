"""A plan's session starts: every persona's arrivals in time order, with what a replayed
trace fixed for each (prompt and output tokens, prefix blocks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scenarios.spec import Arrival, Persona, Scenario
from scenarios.traces import TraceReplay, block_prefix


@dataclass(frozen=True)
class Openers:
    """Session starts in time order: when, for which persona, whether its user is a closed-loop
    one that keeps coming back, and what a replayed trace fixed for its first request
    (prompt and output tokens, -1 where it fixed none; prefix segments from its hash_ids)."""

    time: np.ndarray
    persona: np.ndarray
    closed: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    prefix: list[tuple[tuple[int, int], ...]]


def _arrivals(
    process: Arrival, rng: np.random.Generator, duration: float, rate_scale: float, base: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[tuple[int, int], ...]]]:
    """Times, trace prompt and output tokens (-1: none) and prefixes of one arrival process."""
    if not isinstance(process, TraceReplay):
        t = process.plan(rng, duration, rate_scale)
        none = np.full(len(t), -1)
        return t, none, none, [()] * len(t)
    tp = process.plan(rng, duration, rate_scale, base)
    n = len(tp.times)
    prompt = np.full(n, -1) if tp.prompt_tokens is None else np.maximum(tp.prompt_tokens, 1)
    output = np.full(n, -1) if tp.output_tokens is None else np.maximum(tp.output_tokens, 1)
    if tp.hash_ids is None:
        return tp.times, prompt, output, [()] * n
    prefix = [
        block_prefix(h, int(p), process.block_tokens)
        for h, p in zip(tp.hash_ids, prompt.tolist(), strict=True)
    ]
    return tp.times, prompt, output, prefix


def draw_openers(
    mix: list[Persona],
    scenario: Scenario,
    seeds: list[np.random.SeedSequence],
    duration: float,
    rate_scale: float,
) -> Openers:
    """Session starts of every persona: its own arrival process (from seeds[2 + i]), or a
    weighted share of the scenario's (seeds[0]), split by independent draws (seeds[1])."""
    base = scenario.base_dir
    parts: list[tuple[np.ndarray, ...]] = []
    prefixes: list[tuple[tuple[int, int], ...]] = []
    sharers = [i for i, p in enumerate(mix) if p.arrival is None]
    if sharers:
        shared = scenario.traffic.process
        t, prompt, output, prefix = _arrivals(
            shared, np.random.default_rng(seeds[0]), duration, rate_scale, base
        )
        weights = np.array([mix[i].weight for i in sharers])
        pick = np.random.default_rng(seeds[1]).choice(
            len(sharers), len(t), p=weights / weights.sum()
        )
        parts.append((t, np.asarray(sharers)[pick], np.full(len(t), shared.closed), prompt, output))
        prefixes += prefix
    for i, p in enumerate(mix):
        if p.arrival is not None:
            rng = np.random.default_rng(seeds[2 + i])
            t, prompt, output, prefix = _arrivals(p.arrival, rng, duration, rate_scale, base)
            parts.append((t, np.full(len(t), i), np.full(len(t), p.arrival.closed), prompt, output))
            prefixes += prefix
    time, persona, closed, prompt, output = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((persona.astype(int), time))
    return Openers(
        time[order],
        persona.astype(int)[order],
        closed.astype(bool)[order],
        prompt.astype(int)[order],
        output.astype(int)[order],
        [prefixes[i] for i in order.tolist()],
    )
