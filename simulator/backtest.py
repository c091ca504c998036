"""Back-test: replay a measured run's requests through the calibrated model and compare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scenarios.metrics import metric_samples
from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord
from simulator.calibrate import Calibration
from simulator.sim import SimResult, simulate


@dataclass(frozen=True)
class BacktestRow:
    metric: str
    quantile: int
    measured_ms: float
    simulated_ms: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.simulated_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_pct": self.error_pct}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BacktestRow:
        return cls(
            d["metric"], int(d["quantile"]), float(d["measured_ms"]), float(d["simulated_ms"])
        )


def replay_plan(records: Sequence[RequestRecord]) -> list[RequestSpec]:
    """The measured successful requests as a plan: actual send times, server-counted tokens."""
    return [
        RequestSpec(
            id=r.id,
            arrival=r.start,
            prompt_tokens=r.prompt_tokens or 1,
            max_tokens=max(r.output_tokens or 1, 1),
            persona=r.persona,
            session=r.session,
            turn=r.turn,
        )
        for r in records
        if r.status == "ok" and r.output_tokens
    ]


def backtest(
    records: Sequence[RequestRecord], calibration: Calibration, timeout_s: float = 600.0
) -> tuple[list[BacktestRow], SimResult]:
    plan = replay_plan(records)
    if not plan:
        raise ValueError("no successful requests with token counts to replay")
    replayed = {s.id for s in plan}
    measured = [r for r in records if r.id in replayed]
    result = simulate(plan, calibration.engine, timeout_s=timeout_s)
    rows = []
    for metric in ("ttft", "e2e", "itl"):
        m = metric_samples(measured, metric) * 1000.0
        s = metric_samples(result.records, metric) * 1000.0
        if len(m) and len(s):
            for q in (50, 95):
                rows.append(
                    BacktestRow(metric, q, float(np.percentile(m, q)), float(np.percentile(s, q)))
                )
    return rows, result


def backtest_warnings(
    calibration: Calibration,
    rows: Sequence[BacktestRow],
    max_error_pct: float = 25.0,
    min_r2: float = 0.9,
) -> list[str]:
    """Why a forecast from this calibration deserves less trust; empty when it looks sound."""
    out = []
    if calibration.fit.r2 < min_r2:
        out.append(f"the step-cost fit explains little (R^2 {calibration.fit.r2:.2f} < {min_r2})")
    out += [
        f"back-test {r.metric} p{r.quantile} is off by {r.error_pct:+.0f}% "
        f"(limit {max_error_pct:g}%): forecasts from this calibration are unreliable"
        for r in rows
        if r.metric in ("ttft", "e2e") and abs(r.error_pct) > max_error_pct
    ]
    return out
