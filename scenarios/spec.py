"""Scenario files: a strict pydantic schema and a loader that reports every error at once.

This module is the schema's public face: the `Scenario` and its sections, and the ones that
live in modules of their own (distributions, target, fleet), are all importable from here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from scenarios.base import Strict, validation_messages
from scenarios.corpora import CORPUS_DIR_ENV, with_corpus_dir
from scenarios.deployment_spec import DeploymentOptions
from scenarios.distributions import Constant, Distribution, LogNormal, Normal, Uniform
from scenarios.files import data_file_problem
from scenarios.fleet_spec import AutoscalerSpec, ColdStartSpec, FleetSpec
from scenarios.messy import Messiness
from scenarios.objectives import CostBudgets, Regressions, Slos
from scenarios.prompts import TextSource, WordsSource
from scenarios.safe_yaml import MAX_NODES, parse_yaml
from scenarios.seconds import SecondsDistribution
from scenarios.slo import Threshold
from scenarios.target_spec import (
    ReferenceTargetSpec,
    StepCostSpec,
    TargetFaults,
    TargetSpec,
    check_base_url,
)
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
__all__ = [  # sections defined elsewhere, part of the schema here
    "MAX_NODES",
    "AutoscalerSpec",
    "ColdStartSpec",
    "Constant",
    "CostBudgets",
    "Distribution",
    "FleetSpec",
    "LogNormal",
    "Normal",
    "ReferenceTargetSpec",
    "Regressions",
    "Slos",
    "StepCostSpec",
    "TargetFaults",
    "TargetSpec",
    "Uniform",
    "check_base_url",
    "validation_messages",
]


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
    gpu_hour_usd: float = Field(ge=0, description="Price of one GPU for an hour, in US dollars.")
    gpus_per_replica: int = Field(
        1,
        ge=1,
        description="GPUs one replica runs on (its tensor parallelism): each is priced, and a "
        "cold start from a model and GPU profile loads its weights over all of them.",
    )
    budgets: CostBudgets = Field(
        default_factory=CostBudgets,
        description="Spend budgets judged like SLOs (monthly_usd, per_million_tokens_usd, "
        "per_million_output_tokens_usd, per_request_usd, per_session_usd): `forecast` exits 99 "
        "naming the budget, the figure and the first scale over it.",
    )


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

    @field_validator("metrics_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else check_base_url(v)

    gpu: bool = Field(True, description="Sample local GPUs through NVML when there are any.")
    interval_s: float = Field(1.0, ge=0.1, le=60)


class Forecast(Strict):
    scales: list[float] = Field(default_factory=lambda: [10.0, 100.0, 1000.0])
    seeds: int = Field(5, ge=2, le=50, description="Simulations per configuration.")
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Local Dask worker processes for the seeds; 0: one per core, 1: in the "
        "command's own process (`--scheduler` sends them to a Dask cluster instead).",
    )
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
    intervals: bool = Field(
        True,
        description="Also search at both edges of the step time's 90% band (the calibration's "
        "uncertainty and run-to-run drift): a 90% interval on replicas and cost (3x the work).",
    )

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not (s > 0 and math.isfinite(s))]
        if bad or not v:
            raise ValueError("must be a non-empty list of positive, finite numbers")
        return v


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
    deployments: DeploymentOptions | None = Field(
        None,
        description="Deployments `forecast` chooses between (GPUs, models, formats, tensor "
        "parallelism), carried from the measured one: the cheapest meeting every SLO at each "
        "scale.",
    )

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


def load_scenario(
    path: str | Path, corpus_dir: Path | None = None, given_by: str = CORPUS_DIR_ENV
) -> Scenario:
    """Read and validate a scenario YAML file; ScenarioError lists every problem found. With
    `corpus_dir` (given by the flag or variable `given_by`), corpora with `in_corpus_dir` read
    that file under it (see `scenarios.corpora.with_corpus_dir`)."""
    p = Path(path)
    refused = data_file_problem(p) if p.exists() else None
    if refused:
        raise ScenarioError(str(p), [refused])
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
