"""The engine model's documents: calibration.json (the fit and its uncertainty), backtest.json
(its predictions of a run, with intervals) and forecast.json (the fleet per traffic scale)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from simulator.engine.core import EngineConfig
from simulator.fit.backtest import BacktestRow
from simulator.fit.calibrate import PARAMS, Calibration, Fit
from simulator.fit.costfit import Candidate
from simulator.fit.tokenmap import TokenMap
from simulator.forecast.search import Evaluation, ForecastPoint
from simulator.forecast.seeds import Estimate
from surgecast.contracts.base import (
    Strict,
    finite,
    nan_of,
    read_doc,
    servable_engine,
    write_doc,
)

BACKTEST_SCHEMA = "surgecast.backtest/1"
CALIBRATION_SCHEMA = "surgecast.calibration/1"
FORECAST_SCHEMA = "surgecast.forecast/1"


class BacktestRowDoc(Strict):
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
                "measured": finite(r.measured),
                "predicted": finite(r.predicted),
                "low": finite(r.low),
                "high": finite(r.high),
                "error_pct": finite(r.error_pct),
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


class BacktestDoc(Strict):
    """backtest.json: a calibration's predictions of one run, with their intervals."""

    schema_: Literal["surgecast.backtest/1"] = Field("surgecast.backtest/1", alias="schema")
    rows: list[BacktestRowDoc]
    warnings: list[str]
    in_sample: bool = Field(description="the calibration was fitted on this very run")


class Parameter(Strict):
    value: float
    stderr: float = Field(ge=0)


class Parameters(Strict):
    """The linear step-cost model's parameters, in seconds (the covariance's order)."""

    overhead_s: Parameter = Field(description="client-to-engine delay per request")
    base_s: Parameter = Field(description="a step's fixed cost")
    per_decode_seq_s: Parameter = Field(description="per sequence decoding in the step")
    per_prefill_token_s: Parameter = Field(description="per prompt token prefilled in the step")


class FitQuality(Strict):
    step_rows: int = Field(ge=0, description="engine steps timed")
    overhead_rows: int = Field(ge=0, description="requests the overhead was fitted on")
    r2: float | None = Field(description="null where the step times do not vary")
    rmse_ms: float
    residual_quantiles_ms: list[float] = Field(
        description="per-step residuals (measured - fitted) at simulator.fit.calibrate's levels"
    )


class CostModelChoice(Strict):
    chosen: str
    held_out_ms: dict[str, float] = Field(description="each candidate's held-out step error")
    typical_step: tuple[float, float] = Field(description="mean decoding sequences, prompt tokens")


class CalibrationDoc(Strict):
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
    measured_capacity_rps: float | None = Field(
        None,
        gt=0,
        description="requests/s the target served at most in the sweep that calibrated it: a "
        "forecast never loads a replica beyond it",
    )

    @field_validator("engine")
    @classmethod
    def _servable(cls, engine: EngineConfig) -> EngineConfig:
        return servable_engine(engine)

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
                r2=finite(f.r2),
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
            measured_capacity_rps=c.measured_capacity,
        )

    def calibration(self) -> Calibration:
        fit = Fit(
            np.array([getattr(self.parameters, p).value for p in PARAMS]),
            np.array(self.covariance),
            self.fit.step_rows,
            self.fit.overhead_rows,
            nan_of(self.fit.r2),
            self.fit.rmse_ms / 1000.0,
            tuple(q / 1000.0 for q in self.fit.residual_quantiles_ms),
            None if self.cost_model.chosen == "linear" else self.engine.cost,
            self.cost_model.chosen,
            tuple(Candidate(n, ms / 1000.0) for n, ms in self.cost_model.held_out_ms.items()),
            self.cost_model.typical_step,
        )
        return Calibration(
            self.engine,
            fit,
            self.notes,
            self.drift,
            self.tokens,
            self.runs,
            self.measured_capacity_rps,
        )


class EstimateDoc(Strict):
    """A quantity over the seeds (null: not a finite number, e.g. no samples)."""

    mean: float | None
    low: float | None = Field(description="the lowest seed's value")
    high: float | None = Field(description="the highest seed's value")

    @classmethod
    def of(cls, e: Estimate) -> EstimateDoc:
        return cls(mean=finite(e.mean), low=finite(e.low), high=finite(e.high))

    def estimate(self) -> Estimate:
        return Estimate(nan_of(self.mean), nan_of(self.low), nan_of(self.high))


UNKNOWN = Estimate(math.nan, math.nan, math.nan)


class EvaluationDoc(Strict):
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
    core: str = Field(
        "", description="the simulator core its seeds ran on: fast, reference ('': none ran)"
    )
    mean_replicas: EstimateDoc
    peak_replicas: EstimateDoc
    cold_starts: EstimateDoc
    input_tokens_per_s: EstimateDoc | None = Field(
        None, description="prompt tokens of the requests answered, per second (null: not kept)"
    )
    sessions_per_s: EstimateDoc | None = Field(
        None, description="sessions (conversations) started per second (null: not kept)"
    )

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
            elif v is None and f.name in ("input_tokens_per_s", "sessions_per_s"):
                v = UNKNOWN  # a forecast.json written before they were kept
            elif f.name == "observed":
                v = {k: x.estimate() for k, x in v.items()}
            values[f.name] = v
        return Evaluation(**values)


def _evaluation(e: EvaluationDoc | None) -> Evaluation | None:
    return None if e is None else e.evaluation()


class ForecastPointDoc(Strict):
    scale: float = Field(description="of the scenario's arrival rate")
    rate: float = Field(description="requests/s offered")
    best: EvaluationDoc | None = Field(description="the fewest replicas that pass; null: none")
    cost_per_month_usd: float | None
    cost_per_million_tokens_usd: float | None
    tried: list[EvaluationDoc] = Field(description="every fleet size simulated")
    autoscaled: EvaluationDoc | None = Field(description="the scenario's autoscaler, if any")
    autoscaled_cost_per_month_usd: float | None
    replicas_low: int | None = Field(
        None, description="the fewest replicas at the fast edge of the step time's 90% band"
    )
    replicas_high: int | None = Field(
        None, description="... at its slow edge (null: not met there, or not computed)"
    )

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
            replicas_low=p.replicas_low,
            replicas_high=p.replicas_high,
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
            self.replicas_low,
            self.replicas_high,
        )


class ForecastDoc(Strict):
    """forecast.json: per scale of the traffic, the fleet that meets every SLO."""

    schema_: Literal["surgecast.forecast/1"] = Field("surgecast.forecast/1", alias="schema")
    points: list[ForecastPointDoc]


def write_calibration(path: Path, calibration: Calibration) -> None:
    write_doc(path, CalibrationDoc.of(calibration))


def read_calibration(path: Path) -> Calibration:
    return read_doc(path, CalibrationDoc, CALIBRATION_SCHEMA).calibration()


def write_forecast(path: Path, points: list[ForecastPoint]) -> None:
    write_doc(path, ForecastDoc(points=[ForecastPointDoc.of(p) for p in points]))


def read_forecast(path: Path) -> list[ForecastPoint]:
    return [p.point() for p in read_doc(path, ForecastDoc, FORECAST_SCHEMA).points]


def write_backtest(
    path: Path, rows: list[BacktestRow], warnings: list[str], in_sample: bool
) -> None:
    doc = BacktestDoc(
        rows=[BacktestRowDoc.of(r) for r in rows], warnings=warnings, in_sample=in_sample
    )
    write_doc(path, doc)


def read_backtest(path: Path) -> BacktestDoc:
    return read_doc(path, BacktestDoc, BACKTEST_SCHEMA)
