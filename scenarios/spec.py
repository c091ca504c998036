"""Scenario files: a strict pydantic schema and a loader that reports every error at once."""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from scenarios.base import Strict
from scenarios.corpora import CORPUS_DIR_ENV, with_corpus_dir
from scenarios.messy import Messiness
from scenarios.prompts import TextSource, WordsSource
from scenarios.regress import Budget, parse_budget
from scenarios.seconds import SecondsDistribution
from scenarios.slo import Threshold, parse_threshold
from scenarios.traces import TraceLengths, TraceReplay
from scenarios.traffic import (
    ClosedUsers,
    ConstantArrivalRate,
    DiurnalArrival,
    FlashCrowd,
    GammaArrival,
    OnOffArrival,
    PoissonArrival,
    RampingArrivalRate,
)

Arrival = Annotated[
    ConstantArrivalRate
    | PoissonArrival
    | GammaArrival
    | OnOffArrival
    | DiurnalArrival
    | RampingArrivalRate
    | FlashCrowd
    | ClosedUsers
    | TraceReplay,
    Field(discriminator="type"),
]


class _Bounded(Strict):
    min: int = Field(1, ge=0, description="Smallest value after sampling (clipped).")
    max: int | None = Field(None, ge=1, description="Largest value after sampling (clipped).")

    @model_validator(mode="after")
    def _min_le_max(self) -> _Bounded:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Constant(_Bounded):
    dist: Literal["constant"]
    value: int = Field(ge=1)


class Uniform(_Bounded):
    dist: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _low_le_high(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class Normal(_Bounded):
    dist: Literal["normal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)


class LogNormal(_Bounded):
    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0, le=5)


Distribution = Annotated[Constant | Uniform | Normal | LogNormal, Field(discriminator="dist")]


def check_base_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host and a valid port; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "must be an http:// or https:// URL with a host, like http://127.0.0.1:8000/v1"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        raise ValueError("the port must be between 1 and 65535") from None
    return url


class TargetSpec(Strict):
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL; null starts the built-in reference target."
    )
    api: Literal["chat", "completions"] = "chat"
    model: str = "surgecast-reference"
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Name of the env var with the key."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600)
    stream: bool = True
    max_response_bytes: int = Field(
        8 << 20,
        ge=1024,
        le=1 << 30,
        description="A response body longer than this is cut off and the request fails as "
        "response_too_large: bytes are counted, never kept.",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    salt_prompts: bool = Field(
        True,
        description="Begin every conversation with a salt unique to the run, so a rerun does "
        "not hit the server's prefix cache; false sends the same text every run.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else check_base_url(v)


class StepCostSpec(Strict):
    base_ms: float = Field(12.0, ge=0, description="Fixed time of one engine step.")
    per_decode_seq_ms: float = Field(0.4, ge=0, description="Added per sequence decoding.")
    per_prefill_token_ms: float = Field(0.05, ge=0, description="Added per prompt token.")


class TargetFaults(Strict):
    """Faults the reference target injects on purpose, each a probability per request (one
    draw per request picks at most one; their sum must be at most 1)."""

    reject_429: float = Field(0.0, ge=0, le=1, description="Answer 429 with Retry-After.")
    retry_after_s: float = Field(1.0, ge=0, le=3600, description="The Retry-After it sends.")
    retry_after_date: bool = Field(
        False, description="Send Retry-After as an HTTP-date (retry_after_s on, in whole seconds)."
    )
    error_500: float = Field(0.0, ge=0, le=1, description="Answer 500 before generating.")
    reset_stream: float = Field(
        0.0, ge=0, le=1, description="Cut the connection halfway through a streamed answer."
    )
    stall: float = Field(0.0, ge=0, le=1, description="Wait stall_s before the first token.")
    stall_s: float = Field(5.0, ge=0, le=3600)
    malformed_sse: float = Field(
        0.0, ge=0, le=1, description="Write one event mid-stream without its `data:` prefix."
    )
    missing_usage: float = Field(
        0.0, ge=0, le=1, description="Leave out the usage the client asked for."
    )
    slow_headers: float = Field(
        0.0, ge=0, le=1, description="Wait slow_headers_s before the response headers."
    )
    slow_headers_s: float = Field(5.0, ge=0, le=3600)
    oversized: float = Field(
        0.0, ge=0, le=1, description="Stream one content chunk of oversized_bytes characters."
    )
    oversized_bytes: int = Field(1 << 20, ge=1, le=1 << 30)
    die_after: int | None = Field(
        None, ge=1, description="Exit abruptly (a crash) when this many requests have come."
    )
    seed: int = Field(0, ge=0, description="Seed of the fault draws.")

    @model_validator(mode="after")
    def _one_draw(self) -> TargetFaults:
        if sum(self.chances().values()) > 1 + 1e-9:
            raise ValueError("the fault probabilities add up to more than 1")
        return self

    def chances(self) -> dict[str, float]:
        """Each per-request fault and its probability, in the order they are drawn."""
        names = ("reject_429", "error_500", "reset_stream", "stall", "malformed_sse")
        more = ("missing_usage", "slow_headers", "oversized")
        return {n: float(getattr(self, n)) for n in (*names, *more)}

    @property
    def any(self) -> bool:
        return any(self.chances().values()) or self.die_after is not None


class ReferenceTargetSpec(Strict):
    """The engine model that the built-in reference target serves."""

    max_num_seqs: int = Field(32, ge=1, le=4096)
    kv_cache_tokens: int = Field(65536, ge=16)
    max_batched_tokens: int = Field(8192, ge=1)
    cold_start_s: float = Field(0.5, ge=0, le=600)
    step: StepCostSpec = StepCostSpec()
    slowdown: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Multiplies every step's time: 1.3 injects a 30% slowdown (gate tests).",
    )
    faults: TargetFaults = TargetFaults()
    stream_interval: int = Field(
        1, ge=1, le=64, description="Tokens per streamed chunk (vLLM's --stream-interval)."
    )


class Traffic(Strict):
    """When requests (or sessions) start: an arrival process, or `rate` as Poisson shorthand."""

    arrival: Arrival | Literal["poisson"] = "poisson"
    rate: float | None = Field(
        None, gt=0, le=100000, description="Poisson arrivals per second (shorthand)."
    )
    duration_s: float = Field(gt=0, le=86400)
    seed: int = Field(0, ge=0)
    max_lateness_ms: float = Field(
        100.0, gt=0, description="A run whose p99 send lateness exceeds this is invalid."
    )
    max_in_flight: int = Field(2000, ge=1, description="Cap on concurrent requests.")
    max_loop_lag_ms: float = Field(
        5.0,
        gt=0,
        description="A run whose generator's event loop woke, or read a receive after the "
        "kernel's arrival, later than this at p99 is invalid where that spoiled its times: "
        "reads the kernel did not stamp (TLS, not Linux) carry the delay, and a loop that late "
        "reads chunks written closer together than that as one (invalid when more than 0.25% "
        "of the chunks were read with the one before them: each spoils two gaps). A read's "
        "wait is seen only up to the gap between chunks, so 5 keeps the 5 ms promise "
        "(benchmarks/load_generator.py: at 6-7 ms with 0.5% of chunks merged, ITL error was "
        "5.3 ms at p99; at 11 ms with 12% merged, 12 ms).",
    )
    max_generator_cpu: float = Field(
        0.75,
        gt=0,
        le=1,
        description="A run whose generator used more than this share of one core on average "
        "is invalid, as is one whose processes on a host used more than this share of the "
        "cores they may run on together: events queue behind each other in a busy loop, and "
        "each one's time stamp "
        "waits with it (benchmarks/load_generator.py: at 63-69% of a core added TTFT error "
        "stayed under 4 ms at p99, at about 80% it passed 7 ms).",
    )
    stop_grace_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="On SIGINT or SIGTERM sending stops; requests in flight get this long to "
        "finish, then are cancelled (recorded as such). A second signal cancels them at once.",
    )

    @model_validator(mode="after")
    def _one_rate(self) -> Traffic:
        if isinstance(self.arrival, str) and self.rate is None:
            raise ValueError(
                "rate: required with arrival: poisson (or give arrival: {type: ..., ...})"
            )
        if not isinstance(self.arrival, str) and self.rate is not None:
            raise ValueError(
                f"rate: give the rate inside arrival ({self.arrival.type}), not beside it"
            )
        return self

    @property
    def process(self) -> Arrival:
        if isinstance(self.arrival, str):
            assert self.rate is not None  # the validator saw to it
            return PoissonArrival(type="poisson", rate=self.rate)
        return self.arrival

    def describe(self) -> str:
        """One line for humans: the process and its mean rate."""
        p = self.process
        if isinstance(p, ClosedUsers):
            return f"{p.type}: {p.users} users"
        if isinstance(p, TraceReplay):
            return f"trace replay of {p.path} ({p.format})"
        return f"{p.type} at {p.mean_rate(self.duration_s):.3g} req/s mean"


class Retry(Strict):
    """Client retries of a rejected or failed request, with jittered exponential backoff."""

    max_retries: int = Field(0, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0, le=600, description="First wait; doubles each retry.")
    max_backoff_s: float = Field(30.0, ge=0, le=3600)
    jitter: float = Field(0.5, ge=0, le=1, description="Each wait is scaled by 1 +- jitter.")
    on_status: list[int] = Field(
        default_factory=lambda: [429, 500, 502, 503, 504], description="HTTP codes retried."
    )
    honour_retry_after: bool = Field(True, description="Wait at least the server's Retry-After.")
    max_retry_after_s: float = Field(
        60.0, ge=0, le=3600, description="A longer Retry-After is honoured only this long."
    )

    def wait_s(self, attempt: int, draw: float, retry_after_s: float | None) -> float:
        """Seconds before retry number `attempt` (1-based), with `draw` uniform in [0, 1)."""
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        wait = base * (1.0 + self.jitter * (2.0 * draw - 1.0))
        if self.honour_retry_after and retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait

    @property
    def longest_wait_s(self) -> float:
        """The longest one wait can be."""
        backoff = self.max_backoff_s * (1.0 + self.jitter)
        return max(backoff, self.max_retry_after_s) if self.honour_retry_after else backoff


class Workload(Strict):
    """Token lengths of each new user message and of each answer, and what the text is."""

    prompt_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    lengths: TraceLengths | None = Field(
        None, description="(prompt, output) pairs drawn from a trace's rows, correlation kept."
    )
    text: TextSource = Field(
        default_factory=WordsSource,
        description="Where prompt text comes from (words, corpus, "
        "rag, summarise, code); sized at send time to the planned tokens.",
    )
    messiness: Messiness = Field(default_factory=Messiness)

    @model_validator(mode="after")
    def _lengths_from_one_place(self) -> Workload:
        if self.lengths is not None:
            if self.prompt_tokens is not None or self.output_tokens is not None:
                raise ValueError(
                    "lengths: give either lengths (from a trace) or prompt_tokens and "
                    "output_tokens, not both"
                )
        elif (self.prompt_tokens is None) != (self.output_tokens is None):
            missing = "prompt_tokens" if self.prompt_tokens is None else "output_tokens"
            raise ValueError(f"{missing}: required beside the other")
        return self

    @property
    def has_lengths(self) -> bool:
        return self.lengths is not None or self.prompt_tokens is not None


class Session(Strict):
    """How one user's conversation unfolds: turns, think time, patience, regenerate, retries."""

    turns: Distribution = Field(
        default_factory=lambda: Constant(dist="constant", value=1),
        description="Turns per session (1: single requests).",
    )
    think_time: SecondsDistribution | None = Field(
        None, description="Seconds between an answer's end and the next turn (default 0)."
    )
    patience: SecondsDistribution | None = Field(
        None, description="Seconds a user waits for the first token before giving up."
    )
    regenerate: float = Field(0.0, ge=0, le=1, description="Chance a turn's answer is redone.")
    retry: Retry = Field(default_factory=Retry)


class Cost(Strict):
    gpu_hour_usd: float = Field(ge=0)
    gpus_per_replica: int = Field(1, ge=1)


class Privacy(Strict):
    store_prompts: Literal["none", "hashed", "full"] = Field(
        "hashed",
        description="What requests.jsonl keeps of each prompt: nothing, a hash (HMAC-SHA256 "
        "keyed per run: tells equal prompts of a run apart, reveals none; the default) or the "
        "full text. true/false read as full/none.",
    )

    @field_validator("store_prompts", mode="before")
    @classmethod
    def _from_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # the older form
            return "full" if value else "none"
        return value


class Telemetry(Strict):
    prometheus: bool = Field(True, description="Scrape the target's Prometheus /metrics.")
    metrics_url: str | None = Field(None, description="Default: <target root>/metrics.")
    gpu: bool = Field(True, description="Sample local GPUs through NVML when there are any.")
    interval_s: float = Field(1.0, ge=0.1, le=60)


class Forecast(Strict):
    scales: list[float] = Field(default_factory=lambda: [10.0, 100.0, 1000.0])
    seeds: int = Field(5, ge=2, le=50, description="Simulations per configuration.")
    workers: int = Field(0, ge=0, le=256, description="Processes for the seeds; 0: one per core.")
    max_load: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A fixed fleet passes only while the traffic stays under this share of its "
        "saturation throughput: headroom for bursts, calibration error and drift.",
    )
    duration_s: float | None = Field(
        None, gt=0, le=86400, description="Simulated traffic per run; default max(120, traffic)."
    )

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not (s > 0 and math.isfinite(s))]
        if bad or not v:
            raise ValueError("must be a non-empty list of positive, finite numbers")
        return v


class ColdStartSpec(Strict):
    """How long a replica the autoscaler adds takes before it serves."""

    provisioning_s: float = Field(0.0, ge=0, le=3600, description="Getting a machine.")
    load_s: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Model load; default: model's weights / gpu's load bandwidth, else "
        "reference_target.cold_start_s.",
    )
    model: str | None = Field(None, description="A model profile name (simulator.engine.profiles).")
    gpu: str | None = Field(None, description="A GPU profile name (simulator.engine.profiles).")
    tensor_parallel: Literal[1, 2, 4, 8] = Field(1, description="GPUs per replica.")
    init_s: float = Field(0.0, ge=0, le=3600, description="Engine start after the load.")
    jitter: float = Field(
        0.0, ge=0, le=2, description="Lognormal shape of the (load + init) factor; 0: fixed."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ColdStartSpec:
        if (self.model is None) != (self.gpu is None):
            missing = "model" if self.model is None else "gpu"
            raise ValueError(f"{missing}: required beside the other")
        if self.model is not None and self.load_s is not None:
            raise ValueError("load_s: give either load_s or model and gpu, not both")
        return self


class AutoscalerSpec(Strict):
    """Replicas follow a metric summed over the fleet: ceil(sum / target), within bounds."""

    metric: Literal["in_flight", "queue", "kv"] = "in_flight"
    target: float = Field(gt=0, description="Metric per replica the autoscaler aims at.")
    interval_s: float = Field(15.0, gt=0, le=3600, description="Between evaluations.")
    stabilisation_s: float = Field(
        300.0, ge=0, le=86400, description="Scale down to the highest count wanted in it."
    )
    min_replicas: int = Field(1, ge=0, le=100000, description="0: scale to zero.")
    max_replicas: int = Field(ge=1, le=100000)
    initial_replicas: int | None = Field(None, ge=0, description="Default: min_replicas.")
    keep_alive_s: float = Field(60.0, ge=0, le=86400, description="Idle time before removal.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas: must be <= max_replicas ({self.max_replicas}), "
                f"got {self.min_replicas}"
            )
        n = self.initial_replicas
        if n is not None and not self.min_replicas <= n <= self.max_replicas:
            raise ValueError(
                f"initial_replicas: must be in [min_replicas, max_replicas] = "
                f"[{self.min_replicas}, {self.max_replicas}], got {n}"
            )
        return self


class FleetSpec(Strict):
    """How simulated replicas share traffic: routing, admission, autoscaling."""

    routing: Literal[
        "random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"
    ] = "least_outstanding"
    admission_limit: int | None = Field(
        None, ge=0, description="Requests waiting fleet-wide beyond which one is refused (429)."
    )
    central_queue: bool = Field(
        False, description="Requests wait at the fleet until a replica has a free batch slot."
    )
    affinity_overload: float = Field(
        1.0, gt=0, le=100, description="prefix_affinity gives way at this x max_num_seqs."
    )
    retry_after_s: float | None = Field(
        None, ge=0, le=3600, description="The Retry-After header of the fleet's 429s."
    )
    autoscaler: AutoscalerSpec | None = None
    cold_start: ColdStartSpec = Field(default_factory=ColdStartSpec)
    seed: int = Field(0, ge=0, description="Seeds random routing and cold-start draws.")


def _latency_slo(expr: str) -> str:
    parse_threshold("ttft", expr)  # any latency metric: rejects 'rate'
    return expr


def _rate_slo(expr: str) -> str:
    parse_threshold("error_rate", expr)
    return expr


LatencySlo = Annotated[str, AfterValidator(_latency_slo)]
RateSlo = Annotated[str, AfterValidator(_rate_slo)]


class Slos(Strict):
    """Objectives per metric, k6-style: latencies in milliseconds, error_rate a fraction."""

    ttft: list[LatencySlo] = Field(default_factory=list)
    itl: list[LatencySlo] = Field(default_factory=list)
    tpot: list[LatencySlo] = Field(default_factory=list)
    e2e: list[LatencySlo] = Field(default_factory=list)
    error_rate: list[RateSlo] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        """A single expression may stand for a list of one."""
        if isinstance(v, dict):
            return {k: [e] if isinstance(e, str) else e for k, e in v.items()}
        return v

    def thresholds(self) -> list[Threshold]:
        return [
            parse_threshold(metric, expr)
            for metric in type(self).model_fields
            for expr in getattr(self, metric)
        ]


def _budget(metric: str) -> AfterValidator:
    def check(expr: str) -> str:
        parse_budget(metric, expr)
        return expr

    return AfterValidator(check)


class Regressions(Strict):
    """Regression budgets against a baseline run (`surgecast gate`), k6-style: `p(95) regress
    < 10%` (relative) or `< 50` (absolute: ms, a fraction for error_rate, req/s for throughput
    and goodput, which regress when they fall). A metric fails only when its regression is
    significant (its bootstrap interval excludes 0) and over budget."""

    ttft: list[Annotated[str, _budget("ttft")]] = Field(default_factory=list)
    itl: list[Annotated[str, _budget("itl")]] = Field(default_factory=list)
    tpot: list[Annotated[str, _budget("tpot")]] = Field(default_factory=list)
    e2e: list[Annotated[str, _budget("e2e")]] = Field(default_factory=list)
    error_rate: list[Annotated[str, _budget("error_rate")]] = Field(default_factory=list)
    throughput: list[Annotated[str, _budget("throughput")]] = Field(default_factory=list)
    goodput: list[Annotated[str, _budget("goodput")]] = Field(default_factory=list)
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of the bootstrap intervals.")
    resamples: int = Field(2000, ge=200, le=100000, description="Bootstrap resamples.")

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        """A single expression may stand for a list of one."""
        if isinstance(v, dict):
            return {k: [e] if isinstance(e, str) else e for k, e in v.items()}
        return v

    def budgets(self) -> list[Budget]:
        return [
            parse_budget(metric, expr)
            for metric in ("ttft", "itl", "tpot", "e2e", "error_rate", "throughput", "goodput")
            for expr in getattr(self, metric)
        ]


class Persona(Strict):
    """One kind of user in a weighted mix; any section left out is the scenario's own."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    weight: float = Field(1.0, gt=0, le=1e6, description="Share of the scenario's arrivals.")
    arrival: Arrival | None = Field(
        None, description="Its own traffic instead of a share of traffic.arrival."
    )
    workload: Workload | None = None
    session: Session | None = None
    slos: Slos | None = Field(None, description="Objectives for this persona's requests alone.")


class Scenario(Strict):
    _base_dir: Path | None = PrivateAttr(None)  # the scenario file's folder: relative paths

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    target: TargetSpec = TargetSpec()
    reference_target: ReferenceTargetSpec = ReferenceTargetSpec()
    traffic: Traffic
    workload: Workload = Field(default_factory=Workload)
    session: Session = Field(default_factory=Session)
    personas: list[Persona] = Field(default_factory=list, max_length=64)
    slos: Slos = Slos()
    regressions: Regressions = Field(
        default_factory=Regressions, description="Budgets against a baseline (surgecast gate)."
    )
    cost: Cost = Cost(gpu_hour_usd=2.0)
    privacy: Privacy = Privacy()
    telemetry: Telemetry = Telemetry()
    forecast: Forecast = Forecast()
    fleet: FleetSpec = Field(default_factory=FleetSpec)

    @model_validator(mode="after")
    def _unique_personas(self) -> Scenario:
        names = [p.name for p in self.personas]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"personas: names must be unique, repeated: {', '.join(twice)}")
        return self

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths (traces, corpora) resolve against first."""
        return self._base_dir

    @model_validator(mode="after")
    def _every_request_has_lengths(self) -> Scenario:
        """Lengths come from the workload, or for single requests from a replayed trace."""
        problems = []
        for p in self.mix():
            assert p.workload is not None and p.session is not None
            arrival = p.arrival or self.traffic.process
            from_trace = isinstance(arrival, TraceReplay) and arrival.lengths == "trace"
            single = p.session.turns == Constant(dist="constant", value=1)
            if not p.workload.has_lengths and not (
                from_trace and single and not p.session.regenerate
            ):
                where = (
                    f"personas[{p.name}].workload"
                    if p.workload is not self.workload
                    else "workload"
                )
                problems.append(
                    f"{where}: prompt_tokens and output_tokens (or lengths) are required unless "
                    "a trace with lengths: trace feeds single-turn sessions"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def thresholds(self) -> list[Threshold]:
        return self.slos.thresholds()

    def mix(self) -> list[Persona]:
        """The personas with every section filled in (one 'default' persona when none given)."""
        personas = self.personas or [Persona(name="default")]
        return [
            p.model_copy(
                update={
                    "workload": p.workload or self.workload,
                    "session": p.session or self.session,
                }
            )
            for p in personas
        ]

    def persona_thresholds(self) -> dict[str, list[Threshold]]:
        """Each persona's own objectives (beside the scenario-wide ones)."""
        return {p.name: p.slos.thresholds() for p in self.personas if p.slos is not None}


class ScenarioError(Exception):
    """A scenario file that cannot be used; `problems` lists every error found."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


MAX_SCENARIO_BYTES = 256 * 1024  # a scenario file is a few KB; larger ones are refused
MAX_DEPTH = 64  # nesting of mappings and lists, aliases expanded
MAX_NODES = 20_000  # values in the document with every alias expanded (alias bombs)
MAX_INT_DIGITS = 18  # larger integers are refused before conversion (no int fits a field)
_SHOWN_CHARS = 80  # values quoted in messages are cut to this length


def _where(node: yaml.Node | yaml.Event) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(no position)"


try:  # libyaml parses in C: linear time on any input (pure-Python PyYAML is slow on some)
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _UniqueKeyLoader(_SafeLoader):
    """SafeLoader that rejects duplicate and non-scalar mapping keys and out-of-range numbers,
    collecting each problem (with its line and column) instead of stopping at the first."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.problems: list[str] = []
        self.keys: list[str] = []  # the field path to the value being constructed

    def problem(self, node: yaml.Node, text: str) -> None:
        where = f"{_where(node)}: " + (".".join(self.keys) + ": " if self.keys else "")
        self.problems.append(where + text)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
            loader.problem(key_node, f"a {kind} as a mapping key; keys must be plain names")
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.problem(key_node, f"duplicate key {_shown(key)}")
            continue
        loader.keys.append(str(key)[:40])
        seen[key] = loader.construct_object(value_node, deep=True)
        loader.keys.pop()
    return seen


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> int | None:
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > MAX_INT_DIGITS:
        loader.problem(
            node, f"integer with {digits} digits is out of range (at most {MAX_INT_DIGITS} digits)"
        )
        return None
    return int(loader.construct_yaml_int(node))


def _construct_float(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> float | None:
    value = float(loader.construct_yaml_float(node))
    if not math.isfinite(value):
        loader.problem(node, f"{_shown(node.value)} is not a finite number; give a number")
        return None
    return value


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _shown(value: Any) -> str:
    """repr of `value` cut to about 80 characters; bounded work on any size of value."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, _SHOWN_CHARS, 40, 40
    text = short.repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _check_events(text: str) -> list[str]:
    """Nesting deeper than MAX_DEPTH, or far more than MAX_NODES values, in the text itself,
    found from the event stream (no recursion), before composing the document."""
    depth = 0
    for n, event in enumerate(yaml.parse(text, Loader=_SafeLoader)):
        if n > 2 * MAX_NODES:  # an event starts and one ends each collection
            return [
                f"{_where(event)}: more than {MAX_NODES:,} "
                "values in the document; a scenario needs far fewer"
            ]
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return [
                    f"{_where(event)}: nested deeper than {MAX_DEPTH} levels; flatten the document"
                ]
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return []


def _check_graph(root: yaml.Node) -> list[str]:
    """The document's size and depth with every alias expanded, bounded by MAX_NODES and
    MAX_DEPTH (an alias bomb is small as text and huge expanded), and no alias to itself.
    Iterative post-order walk; each node's expanded (size, depth) is computed once."""
    done: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        children = _children(node)
        if expanded:
            open_.discard(key)
            size = 1 + sum(done[id(c)][0] for c in children)
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            if size > MAX_NODES:
                return [
                    f"{_where(node)}: expands to more than {MAX_NODES:,} values with its "
                    "aliases (&anchor / *alias) expanded; use fewer aliases"
                ]
            if depth > MAX_DEPTH:
                return [f"{_where(node)}: nested deeper than {MAX_DEPTH} levels through aliases"]
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in open_:
            return [f"{_where(node)}: an alias refers to the value that contains it"]
        open_.add(key)
        stack.append((node, True))
        for c in children:
            if id(c) in open_:
                return [f"{_where(c)}: an alias refers to the value that contains it"]
            if id(c) not in done:
                stack.append((c, False))
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str) -> tuple[Any, list[str]]:
    """The YAML document in `text` and the problems found in it (depth, alias expansion,
    keys, numbers), each with its line and column; the data is None when unusable.
    yaml.YAMLError for text that is not YAML."""
    problems = _check_events(text)
    if problems:
        return None, problems
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        problems = _check_graph(root)
        if problems:
            return None, problems
        data = loader.construct_document(root)
    finally:
        loader.dispose()
    return (None, loader.problems) if loader.problems else (data, [])


_BRANCH = re.compile(r"^(tagged-union|function-(after|before|wrap|plain)|literal|union)\[")


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Dotted field path, without the union tags pydantic inserts (`prompt_tokens.lognormal.x`,
    `arrival.tagged-union[...].gamma.rate`)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        tag = isinstance(node, dict) and item not in node
        if (tag and item in (node.get("dist"), node.get("type"))) or _BRANCH.match(item):
            continue  # a union's branch or discriminator tag, not a field
        parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _relevant(err: Any) -> bool:
    """False for a union branch that cannot be what was meant: a mapping tried as a literal
    (`arrival: {type: gamma, ...}` against `arrival: poisson`)."""
    return not (err["type"] == "literal_error" and isinstance(err["input"], dict))


def _format(err: Any, data: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = _loc(err["loc"], data)
    value = err["input"]
    if not err["loc"]:  # a check across sections: its message names its own fields
        return msg
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (got {_shown(value)})"
    if isinstance(value, dict | list) or _shown(value) in msg:
        return f"{where}: {msg}"
    return f"{where}: {msg}, got {_shown(value)}"


def parse_scenario(data: Any, path: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate already-parsed YAML; raises ScenarioError listing every problem. Relative
    paths in it (traces, corpora) are read from `base_dir`."""
    if not isinstance(data, dict):
        raise ScenarioError(path, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        scenario = Scenario.model_validate(data)
        scenario._base_dir = base_dir
        return scenario
    except ValidationError as e:
        raise ScenarioError(path, validation_messages(e, data)) from None


def validation_messages(error: ValidationError, data: Any) -> list[str]:
    """Each problem pydantic found in `data`, as `field.path: what is wrong, got value`."""
    errors = [err for err in error.errors() if _relevant(err)] or error.errors()
    return [_format(err, data) for err in errors]


def load_scenario(
    path: str | Path, corpus_dir: Path | None = None, given_by: str = CORPUS_DIR_ENV
) -> Scenario:
    """Read and validate a scenario YAML file; ScenarioError lists every problem found. With
    `corpus_dir` (given by the flag or variable `given_by`), corpora with `in_corpus_dir` read
    that file under it (see `scenarios.corpora.with_corpus_dir`)."""
    p = Path(path)
    try:
        with p.open("rb") as f:  # read no more than the limit: a device or pipe never ends
            raw = f.read(MAX_SCENARIO_BYTES + 1)
    except OSError as e:
        raise ScenarioError(str(p), [f"cannot read file: {e.strerror or e}"]) from None
    if len(raw) > MAX_SCENARIO_BYTES:
        limit = f"over the limit of {MAX_SCENARIO_BYTES:,} bytes (a scenario is a few KB)"
        raise ScenarioError(str(p), [f"file is {limit}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        byte = f"byte 0x{raw[e.start]:02x} at byte offset {e.start}"
        raise ScenarioError(str(p), [f"line {line}, column {column}: not UTF-8 ({byte})"]) from None
    try:
        data, problems = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ScenarioError(str(p), [f"{where}invalid YAML: {problem}"]) from None
    if problems:
        raise ScenarioError(str(p), problems)
    scenario = parse_scenario(data, str(p), p.resolve().parent)
    return scenario if corpus_dir is None else with_corpus_dir(scenario, corpus_dir, given_by)
