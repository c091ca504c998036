"""Request records of a long run on a known linear engine, generated step by step without a
simulator (vectorised: a million steps in seconds), for calibration at scale: one request
streams through every step, short ones come and go beside it.

Step s decodes every request that got its first token before s and has tokens left, prefills
the prompts of those admitted in s, and lasts base + per_decode_seq x decoding + per_prefill_token
x prompt tokens (+ a little noise). A request admitted in step s reached the engine at a uniform
point of step s - 1 and was sent `overhead_s` before; the client sees each token at its step's end
plus a small delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenarios.records import RequestRecord
from simulator.engine.core import StepCost

TRUE_COST = StepCost(base_s=0.018, per_decode_seq_s=0.0007, per_prefill_token_s=6e-5)
TRUE_OVERHEAD_S = 0.002


@dataclass(frozen=True)
class LongRun:
    steps: int  # engine steps; the long request gets a token in each
    cost: StepCost = TRUE_COST
    overhead_s: float = TRUE_OVERHEAD_S
    admit_per_step: float = 0.05  # short requests admitted per step, on average (Poisson)
    output_tokens: tuple[int, int] = (10, 80)  # a short request's tokens (uniform, inclusive)
    prompt_tokens: tuple[int, int] = (20, 400)
    step_noise_s: float = 0.0005  # sd of a step's time around the model
    client_noise_s: float = 0.0002  # sd of the delay before the client sees a token
    seed: int = 0


def long_run(run: LongRun) -> list[RequestRecord]:
    """The run's records: the long request first, then the short ones by admission."""
    rng = np.random.default_rng(run.seed)
    n = run.steps
    admitted = rng.poisson(run.admit_per_step, n)
    admitted[:2] = 0  # a short request's send time needs the two steps before its own
    admit = np.concatenate([[0], np.repeat(np.arange(n), admitted)])  # request -> first step
    lo, hi = run.output_tokens
    tokens = np.concatenate([[n], rng.integers(lo, hi + 1, len(admit) - 1)])
    tokens = np.minimum(tokens, n - admit)  # none runs past the last step
    prompts = rng.integers(run.prompt_tokens[0], run.prompt_tokens[1] + 1, len(admit))
    starts_decoding = np.zeros(n + 1)
    np.add.at(starts_decoding, admit + 1, 1)
    np.add.at(starts_decoding, admit + tokens, -1)
    decode = np.cumsum(starts_decoding)[:n]
    prefill = np.bincount(admit, weights=prompts, minlength=n)
    c = run.cost
    took = c.base_s + c.per_decode_seq_s * decode + c.per_prefill_token_s * prefill
    took = np.maximum(took + rng.normal(0.0, run.step_noise_s, n), 1e-4)
    end = 1.0 + np.cumsum(took)
    delay = np.abs(rng.normal(0.0, run.client_noise_s, int(tokens.sum())))
    first = np.concatenate([[0], np.cumsum(tokens)])  # each request's delays in `delay`
    reach = np.where(
        admit >= 2, end[admit - 2] + rng.uniform(0, 1, len(admit)) * took[admit - 1], 1.0
    )
    records = []
    for i, (a, k) in enumerate(zip(admit.tolist(), tokens.tolist(), strict=True)):
        times = (end[a : a + k] + delay[first[i] : first[i] + k]).tolist()
        records.append(
            RequestRecord(
                id=f"r{i}",
                intended_start=float(reach[i]) - run.overhead_s,
                start=float(reach[i]) - run.overhead_s,
                first_token=times[0],
                end=times[-1] + 0.0002,
                chunk_times=times,
                prompt_tokens=int(prompts[i]),
                output_tokens=k,
            )
        )
    return records
