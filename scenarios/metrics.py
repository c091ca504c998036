"""Metric definitions (named as `vllm bench serve` names them), run summaries and SLO checks.

ttft: start to the first chunk with content; itl: every gap between content chunks;
tpot: (e2e - ttft) / (output_tokens - 1); e2e: start to the last byte. `*_intended` variants
measure from the intended start, correcting for coordinated omission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from scenarios.records import DROPPED, RequestRecord
from scenarios.slo import Threshold
from scenarios.table import STATUSES, RequestTable

if TYPE_CHECKING:
    from scenarios.spec import Scenario

LATENCY_METRICS = ("ttft", "itl", "tpot", "e2e")
_REDUCERS: dict[str, Callable[[np.ndarray], Any]] = {
    "avg": np.mean,
    "med": np.median,
    "min": np.min,
    "max": np.max,
}
QUANTILES = (50, 90, 95, 99)


def metric_samples(records: Sequence[RequestRecord], metric: str) -> np.ndarray:
    """Samples in seconds of one metric over successful requests."""
    return RequestTable.of(records).samples(metric)


@dataclass(frozen=True)
class Stats:
    """Distribution of one metric, in milliseconds."""

    count: int
    mean: float
    min: float
    max: float
    percentiles: dict[int, float]

    @classmethod
    def of(cls, seconds: np.ndarray) -> Stats:
        if len(seconds) == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, {q: nan for q in QUANTILES})
        ms = seconds * 1000.0
        return cls(
            len(ms),
            float(ms.mean()),
            float(ms.min()),
            float(ms.max()),
            {q: float(np.percentile(ms, q)) for q in QUANTILES},
        )


@dataclass(frozen=True)
class SloResult:
    threshold: Threshold
    observed: float
    passed: bool


@dataclass(frozen=True)
class TokenReconciliation:
    """Prompt tokens the plan asked for beside those the server counted (its `usage`), and
    output tokens the server counted beside those the client counted in the stream."""

    requests: int  # successful requests with both prompt counts
    planned: int
    served: int
    median_error_pct: float  # median of |served - planned| / planned, in %
    p90_error_pct: float
    cache_reports: int = 0  # successful requests whose server said how many came from its cache
    cache_prompt: int = 0  # their prompt tokens
    cached: int = 0  # of which the server took from its prefix cache
    # successful streamed requests with `usage` whose stream is one token per chunk (no
    # per-chunk usage said otherwise): the server's output count beside the chunks counted
    output_requests: int = 0
    output_usage: int = 0
    output_streamed: int = 0
    output_disagreeing: int = 0  # requests whose two counts differ by more than 5%

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cached / self.cache_prompt if self.cache_prompt else None

    @property
    def output_gap_pct(self) -> float | None:
        """How far the stream's count is from the server's, in % of the server's."""
        if not self.output_usage:
            return None
        return (self.output_streamed - self.output_usage) / self.output_usage * 100.0

    @classmethod
    def of(cls, table: RequestTable) -> TokenReconciliation | None:
        """Over the table's successful last attempts; None when no server counted tokens (a
        simulated run counts its prefix cache's hits, as a server's usage does)."""
        t = table.tokens
        if t is None:
            return None
        counted = table.ok & ~table.retried & t.usage
        paired = counted & (t.planned_prompt > 0) & (t.prompt >= 0)
        # streamed requests whose chunks should each carry one token: the server counted the
        # output and no per-chunk usage said a chunk held several
        one_token = counted & (table.output_tokens > 0) & (t.chunks > 0) & ~t.per_chunk
        reports = table.ok & ~table.retried & (t.cached >= 0)
        if not paired.any() and not one_token.any() and not reports.any():
            return None
        usage, streamed = table.output_tokens[one_token], t.chunks[one_token]
        disagreeing = int((np.abs(streamed - usage) > OUTPUT_COUNT_TOLERANCE * usage).sum())
        planned, served = t.planned_prompt[paired], t.prompt[paired]
        error = np.abs(served - planned) / planned * 100.0 if paired.any() else np.zeros(1)
        return cls(
            int(paired.sum()),
            int(planned.sum()),
            int(served.sum()),
            float(np.median(error)),
            float(np.percentile(error, 90)),
            int(reports.sum()),
            int(t.prompt[reports].clip(0, None).sum()),
            int(t.cached[reports].sum()),
            int(one_token.sum()),
            int(usage.sum()),
            int(streamed.sum()),
            disagreeing,
        )


OUTPUT_COUNT_TOLERANCE = 0.05


def output_count_warning(tokens: TokenReconciliation | None) -> str | None:
    """A warning when the stream's chunks and the server's output count disagree by more than
    5%: then a chunk is not a token, and per-chunk gaps are not per-token ITL."""
    gap = tokens.output_gap_pct if tokens else None
    if tokens is None or gap is None or abs(gap) <= OUTPUT_COUNT_TOLERANCE * 100:
        return None
    return (
        f"the server's usage counted {tokens.output_usage:,} output tokens, the stream carried "
        f"{tokens.output_streamed:,} content chunks ({gap:+.1f}%; {tokens.output_disagreeing} "
        f"of {tokens.output_requests} requests apart by more than 5%): a chunk is not one "
        "token here (the server holds back partial characters, or sends several tokens per "
        "chunk without per-chunk usage), so ITL per chunk is not per token"
    )


UNPLANNED_CACHE_MARGIN = 0.10  # hit rate above the plan's shareable share that is worth a word


def unplanned_cache_warning(tokens: TokenReconciliation | None, planned: float) -> str | None:
    """A warning when the server served more prompt tokens from its prefix cache than the
    plan's shared prefixes explain: an earlier run's prompts, most likely, so TTFT is flattered."""
    rate = tokens.cache_hit_rate if tokens else None
    if rate is None or rate <= planned + UNPLANNED_CACHE_MARGIN:
        return None
    return (
        f"the server's prefix cache served {rate:.0%} of the prompt tokens, but the plan shares "
        f"only {planned:.0%}: TTFT is flattered by cached prompts (an earlier run's text? keep "
        "target.salt_prompts on)"
    )


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int
    statuses: dict[str, int]
    error_kinds: dict[str, int]
    error_examples: dict[str, str]  # per error kind, the first detail the server gave
    duration_s: float  # the send window: the planned duration, or the sends' span if longer
    span_s: float  # first send to last response: the span of throughput, tokens and goodput
    request_rate: float  # sent per second over the send window (duration_s)
    throughput: float  # successful requests per second, first send to last response
    output_tokens_per_s: float  # over the same span
    goodput: float  # requests per second meeting every per-request SLO, same span
    lateness_p99_ms: float
    metrics: dict[str, Stats] = field(default_factory=dict)
    slos: list[SloResult] = field(default_factory=list)
    retries: int = 0  # attempts that failed and were tried again (not counted as requests)
    tokens: TokenReconciliation | None = None
    by_persona: dict[str, Summary] = field(default_factory=dict)  # when there are several
    dropped: int = 0  # planned requests the generator never sent (not counted in `requests`)

    @property
    def error_rate(self) -> float:
        return 0.0 if self.requests == 0 else 1.0 - self.ok / self.requests

    @property
    def slos_passed(self) -> bool:
        """Every scenario-wide objective, and every persona's own, holds."""
        return all(s.passed for s in self.slos) and all(
            p.slos_passed for p in self.by_persona.values()
        )


def check_slos(table: RequestTable, thresholds: Sequence[Threshold]) -> list[SloResult]:
    """Evaluate each threshold on the run: latencies in ms, error_rate a fraction.

    A failed request counts as infinitely slow for ttft, tpot and e2e thresholds: it did not
    get its answer within any limit (so `p(95) < 800` fails when more than 5% of requests fail).
    """
    failed = int((~table.ok).sum())
    results = []
    for t in thresholds:
        if t.metric == "error_rate":
            observed = failed / len(table) if len(table) else 0.0
        else:
            ms = table.samples(t.metric) * 1000.0
            padded = failed > 0 and t.metric != "itl"
            if padded:
                ms = np.concatenate([ms, np.full(failed, np.inf)])
            if len(ms) == 0:
                observed = float("nan")
            elif t.quantile is not None:  # as in the latency table, unless inf must be ranked
                if padded:
                    observed = float(np.percentile(ms, t.quantile, method="inverted_cdf"))
                else:
                    observed = float(np.percentile(ms, t.quantile))
            else:
                observed = float(_REDUCERS[t.stat](ms))
        results.append(SloResult(t, observed, bool(not np.isnan(observed) and t.holds(observed))))
    return results


def summarize(
    records: Iterable[RequestRecord],
    thresholds: Sequence[Threshold] = (),
    duration_s: float | None = None,
    persona_thresholds: dict[str, list[Threshold]] | None = None,
    *,
    window: tuple[float, float] | None = None,
) -> Summary:
    """Everything a report or gate needs about one run, measured or simulated alike.

    A request counts once, by its last attempt (earlier ones were retried). Rates are over
    the run's windows (`window`: send window, first send to last response, in seconds): sends
    over the planned duration, or the sends' own span when sessions sent past it;
    completions over first send to last response. With several personas, or
    objectives of their own, each persona also gets its own summary over the same windows
    (so their rates add up), judged by the scenario's objectives and its own.
    """
    return summarize_table(
        RequestTable.of(records), thresholds, duration_s, persona_thresholds, window=window
    )


def summarize_run(table: RequestTable, scenario: Scenario) -> Summary:
    """A run's summary by its scenario: its SLOs (each persona's own too) over its duration."""
    return summarize_table(
        table, scenario.thresholds(), scenario.traffic.duration_s, scenario.persona_thresholds()
    )


def summarize_table(
    attempts: RequestTable,
    thresholds: Sequence[Threshold] = (),
    duration_s: float | None = None,
    persona_thresholds: dict[str, list[Threshold]] | None = None,
    *,
    window: tuple[float, float] | None = None,
) -> Summary:
    """`summarize` over columns (a simulated run's, or records'); token counts where the
    columns have them (measured runs)."""
    dropped = attempts.error_kind == (
        attempts.kinds.index(DROPPED) if DROPPED in attempts.kinds else -2
    )
    if dropped.any():  # never sent: counted apart, not as requests
        attempts = attempts.select(~dropped)
    table = attempts.select(~attempts.retried)
    n = len(table)
    if window is None:
        window = _windows(table, duration_s)
    duration_s, span = window
    ok = table.ok
    good = int(table.meets(_latency_limits(thresholds)).sum())
    # a retry waits out its backoff on purpose: only first attempts say if the sender kept up
    lateness = attempts.lateness[attempts.attempt == 0] * 1000.0
    statuses = np.bincount(table.status, minlength=len(STATUSES))
    kinds = np.bincount(table.error_kind[table.error_kind >= 0], minlength=len(table.kinds))
    return Summary(
        requests=n,
        ok=int(ok.sum()),
        statuses={STATUSES[i]: int(c) for i, c in enumerate(statuses) if c},
        error_kinds={table.kinds[i]: int(c) for i, c in enumerate(kinds) if c},
        error_examples=dict(table.examples),
        duration_s=duration_s,
        span_s=span,
        request_rate=n / max(duration_s, 1e-9),
        throughput=int(ok.sum()) / span,
        output_tokens_per_s=int(table.output_tokens[ok].sum()) / span,
        goodput=good / span,
        lateness_p99_ms=float(np.percentile(lateness, 99)) if len(lateness) else 0.0,
        metrics=_latency_stats(table),
        slos=check_slos(table, thresholds),
        retries=len(attempts) - n,
        tokens=TokenReconciliation.of(table),
        by_persona=_by_persona(attempts, table, thresholds, persona_thresholds, window),
        dropped=int(dropped.sum()),
    )


def _windows(table: RequestTable, duration_s: float | None) -> tuple[float, float]:
    """(send window, first send to last response) in seconds: the planned duration, or the
    sends' own span when sessions sent past it."""
    n = len(table)
    first = float(table.start.min()) if n else 0.0
    last_send = float(table.start.max()) - first if n else 0.0
    ends = np.where(np.isnan(table.end), table.start, table.end)
    span = max((float(ends.max()) if n else 0.0) - first, 1e-9)
    return (last_send if duration_s is None else max(duration_s, last_send)), span


def _by_persona(
    attempts: RequestTable,
    table: RequestTable,
    thresholds: Sequence[Threshold],
    persona_thresholds: dict[str, list[Threshold]] | None,
    window: tuple[float, float],
) -> dict[str, Summary]:
    """Each persona's own summary over the run's windows, judged by its own objectives on its
    requests alone (the scenario's are judged on all requests); none with one persona and no
    objectives of its own."""
    present = sorted(set(table.persona.tolist()))
    own = persona_thresholds or {}
    if not (len(present) > 1 or own):
        return {}
    return {
        attempts.personas[code]: summarize_table(
            attempts.select(attempts.persona == code),
            own.get(attempts.personas[code], []),
            window=window,
        )
        for code in present
    }


def _latency_stats(table: RequestTable) -> dict[str, Stats]:
    """Every latency metric's distribution, the intended-start ones too."""
    stats = {m: Stats.of(table.samples(m)) for m in LATENCY_METRICS}
    stats["itl"] = replace(stats["itl"], count=table.gap_count)  # gaps may be a sample
    stats["ttft_intended"] = Stats.of(table.samples("ttft_intended"))
    stats["e2e_intended"] = Stats.of(table.samples("e2e_intended"))
    return stats


def _latency_limits(thresholds: Sequence[Threshold]) -> dict[str, float]:
    """The tightest upper limit per latency metric: what a good request (goodput) meets."""
    limits: dict[str, float] = {}
    for t in thresholds:
        if t.metric != "error_rate" and t.op in ("<", "<="):
            limits[t.metric] = min(limits.get(t.metric, np.inf), t.value)
    return limits
