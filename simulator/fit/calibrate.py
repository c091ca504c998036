"""Fit the engine's step cost and request overhead from black-box request records.

Every running sequence gets one token per engine step, so the chunk times of all requests cluster
at step boundaries. Between two consecutive boundaries where some request got a token at both, the
engine was busy the whole time, so the gap is one step:

    gap = base + per_decode_seq * decoding + per_prefill_token * prompt_tokens_prefilled

A robust, non-negative least-squares fit (scipy) of those gaps gives the linear step cost; a model
that can bend (a table by batch size, a roofline) replaces it where it predicts held-out steps
clearly better (`simulator.fit.costfit`). The overhead
(send to engine: network, parsing, tokenizing) is the median of per-request estimates: requests
that arrived to an idle engine (ttft - prefill step) and requests that arrived mid-step (see
`_overhead_samples`). Batch limits (max_num_seqs, KV capacity) cannot be seen from below
saturation; they come from the caller.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scenarios.records import RequestRecord
from simulator.engine.core import EngineConfig, StepCost
from simulator.engine.stepcost import (
    CostModel,
    DecodeTableCost,
    scaled,
)
from simulator.fit.chunkfit import chunk_rows, several_per_chunk
from simulator.fit.costfit import Candidate, Selection, StepRows, predict, robust_lstsq, select
from simulator.fit.tokenmap import TokenMap

PARAMS = ("overhead_s", "base_s", "per_decode_seq_s", "per_prefill_token_s")


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Fit:
    values: np.ndarray  # in the order of PARAMS
    covariance: np.ndarray
    step_rows: int
    overhead_rows: int
    r2: float
    rmse_s: float
    # per-step residuals (measured - fitted, seconds) at RESIDUAL_LEVELS (older files: 101
    # levels, 0-100%): the scatter of one step, and of one inter-token gap, around the model
    residual_quantiles_s: tuple[float, ...] = ()
    # the model chosen by held-out error where it is not the linear one `values` describe
    model: CostModel | None = None
    chosen: str = "linear"
    candidates: tuple[Candidate, ...] = ()  # each candidate model's held-out error
    typical_step: tuple[float, float] = (0.0, 0.0)  # mean decoding sequences, prompt tokens
    # timed rows the run had (step_rows: those fitted; fewer where they were thinned)
    rows_seen: int = 0

    def stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    def linear(self) -> StepCost:
        _, base, per_seq, per_token = self.values
        return StepCost(float(base), float(per_seq), float(per_token))

    def cost(self) -> CostModel:
        return self.linear() if self.model is None else self.model

    def sample_costs(self, rng: np.random.Generator, n: int) -> list[tuple[CostModel, float]]:
        """Parameter sets drawn from the fit's uncertainty (truncated at zero), for error bars:
        a chosen model other than the linear one is scaled as the drawn linear model's time for
        a typical step is."""
        draws = rng.multivariate_normal(self.values, self.covariance, size=n, method="svd")
        draws = np.clip(draws, 0.0, None)
        out: list[tuple[CostModel, float]] = []
        typical = self.linear().duration(*map(round, self.typical_step))
        for d in draws:
            linear = StepCost(*map(float, d[1:]))
            if self.model is None or typical <= 0:
                out.append((linear, float(d[0])))
            else:
                factor = linear.duration(*map(round, self.typical_step)) / typical
                out.append((scaled(self.model, factor), float(d[0])))
        return out


MIN_STEPS = 50  # timed engine steps: fewer say little about the step cost
MIN_R2 = 0.3
MAX_RELATIVE_RMS = 0.4  # residual RMS over a typical step's time


def fit_problems(fit: Fit) -> list[str]:
    """Why a fit is unusable for forecasting; empty when it can be used. A low R^2 alone is
    not one: where every step is alike (one slot, steady load) there is little variance to
    explain, and the fit is only as good as its residuals are small."""
    problems = []
    if fit.step_rows < MIN_STEPS:
        problems.append(
            f"only {fit.step_rows} engine steps were timed (at least {MIN_STEPS} needed): run "
            "longer, or at a higher rate"
        )
    typical = fit.cost().duration(*map(round, fit.typical_step))
    relative = fit.rmse_s / typical if typical > 0 else math.inf
    if fit.r2 < MIN_R2 and relative > MAX_RELATIVE_RMS:
        problems.append(
            f"the step-cost model explains little: R^2 {fit.r2:.2f} (< {MIN_R2}) with residuals "
            f"of {relative:.0%} of a typical step (> {MAX_RELATIVE_RMS:.0%}): the step times "
            "are mostly noise (a busy machine, too short a run, steps not recovered)"
        )
    return problems


@dataclass(frozen=True)
class Calibration:
    engine: EngineConfig
    fit: Fit
    notes: list[str] = field(default_factory=list)
    drift: float = 0.0  # run-to-run spread of mean step time (relative sd) between the runs
    tokens: TokenMap = field(default_factory=TokenMap)  # planned -> served tokens
    runs: list[str] = field(default_factory=list)  # ids of the runs it was fitted on
    # requests/s the target served at most in a sweep (one replica, the sweep's workload): a
    # forecast never loads a replica beyond it, whatever the model's saturation says
    measured_capacity: float | None = None


@dataclass(frozen=True)
class _Steps:
    """Engine steps recovered from chunk times: step i ends at `end[i]`."""

    end: np.ndarray
    decode: np.ndarray  # sequences that got a non-first token in the step
    prefill_tokens: np.ndarray  # prompt tokens of sequences that got their first token
    context: np.ndarray  # KV tokens attended (prompt + tokens before), summed over requests
    busy: np.ndarray  # True: step i began when step i-1 ended (some request spans both)
    first_step: dict[int, int]  # request index -> step of its first token

    @property
    def seqs(self) -> np.ndarray:
        """Sequences that got a token in each step."""
        return self.decode + np.bincount(list(self.first_step.values()), minlength=len(self.end))


def recover_steps(records: Sequence[RequestRecord]) -> _Steps:
    """Linear in the chunks (bar one sort): every chunk's step, then each step's sums."""
    sizes = np.array([len(r.chunk_times) for r in records])
    total = int(sizes.sum())
    t = np.fromiter(itertools.chain.from_iterable(r.chunk_times for r in records), float, total)
    owner = np.repeat(np.arange(len(records)), sizes)
    pos = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # index in its record
    later = pos[1:] > 0  # a chunk's gap since the one before of its own request
    tol = 0.3 * float(np.median(np.diff(t)[later]))  # a step's chunks arrive within this
    order = np.argsort(t, kind="stable")
    step_sorted = np.concatenate([[0], np.cumsum(np.diff(t[order]) > tol)])
    n = int(step_sorted[-1]) + 1
    end = np.full(n, np.inf)
    np.minimum.at(end, step_sorted, t[order])  # earliest arrival of each step's chunks
    step = np.empty(total, dtype=np.int64)
    step[order] = step_sorted  # each chunk's step, in record order
    prompts = np.array([r.prompt_tokens or 0 for r in records], dtype=float)
    starts = np.array([r.start for r in records])
    context = np.bincount(step, weights=prompts[owner] + pos, minlength=n)
    first = pos == 0
    s0, o0 = step[first], owner[first]
    prefill = np.bincount(s0, weights=prompts[o0], minlength=n)
    # sent before the step before last began: it waited in the queue, so its prefill step
    # began as the step before ended (a one-slot server's steps are all like this)
    queued = (s0 >= 2) & (starts[o0] < end[np.maximum(s0 - 2, 0)])
    s, prev = step[~first], np.roll(step, 1)[~first]  # a later chunk's step, and the one before
    decode = np.bincount(s, minlength=n).astype(float)
    busy = np.bincount(s0[queued], minlength=n) + np.bincount(s[prev == s - 1], minlength=n) > 0
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total)
    firsts = np.argsort(rank[first])  # requests in the order their first tokens came
    first_step = dict(zip(o0[firsts].tolist(), s0[firsts].tolist(), strict=True))
    return _Steps(end, decode, prefill, context, busy, first_step)


def _overhead_samples(
    records: Sequence[RequestRecord], steps: _Steps, max_num_seqs: int | None
) -> np.ndarray:
    """Send-to-engine delay of requests that arrived while the engine was busy with a free slot.

    Such a request is prefilled in the step that begins right after it reaches the engine, and
    it reaches the engine at a uniform point of the step before: overhead = (start of its
    prefill step) - (send time) - (length of the step before) / 2, on average. A request that
    may have waited for a slot (the step before had every slot taken) is left out.
    """
    out = []
    limit = max_num_seqs or np.inf
    seqs = steps.seqs  # once: it counts over every step
    for i, s in steps.first_step.items():
        if s >= 2 and steps.busy[s] and steps.busy[s - 1] and seqs[s - 1] < limit:
            before = steps.end[s - 1] - steps.end[s - 2]
            out.append(steps.end[s - 1] - records[i].start - before / 2)
    return np.asarray(out)


def _idle_requests(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Requests that found nothing in flight from their send to their first token."""
    spans = sorted((r.start, r.end or r.start) for r in records)
    starts = np.array([s for s, _ in spans])
    ends = np.maximum.accumulate(np.array([e for _, e in spans]))
    idle = []
    for r in records:
        i = int(np.searchsorted(starts, r.start, side="left"))
        j = int(np.searchsorted(starts, r.first_token or 0.0, side="left"))
        if not (i > 0 and ends[i - 1] > r.start) and j <= i + 1:
            idle.append(r)
    return idle


def _prefill_from_idle(idle: Sequence[RequestRecord]) -> tuple[float, float]:
    """Seconds per prompt token (and its variance) from requests served alone: their TTFT is
    overhead + one prefill step, base + per-token x prompt, so the slope over prompt length is
    the per-token cost. (0, 0) when the prompts do not vary."""
    prompts = np.array([r.prompt_tokens or 0 for r in idle], dtype=float)
    if len(idle) < 5 or np.ptp(prompts) == 0:
        return 0.0, 0.0
    ttft = np.array([(r.first_token or 0.0) - r.start for r in idle])
    x = np.column_stack([np.ones(len(idle)), prompts])
    beta, keep = robust_lstsq(x, ttft)
    resid = ttft[keep] - x[keep] @ beta
    sigma2 = float(resid @ resid) / max(int(keep.sum()) - 2, 1)
    return float(beta[1]), float(sigma2 * np.linalg.pinv(x[keep].T @ x[keep])[1, 1])


def per_token(r: RequestRecord) -> RequestRecord:
    """`r` with a time for every token: a chunk of k tokens (a server that batches its stream
    output) becomes k tokens spaced evenly since the chunk before; a first chunk of k tokens
    is spread back at the next chunk's spacing. Records of one token per chunk are returned
    as they are."""
    sizes = r.chunk_tokens
    if not sizes or len(sizes) != len(r.chunk_times) or max(sizes) <= 1:
        return r
    times = np.asarray(r.chunk_times, dtype=float)
    k = np.asarray(sizes, dtype=int).clip(1, None)
    if len(times) < 2:
        out = [float(times[0])]
    else:
        gaps = np.diff(times) / k[1:]
        spacing = np.repeat(np.concatenate([gaps[:1], gaps]), k)  # each token's chunk's gap
        before = np.repeat(np.cumsum(k), k) - 1 - np.arange(int(k.sum()))  # after it, in its chunk
        out = (np.repeat(times, k) - spacing * before).tolist()
    return dataclasses.replace(r, chunk_times=out, first_token=out[0], chunk_tokens=None)


def streamed(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Successful streamed requests, with a time for every token."""
    return [
        per_token(r)
        for r in records
        if r.status == "ok" and r.chunk_times and r.first_token is not None
    ]


STREAMED_ONLY = (
    "calibration needs streamed responses (rerun with streaming on: target.stream: true); "
    "no successful request timed two or more chunks"
)


def fit_step_cost(records: Sequence[RequestRecord], max_num_seqs: int | None = None) -> Fit:
    """The step cost and request overhead the records show (see the module docstring)."""
    ok = streamed(records)
    if not any(len(r.chunk_times) > 1 for r in ok):
        raise CalibrationError(STREAMED_ONLY)
    x, y, steps, context = _step_rows(records, ok)
    rows_seen = len(y)
    fitted = thinned(x[:, 2] > 0, MAX_STEP_ROWS)
    x, y = x[fitted], y[fitted]
    context = None if context is None else context[fitted]
    linear = _fit_linear(x, y)
    cost, cov, keep = linear.cost, linear.cov, linear.keep
    per_step, resid = linear.per_step, linear.resid
    idle = _idle_requests(ok)
    if not linear.identifiable[2]:  # no step with a prefill was timed: learn it from idle TTFTs
        cost[2], cov[3, 3] = _prefill_from_idle(idle)
    rows_ = StepRows(x[:, 0], x[:, 1], x[:, 2], context, y)
    selection = select(rows_)
    model = _bent(selection, None if linear.identifiable[2] else float(cost[2]))
    if model is not None:  # the residuals of the chosen model
        per_step = (y - predict(model, rows_)) / x[:, 0]
        resid = per_step[keep] * x[keep, 0]
    priced = StepCost(*map(float, cost)) if model is None else model
    idle_overheads = [  # an idle request's prefill step attends over its own prompt
        (r.first_token or 0.0) - r.start - priced.duration(0, p, p)
        for r in idle
        for p in [r.prompt_tokens or 0]
    ]
    queued_free = _overhead_samples(ok, steps, max_num_seqs) if steps else np.empty(0)
    overheads = np.concatenate([queued_free, idle_overheads])
    overhead, cov[0, 0] = _overhead(overheads)
    kept = y[keep]
    ss_tot = float(((kept - kept.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return Fit(
        np.concatenate([[overhead], cost]),
        cov,
        len(y),
        len(overheads),
        r2,
        float(np.sqrt(np.mean(resid**2))),
        tuple(float(q) for q in np.percentile(_noise(per_step, x), RESIDUAL_LEVELS)),
        model,
        selection.name,
        selection.candidates,
        linear.typical,
        rows_seen,
    )


MAX_STEP_ROWS = 10_000  # more timed rows than this: the fit takes a spread subsample of them
THIN_BLOCK = 50  # rows are taken in blocks of this many consecutive ones (the folds need runs)
MIN_KIND_ROWS = 200  # prefill rows, and decode-only rows, a subsample keeps (or all there are)


def thinned(prefill: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """The rows to fit (sorted indices): all up to `cap`; beyond, about `cap` in blocks of
    THIN_BLOCK consecutive rows spread evenly over the run (a seeded systematic sample), plus
    evenly spread rows of a kind (`prefill` True: a step with a prompt; False: decode only) the
    blocks left with under MIN_KIND_ROWS, so both kinds stay represented. The fit's time and
    memory are then bounded whatever the run's length."""
    n = len(prefill)
    if n <= cap:
        return np.arange(n)
    blocks = -(-n // THIN_BLOCK)
    want = max(cap // THIN_BLOCK, 1)
    offset = np.random.default_rng(seed).uniform()
    chosen = np.floor((np.arange(want) + offset) * blocks / want).astype(np.int64)
    keep = np.zeros(n, dtype=bool)
    keep[(chosen[:, None] * THIN_BLOCK + np.arange(THIN_BLOCK)).ravel().clip(None, n - 1)] = True
    for kind in (prefill, ~prefill):
        short = min(int(kind.sum()), MIN_KIND_ROWS) - int((keep & kind).sum())
        if short > 0:
            spare = np.flatnonzero(kind & ~keep)
            keep[spare[np.linspace(0, len(spare) - 1, short).round().astype(np.int64)]] = True
    return np.flatnonzero(keep)


def _step_rows(
    records: Sequence[RequestRecord], ok: Sequence[RequestRecord]
) -> tuple[np.ndarray, np.ndarray, _Steps | None, np.ndarray | None]:
    """The rows to fit: x (steps in the row, decoding sequences, prefill tokens), y (seconds),
    the recovered steps and their context tokens where each step is seen. A server that
    merges steps into chunks gives chunk intervals instead (its steps are unseen)."""
    steps = None
    context = None
    if several_per_chunk(records):
        x, y = chunk_rows([r for r in records if r.status == "ok" and r.chunk_times])
    elif sum(len(r.chunk_times) for r in ok) >= 3:
        steps = recover_steps(ok)
        rows = np.flatnonzero(steps.busy)
        x = np.column_stack([np.ones(len(rows)), steps.decode[rows], steps.prefill_tokens[rows]])
        y = steps.end[rows] - steps.end[rows - 1]
        context = steps.context[rows]
    else:
        x, y = np.empty((0, 3)), np.empty(0)
    if len(y) < 8:
        raise CalibrationError(
            f"only {len(y)} usable engine steps in {len(ok)} successful streamed requests: "
            "calibration needs streamed responses with several tokens each and some concurrency"
        )
    return x, y, steps, context


@dataclass(frozen=True)
class _LinearFit:
    """The linear step cost, robustly fitted: terms no row varies are left at 0."""

    identifiable: np.ndarray  # which of base, per decoding sequence, per prefill token
    keep: np.ndarray  # the rows that are not outliers
    cost: np.ndarray  # base, per decoding sequence, per prefill token (seconds)
    cov: np.ndarray  # over PARAMS; the overhead's variance is left to fill
    per_step: np.ndarray  # every row's residual per step (outliers too)
    resid: np.ndarray  # the kept rows' residuals
    typical: tuple[float, float]  # mean decoding sequences and prefill tokens per kept step


def _fit_linear(x: np.ndarray, y: np.ndarray) -> _LinearFit:
    identifiable = np.ptp(x, axis=0) > 0
    identifiable[0] = True  # the intercept (base) is always fitted
    xs = x[:, identifiable]
    beta, keep = robust_lstsq(xs, y, x[:, 2] > 0)  # prefill steps judged apart
    per_step = (y - xs @ beta) / x[:, 0]  # every row, outliers too: x[:, 0] steps in a row
    resid = y[keep] - xs[keep] @ beta
    sigma2 = float(resid @ resid) / max(int(keep.sum()) - xs.shape[1], 1)
    cost = np.zeros(3)
    cost[identifiable] = beta
    cov = np.zeros((len(PARAMS), len(PARAMS)))
    idx = 1 + np.flatnonzero(identifiable)
    cov[np.ix_(idx, idx)] = sigma2 * np.linalg.pinv(xs[keep].T @ xs[keep])
    typical = (float(np.mean(x[keep, 1] / x[keep, 0])), float(np.mean(x[keep, 2] / x[keep, 0])))
    return _LinearFit(identifiable, keep, cost, cov, per_step, resid, typical)


def _overhead(samples: np.ndarray) -> tuple[float, float]:
    """The request overhead: the mean of the samples that are not outliers (0 without any, never
    negative), and its variance (0 with under two kept)."""
    if not len(samples):
        return 0.0, 0.0
    mean, kept = robust_lstsq(np.ones((len(samples), 1)), samples)
    variance = float(np.var(samples[kept], ddof=1)) / int(kept.sum()) if kept.sum() > 1 else 0.0
    return max(float(mean[0]), 0.0), variance


def _noise(per_step: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The residuals a simulated inter-token gap draws its scatter from: those of decode-only
    steps, where there are enough (most gaps are such steps; a prompt's step scatters far
    more, and would put its tail on every gap)."""
    decode_only = x[:, 2] == 0
    return per_step[decode_only] if decode_only.sum() >= 20 else per_step


def _bent(selection: Selection, per_prefill_token_s: float | None) -> CostModel | None:
    """The chosen model where it is not the linear one; `per_prefill_token_s`: the prompt cost
    learnt from idle requests, where no timed step had a prefill."""
    model = selection.model
    if selection.name == "linear":
        return None
    if per_prefill_token_s is not None and isinstance(model, StepCost | DecodeTableCost):
        return dataclasses.replace(model, per_prefill_token_s=per_prefill_token_s)
    return model


# Levels (%) the step residuals are kept at: every percent, and every 0.1% within each outer
# percent. Noise is drawn by interpolating between levels, so a hiccup seen once in thousands
# of steps must sit in a level of its own: with only 99% and 100%, one 500 ms outlier spread
# over the top percent of draws and lifted the predicted ITL p99 by a third.
RESIDUAL_LEVELS = np.unique(
    np.round(
        np.concatenate([np.linspace(0, 1, 11), np.linspace(0, 100, 101), np.linspace(99, 100, 11)]),
        6,
    )
)


def draw_residuals(quantiles: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` draws from the distribution the stored residual quantiles describe (at
    RESIDUAL_LEVELS, or an older file's even 0-100% grid), linear between levels."""
    levels = RESIDUAL_LEVELS if len(quantiles) == len(RESIDUAL_LEVELS) else None
    if levels is None:
        levels = np.linspace(0, 100, len(quantiles))
    return np.interp(rng.uniform(0, 100, n), levels, quantiles)


def calibrate(records: Sequence[RequestRecord], limits: EngineConfig) -> Calibration:
    """Fitted step cost and overhead on top of `limits` (max_num_seqs, KV capacity, cold start)."""
    fit = fit_step_cost(records, limits.max_num_seqs)
    notes = []
    if fit.rows_seen > fit.step_rows:
        notes.append(
            f"the step cost was fitted on {fit.step_rows} of the run's {fit.rows_seen} timed "
            "steps (blocks of consecutive steps spread evenly over it, steps with and without "
            "a prompt both kept): a long run is thinned so calibration stays bounded"
        )
    if fit.overhead_rows == 0:
        notes.append("no request showed its prefill step: overhead_s not identifiable, set to 0")
    names = ("overhead", "base", "per decode sequence", "per prefill token")
    for name, v, s in zip(names, fit.values, fit.stderr(), strict=True):
        if v > 0 and s > v:
            notes.append(f"{name} cost is poorly determined ({v:.3g} +- {s:.3g} s)")
    engine = limits.with_cost(fit.cost(), overhead_s=float(fit.values[0]))
    return Calibration(engine, fit, notes, tokens=TokenMap.learn(records))
