"""The run folder's documents as strict, versioned contracts other tools can read.

Each document has one pydantic model, one writer and one reader here, and a JSON Schema
(`surgecast schema --out DIR` exports them). A document carries `schema`, its name and major
version: a reader refuses a version it does not know rather than guess at its fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scenarios.metrics import Stats, Summary
from simulator.engine.core import EngineConfig
from simulator.fit.backtest import BacktestRow
from simulator.fit.calibrate import PARAMS, Calibration, Fit
from simulator.fit.costfit import Candidate
from simulator.fit.tokenmap import TokenMap
from simulator.forecast.search import Estimate, Evaluation, ForecastPoint

M = TypeVar("M", bound=BaseModel)
RUN_SCHEMA = "surgecast.run/1"
SUMMARY_SCHEMA = "surgecast.summary/1"
BACKTEST_SCHEMA = "surgecast.backtest/1"
CALIBRATION_SCHEMA = "surgecast.calibration/1"
FORECAST_SCHEMA = "surgecast.forecast/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class LatencyStats(_Strict):
    """One metric's distribution in milliseconds (null where there were no samples)."""

    count: int = Field(ge=0)
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class SloVerdict(_Strict):
    slo: str = Field(description="as the scenario wrote it, e.g. 'ttft: p(95) < 800'")
    observed: float | None
    passed: bool


class Rates(_Strict):
    """Every rate with the span it is measured over."""

    send_window_s: float = Field(
        ge=0, description="the planned duration, or the sends' own span if longer"
    )
    sent_per_s: float = Field(ge=0, description="requests sent over send_window_s")
    completion_span_s: float = Field(ge=0, description="first send to last response")
    throughput_per_s: float = Field(ge=0, description="successes over completion_span_s")
    goodput_per_s: float = Field(
        ge=0, description="successes meeting every per-request SLO, over completion_span_s"
    )
    output_tokens_per_s: float = Field(ge=0, description="over completion_span_s")


class Tokens(_Strict):
    """Planned against served prompt tokens; the server's output count against the stream's."""

    requests: int
    planned: int
    served: int
    median_error_pct: float
    p90_error_pct: float
    cache_hit_rate: float | None
    output_usage: int
    output_streamed: int
    output_disagreeing: int


class SummaryDoc(_Strict):
    """summary.json: what a report or a gate needs about one run, measured or simulated."""

    schema_: Literal["surgecast.summary/1"] = Field("surgecast.summary/1", alias="schema")
    requests: int = Field(ge=0, description="last attempts sent (retries and drops apart)")
    ok: int = Field(ge=0)
    dropped: int = Field(ge=0, description="planned requests never sent (in-flight cap)")
    retries: int = Field(ge=0, description="attempts that failed and were sent again")
    error_rate: float = Field(ge=0, le=1)
    statuses: dict[str, int]
    error_kinds: dict[str, int]
    rates: Rates
    lateness_p99_ms: float
    latency: dict[str, LatencyStats] = Field(
        description="ttft, itl, tpot, e2e and the *_intended variants"
    )
    slos: list[SloVerdict]
    slos_passed: bool
    tokens: Tokens | None
    by_persona: dict[str, SummaryDoc]

    @classmethod
    def of(cls, s: Summary) -> SummaryDoc:
        return cls(
            requests=s.requests,
            ok=s.ok,
            dropped=s.dropped,
            retries=s.retries,
            error_rate=s.error_rate,
            statuses=s.statuses,
            error_kinds=s.error_kinds,
            rates=Rates(
                send_window_s=s.duration_s,
                sent_per_s=s.request_rate,
                completion_span_s=s.span_s,
                throughput_per_s=s.throughput,
                goodput_per_s=s.goodput,
                output_tokens_per_s=s.output_tokens_per_s,
            ),
            lateness_p99_ms=s.lateness_p99_ms,
            latency={name: _stats(st) for name, st in s.metrics.items()},
            slos=[
                SloVerdict(slo=str(r.threshold), observed=_finite(r.observed), passed=r.passed)
                for r in s.slos
            ],
            slos_passed=s.slos_passed,
            tokens=None if s.tokens is None else _tokens(s),
            by_persona={name: cls.of(p) for name, p in s.by_persona.items()},
        )


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _stats(st: Stats) -> LatencyStats:
    p = st.percentiles
    return LatencyStats(
        count=st.count,
        mean_ms=_finite(st.mean),
        min_ms=_finite(st.min),
        max_ms=_finite(st.max),
        p50_ms=_finite(p[50]),
        p90_ms=_finite(p[90]),
        p95_ms=_finite(p[95]),
        p99_ms=_finite(p[99]),
    )


def _tokens(s: Summary) -> Tokens:
    """The reconciliation's counts, field by field (the model names a subset of them)."""
    return Tokens(**{name: getattr(s.tokens, name) for name in Tokens.model_fields})


class BacktestRowDoc(_Strict):
    """One predicted quantity beside the measured one (null: not a finite number)."""

    metric: Literal["ttft", "itl", "e2e", "throughput"]
    quantile: int = Field(ge=0, le=100, description="0 for throughput")
    unit: Literal["ms", "req/s"]
    basis: Literal["replay", "plan"] = Field(
        description="replay: the run's own send times; plan: the scenario's plan"
    )
    measured: float | None
    predicted: float | None
    low: float | None = Field(description="the 90% interval the measured value should fall in")
    high: float | None
    error_pct: float | None
    inside: bool

    @classmethod
    def of(cls, r: BacktestRow) -> BacktestRowDoc:
        """The row; a metric, unit or basis outside the contract is a validation error."""
        return cls.model_validate(
            {
                "metric": r.metric,
                "quantile": r.quantile,
                "unit": r.unit,
                "basis": r.basis,
                "measured": _finite(r.measured),
                "predicted": _finite(r.predicted),
                "low": _finite(r.low),
                "high": _finite(r.high),
                "error_pct": _finite(r.error_pct),
                "inside": r.inside,
            }
        )

    def row(self) -> BacktestRow:
        nan = math.nan
        return BacktestRow(
            self.metric,
            self.quantile,
            nan if self.measured is None else self.measured,
            nan if self.predicted is None else self.predicted,
            nan if self.low is None else self.low,
            nan if self.high is None else self.high,
            self.basis,
        )


class BacktestDoc(_Strict):
    """backtest.json: a calibration's predictions of one run, with their intervals."""

    schema_: Literal["surgecast.backtest/1"] = Field("surgecast.backtest/1", alias="schema")
    rows: list[BacktestRowDoc]
    warnings: list[str]
    in_sample: bool = Field(description="the calibration was fitted on this very run")


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


class Validity(_Strict):
    valid: bool
    reasons: list[str] = Field(description="why the run cannot be trusted; empty when valid")


class Machine(_Strict):
    platform: str
    cpus: int | None
    python: str = Field(description="the interpreter's path")


class Writer(_Strict):
    """The process writing the folder: a reader tells a killed run from a live one by it."""

    host: str
    pid: int


class LoopLag(_Strict):
    samples: int
    interval_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    chunks: int = Field(0, ge=0, description="content chunks read")
    merged: int = Field(
        0, ge=0, description="chunks read in one receive with the chunk before them"
    )
    unstamped_reads: int = Field(0, ge=0, description="reads without the kernel's arrival time")


class Cpu(_Strict):
    samples: int
    mean: float = Field(description="share of one core, mean over the samples")
    max: float = Field(description="the busiest sample's share of one core")


class WorkerGenerator(_Strict):
    index: int = Field(ge=0)
    loop_lag: LoopLag
    cpu: Cpu
    host: str | None = None
    cores: int | None = Field(None, ge=1, description="the cores it may run on")


class MasterGenerator(_Strict):
    host: str
    cpu: Cpu


class HostCpu(_Strict):
    host: str
    processes: int = Field(ge=1, description="workers on the host")
    cpu: float = Field(
        ge=0, description="its workers' CPU together, and the master's on its host, in cores"
    )
    cores: int = Field(ge=1, description="the cores they may run on")


class Generator(_Strict):
    """How well the load generator kept its plan: its event loop's lag and its CPU (with
    several processes, the worst process's, each one's in `workers`)."""

    loop_lag: LoopLag
    cpu: Cpu
    processes: int = Field(1, ge=1)
    workers: list[WorkerGenerator] = []
    master: MasterGenerator | None = None
    hosts: list[HostCpu] = []
    failure: str | None = Field(None, description="why a distributed run could not finish")


class RunTarget(_Strict):
    """What was loaded; the engine-specific sections are what that engine reported."""

    kind: Literal["reference", "llama-server", "vllm", "external", "simulated"]
    base_url: str | None = None
    prompt_salt: str | None = Field(None, description="hex prefix that defeats prefix caches")
    engine: EngineConfig | None = Field(
        None, description="the engine model behind a reference target or a simulated run"
    )
    limits: dict[str, Any] | None = Field(None, description="batch and KV limits it declared")
    llama_server: dict[str, Any] | None = None
    vllm: dict[str, Any] | None = None
    replicas: int | None = Field(None, description="simulated runs: the fleet's replicas")
    scale: float | None = Field(None, description="simulated runs: the arrival rate's scale")
    fleet: dict[str, Any] | None = Field(None, description="simulated runs: the fleet's counts")


class RunMeta(_Strict):
    """run.json: what a run was (scenario, seed, target, machine) and how it ended. Written
    when the run starts and updated as it goes; `status` says how far it got."""

    schema_: Literal["surgecast.run/1"] = Field("surgecast.run/1", alias="schema")
    run_id: str
    source: Literal["measured", "simulated"]
    status: Literal["running", "finished", "interrupted", "not started", "killed"]
    scenario_file: str | None
    scenario: dict[str, Any] = Field(description="the scenario as resolved (its own schema)")
    plan: Literal["scenario", "given"] = Field(
        "scenario", description="given: a plan handed to the run (a staircase), not drawn"
    )
    seed: int
    planned_requests: int = Field(ge=0)
    duration_s: float
    target: RunTarget
    versions: dict[str, str]
    machine: Machine
    started_at: str
    finished_at: str | None = None
    writer: Writer | None = None
    validity: Validity | None = Field(None, description="null while the run is going")
    slos_passed: bool | None = None
    warnings: list[str] = []
    sizing: dict[str, Any] | None = Field(None, description="the prompt-sizing probes")
    generator: Generator | None = None
    turns_not_sent: int | None = None
    telemetry_errors: list[str] = []


class Parameter(_Strict):
    value: float
    stderr: float = Field(ge=0)


class Parameters(_Strict):
    """The linear step-cost model's parameters, in seconds (the covariance's order)."""

    overhead_s: Parameter = Field(description="client-to-engine delay per request")
    base_s: Parameter = Field(description="a step's fixed cost")
    per_decode_seq_s: Parameter = Field(description="per sequence decoding in the step")
    per_prefill_token_s: Parameter = Field(description="per prompt token prefilled in the step")


class FitQuality(_Strict):
    step_rows: int = Field(ge=0, description="engine steps timed")
    overhead_rows: int = Field(ge=0, description="requests the overhead was fitted on")
    r2: float | None = Field(description="null where the step times do not vary")
    rmse_ms: float
    residual_quantiles_ms: list[float] = Field(
        description="per-step residuals (measured - fitted) at simulator.fit.calibrate's levels"
    )


class CostModelChoice(_Strict):
    chosen: str
    held_out_ms: dict[str, float] = Field(description="each candidate's held-out step error")
    typical_step: tuple[float, float] = Field(description="mean decoding sequences, prompt tokens")


class CalibrationDoc(_Strict):
    """calibration.json: the engine model fitted on measured runs, with its uncertainty."""

    schema_: Literal["surgecast.calibration/1"] = Field("surgecast.calibration/1", alias="schema")
    engine: EngineConfig = Field(description="limits and the chosen step-cost model")
    parameters: Parameters
    covariance: list[list[float]] = Field(description="of the parameters, in their order")
    fit: FitQuality
    cost_model: CostModelChoice
    notes: list[str]
    drift: float = Field(description="run-to-run spread of mean step time (relative sd)")
    tokens: TokenMap = Field(description="planned -> served tokens")
    runs: list[str] = Field(description="ids of the runs it was fitted on")

    @field_validator("engine")
    @classmethod
    def _servable(cls, engine: EngineConfig) -> EngineConfig:
        """Limits an engine can run with (a batch of 0 would never answer) and times that are
        never negative."""
        problems = [
            f"{name} must be at least 1, not {getattr(engine, name)}"
            for name in ("max_num_seqs", "kv_cache_tokens", "max_batched_tokens", "block_size")
            if getattr(engine, name) < 1
        ]
        times = {"cold_start_s": engine.cold_start_s, "overhead_s": engine.overhead_s}
        for f in fields(engine.cost):
            value = getattr(engine.cost, f.name)
            for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                times[f"cost.{f.name}" + (f"[{i}]" if isinstance(value, tuple) else "")] = v
        problems += [
            f"{k} must be finite and at least 0, not {v}"
            for k, v in times.items()
            if not (math.isfinite(v) and v >= 0)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return engine

    @field_validator("covariance")
    @classmethod
    def _square(cls, rows: list[list[float]]) -> list[list[float]]:
        n = len(PARAMS)
        if len(rows) != n or any(len(r) != n for r in rows):
            raise ValueError(f"must be {n} x {n}, one row and column per parameter")
        return rows

    @classmethod
    def of(cls, c: Calibration) -> CalibrationDoc:
        f = c.fit
        return cls(
            engine=c.engine,
            parameters=Parameters(
                **{
                    name: Parameter(value=float(v), stderr=float(s))
                    for name, v, s in zip(PARAMS, f.values, f.stderr(), strict=True)
                }
            ),
            covariance=f.covariance.tolist(),
            fit=FitQuality(
                step_rows=f.step_rows,
                overhead_rows=f.overhead_rows,
                r2=_finite(f.r2),
                rmse_ms=f.rmse_s * 1000.0,
                residual_quantiles_ms=[q * 1000.0 for q in f.residual_quantiles_s],
            ),
            cost_model=CostModelChoice(
                chosen=f.chosen,
                held_out_ms={k.name: k.held_out_s * 1000.0 for k in f.candidates},
                typical_step=f.typical_step,
            ),
            notes=c.notes,
            drift=c.drift,
            tokens=c.tokens,
            runs=c.runs,
        )

    def calibration(self) -> Calibration:
        fit = Fit(
            np.array([getattr(self.parameters, p).value for p in PARAMS]),
            np.array(self.covariance),
            self.fit.step_rows,
            self.fit.overhead_rows,
            _nan(self.fit.r2),
            self.fit.rmse_ms / 1000.0,
            tuple(q / 1000.0 for q in self.fit.residual_quantiles_ms),
            None if self.cost_model.chosen == "linear" else self.engine.cost,
            self.cost_model.chosen,
            tuple(Candidate(n, ms / 1000.0) for n, ms in self.cost_model.held_out_ms.items()),
            self.cost_model.typical_step,
        )
        return Calibration(self.engine, fit, self.notes, self.drift, self.tokens, self.runs)


class EstimateDoc(_Strict):
    """A quantity over the seeds (null: not a finite number, e.g. no samples)."""

    mean: float | None
    low: float | None = Field(description="the lowest seed's value")
    high: float | None = Field(description="the highest seed's value")

    @classmethod
    def of(cls, e: Estimate) -> EstimateDoc:
        return cls(mean=_finite(e.mean), low=_finite(e.low), high=_finite(e.high))

    def estimate(self) -> Estimate:
        return Estimate(_nan(self.mean), _nan(self.low), _nan(self.high))


class EvaluationDoc(_Strict):
    """One fleet size simulated over the seeds."""

    replicas: int = Field(ge=0)
    passed: bool = Field(description="every seed met every SLO, under forecast.max_load")
    simulated: bool = Field(description="false: refused unsimulated, its load over max_load")
    load: float = Field(description="offered requests/s over the fleet's saturation throughput")
    binding: str = Field(description="the limit that binds first at this load")
    observed: dict[str, EstimateDoc] = Field(description="per SLO as the scenario wrote it")
    ttft_p50_ms: EstimateDoc
    ttft_p95_ms: EstimateDoc
    e2e_p50_ms: EstimateDoc
    e2e_p95_ms: EstimateDoc
    throughput: EstimateDoc = Field(description="fleet requests/s completed")
    output_tokens_per_s: EstimateDoc
    utilisation: EstimateDoc = Field(description="replicas' busy fraction")
    kv_peak: EstimateDoc = Field(description="fullest KV cache of any replica (fraction)")
    kv_mean: EstimateDoc = Field(description="KV use over replicas and time (fraction)")
    preemptions: EstimateDoc = Field(description="per simulated run, whole fleet")
    slots_full: EstimateDoc = Field(description="share of time a replica had every slot taken")
    rejected: EstimateDoc = Field(description="share of requests the admission queue refused")
    mean_replicas: EstimateDoc
    peak_replicas: EstimateDoc
    cold_starts: EstimateDoc

    @classmethod
    def of(cls, e: Evaluation) -> EvaluationDoc:
        values: dict[str, Any] = {"binding": e.binding}
        for f in fields(Evaluation):
            v = getattr(e, f.name)
            if isinstance(v, Estimate):
                v = EstimateDoc.of(v)
            elif f.name == "observed":
                v = {k: EstimateDoc.of(x) for k, x in v.items()}
            values[f.name] = v
        return cls(**values)

    def evaluation(self) -> Evaluation:
        values: dict[str, Any] = {}
        for f in fields(Evaluation):
            v = getattr(self, f.name)
            if isinstance(v, EstimateDoc):
                v = v.estimate()
            elif f.name == "observed":
                v = {k: x.estimate() for k, x in v.items()}
            values[f.name] = v
        return Evaluation(**values)


def _evaluation(e: EvaluationDoc | None) -> Evaluation | None:
    return None if e is None else e.evaluation()


class ForecastPointDoc(_Strict):
    scale: float = Field(description="of the scenario's arrival rate")
    rate: float = Field(description="requests/s offered")
    best: EvaluationDoc | None = Field(description="the fewest replicas that pass; null: none")
    cost_per_month_usd: float | None
    cost_per_million_tokens_usd: float | None
    tried: list[EvaluationDoc] = Field(description="every fleet size simulated")
    autoscaled: EvaluationDoc | None = Field(description="the scenario's autoscaler, if any")
    autoscaled_cost_per_month_usd: float | None

    @classmethod
    def of(cls, p: ForecastPoint) -> ForecastPointDoc:
        def doc(e: Evaluation | None) -> EvaluationDoc | None:
            return None if e is None else EvaluationDoc.of(e)

        return cls(
            scale=p.scale,
            rate=p.rate,
            best=doc(p.best),
            cost_per_month_usd=p.cost_per_month_usd,
            cost_per_million_tokens_usd=p.cost_per_million_tokens_usd,
            tried=[EvaluationDoc.of(e) for e in p.tried],
            autoscaled=doc(p.autoscaled),
            autoscaled_cost_per_month_usd=p.autoscaled_cost_per_month_usd,
        )

    def point(self) -> ForecastPoint:
        return ForecastPoint(
            self.scale,
            self.rate,
            _evaluation(self.best),
            self.cost_per_month_usd,
            [e.evaluation() for e in self.tried],
            _evaluation(self.autoscaled),
            self.autoscaled_cost_per_month_usd,
        )


class ForecastDoc(_Strict):
    """forecast.json: per scale of the traffic, the fleet that meets every SLO."""

    schema_: Literal["surgecast.forecast/1"] = Field("surgecast.forecast/1", alias="schema")
    points: list[ForecastPointDoc]


class ContractError(ValueError):
    """A document that does not meet its contract: names the file and what is wrong."""


def _write(path: Path, doc: BaseModel) -> None:
    """A document, written whole or not at all."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(doc.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read(path: Path, model: type[M], schema: str) -> M:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ContractError(f"{path}: not readable JSON ({e})") from None
    return parse(data, str(path), model, schema)


def parse(data: Any, where: str, model: type[M], schema: str) -> M:
    """A document's JSON content checked against its contract; ContractError naming `where`
    and every field that does not fit."""
    if not isinstance(data, dict):
        raise ContractError(f"{where}: a JSON object expected, got {type(data).__name__}")
    if "schema" not in data:
        raise ContractError(
            f"{where}: no `schema`: written by an older surgecast; run the command that wrote "
            "it again"
        )
    if data["schema"] != schema:
        raise ContractError(f"{where}: schema {data['schema']!r}, this surgecast reads {schema!r}")
    return validate(data, where, model)


def validate(data: dict[str, Any], where: str, model: type[M]) -> M:
    """`data` as `model`, checked as if read from JSON (JSON has no tuples: strict mode still
    checks every type); a number that is not finite must be null."""
    try:
        text = json.dumps(data, default=str, allow_nan=False)
    except ValueError as e:
        raise ContractError(f"{where}: not JSON ({e})") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        raise ContractError(f"{where}: {_problems(e)}") from None


def _problems(e: ValidationError) -> str:
    """Every field that does not fit, by its path: 'points[0].rate: Input should be...'."""
    lines = []
    for err in e.errors(include_url=False, include_input=False):
        path = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
        lines.append(f"{path.lstrip('.') or '(document)'}: {err['msg']}")
    head = f"{len(lines)} problems: " if len(lines) > 1 else ""
    return head + "; ".join(lines)


def write_run(path: Path, meta: RunMeta) -> None:
    _write(path, meta)


def write_calibration(path: Path, calibration: Calibration) -> None:
    _write(path, CalibrationDoc.of(calibration))


def read_calibration(path: Path) -> Calibration:
    return _read(path, CalibrationDoc, CALIBRATION_SCHEMA).calibration()


def write_forecast(path: Path, points: list[ForecastPoint]) -> None:
    _write(path, ForecastDoc(points=[ForecastPointDoc.of(p) for p in points]))


def read_forecast(path: Path) -> list[ForecastPoint]:
    return [p.point() for p in _read(path, ForecastDoc, FORECAST_SCHEMA).points]


def write_summary(path: Path, summary: Summary) -> None:
    _write(path, SummaryDoc.of(summary))


def read_summary(path: Path) -> SummaryDoc:
    return _read(path, SummaryDoc, SUMMARY_SCHEMA)


def write_backtest(
    path: Path, rows: list[BacktestRow], warnings: list[str], in_sample: bool
) -> None:
    doc = BacktestDoc(
        rows=[BacktestRowDoc.of(r) for r in rows], warnings=warnings, in_sample=in_sample
    )
    _write(path, doc)


def read_backtest(path: Path) -> BacktestDoc:
    return _read(path, BacktestDoc, BACKTEST_SCHEMA)


SCHEMAS: dict[str, type[BaseModel]] = {
    "run": RunMeta,
    "summary": SummaryDoc,
    "calibration": CalibrationDoc,
    "backtest": BacktestDoc,
    "forecast": ForecastDoc,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each document's JSON Schema, by file stem."""
    return {name: model.model_json_schema(by_alias=True) for name, model in SCHEMAS.items()}
