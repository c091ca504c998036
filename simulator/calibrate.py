"""Fit the engine's step cost and request overhead from black-box request records.

Every running sequence gets one token per engine step, so the chunk times of all requests cluster
at step boundaries. Between two consecutive boundaries where some request got a token at both, the
engine was busy the whole time, so the gap is one step:

    gap = base + per_decode_seq * (requests decoding) + per_prefill_token * (prompt tokens prefilled)

A request that arrived to an idle engine adds one more equation:

    ttft = overhead + base + per_prefill_token * prompt_tokens

Both sets go into one robust, non-negative least-squares fit (scipy). Batch limits (max_num_seqs,
KV capacity) cannot be seen from below saturation; they come from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from scenarios.records import RequestRecord
from simulator.engine import EngineConfig, StepCost

PARAMS = ("overhead_s", "base_s", "per_decode_seq_s", "per_prefill_token_s")


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Fit:
    values: np.ndarray  # in the order of PARAMS
    covariance: np.ndarray
    step_rows: int
    idle_rows: int
    r2: float
    rmse_s: float

    def stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    def cost(self) -> StepCost:
        _, base, per_seq, per_token = self.values
        return StepCost(float(base), float(per_seq), float(per_token))

    def sample_costs(self, rng: np.random.Generator, n: int) -> list[tuple[StepCost, float]]:
        """Parameter sets drawn from the fit's uncertainty (truncated at zero), for error bars."""
        draws = rng.multivariate_normal(self.values, self.covariance, size=n, method="svd")
        draws = np.clip(draws, 0.0, None)
        return [(StepCost(*map(float, d[1:])), float(d[0])) for d in draws]


@dataclass(frozen=True)
class Calibration:
    engine: EngineConfig
    fit: Fit
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        f = self.fit
        return {
            "engine": self.engine.to_dict(),
            "parameters": {
                name: {"value": float(v), "stderr": float(s)}
                for name, v, s in zip(PARAMS, f.values, f.stderr(), strict=True)
            },
            "covariance": f.covariance.tolist(),
            "fit": {"step_rows": f.step_rows, "idle_rows": f.idle_rows, "r2": f.r2,
                    "rmse_ms": f.rmse_s * 1000.0},
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        values = np.array([d["parameters"][p]["value"] for p in PARAMS])
        fd = d["fit"]
        fit = Fit(values, np.array(d["covariance"]), fd["step_rows"], fd["idle_rows"], fd["r2"],
                  fd["rmse_ms"] / 1000.0)
        return cls(EngineConfig.from_dict(d["engine"]), fit, list(d.get("notes", [])))


def _cluster_steps(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign every chunk to a step: returns (step time, request index, token index) per chunk."""
    times, owners, positions = [], [], []
    for i, r in enumerate(records):
        times.extend(r.chunk_times)
        owners.extend([i] * len(r.chunk_times))
        positions.extend(range(len(r.chunk_times)))
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")
    return t[order], np.asarray(owners)[order], np.asarray(positions)[order]


def _step_rows(records: Sequence[RequestRecord]) -> tuple[list[list[float]], list[float]]:
    t, owner, pos = _cluster_steps(records)
    if len(t) < 3:
        return [], []
    gaps = np.concatenate([np.diff(r.chunk_times) for r in records if len(r.chunk_times) > 1])
    tol = 0.3 * float(np.median(gaps)) if len(gaps) else 0.0
    step_of = np.concatenate([[0], np.cumsum(np.diff(t) > tol)])
    n_steps = int(step_of[-1]) + 1
    start = np.full(n_steps, np.inf)
    np.minimum.at(start, step_of, t)  # earliest arrival of each step's chunks
    # which step each request's previous chunk was in
    chunk_step: dict[tuple[int, int], int] = {
        (int(o), int(p)): int(s) for o, p, s in zip(owner, pos, step_of, strict=True)
    }
    decode = np.zeros(n_steps)
    continuing = np.zeros(n_steps, dtype=bool)
    prefill_tokens = np.zeros(n_steps)
    for (o, p), s in chunk_step.items():
        if p == 0:
            prefill_tokens[s] += records[o].prompt_tokens or 0
        else:
            decode[s] += 1
            if chunk_step[(o, p - 1)] == s - 1:
                continuing[s] = True
    rows, ys = [], []
    for s in range(1, n_steps):
        if continuing[s]:
            rows.append([0.0, 1.0, decode[s], prefill_tokens[s]])
            ys.append(start[s] - start[s - 1])
    return rows, ys


def _idle_rows(records: Sequence[RequestRecord]) -> tuple[list[list[float]], list[float]]:
    """TTFT of requests that found nothing else in flight from their send to their first token."""
    ok = [r for r in records if r.status == "ok" and r.first_token is not None and r.end]
    spans = sorted((r.start, r.end or r.start) for r in records)
    starts = np.array([s for s, _ in spans])
    ends = np.maximum.accumulate(np.array([e for _, e in spans])) if spans else np.empty(0)
    rows, ys = [], []
    for r in ok:
        i = int(np.searchsorted(starts, r.start, side="left"))
        j = int(np.searchsorted(starts, r.first_token, side="left"))
        busy_before = i > 0 and ends[i - 1] > r.start
        if busy_before or j > i + 1:  # something in flight, or a request joined its prefill
            continue
        rows.append([1.0, 1.0, 0.0, float(r.prompt_tokens or 0)])
        ys.append((r.first_token or 0.0) - r.start)
    return rows, ys


def fit_step_cost(records: Sequence[RequestRecord]) -> Fit:
    ok = [r for r in records if r.status == "ok" and r.chunk_times]
    step_x, step_y = _step_rows(ok)
    idle_x, idle_y = _idle_rows(ok)
    if len(step_x) < 8:
        raise CalibrationError(
            f"only {len(step_x)} usable engine steps in {len(ok)} successful streamed requests: "
            "calibration needs streamed responses with several tokens each and some concurrency"
        )
    x = np.array(step_x + idle_x)
    y = np.array(step_y + idle_y)
    identifiable = np.ptp(x, axis=0) > 0
    identifiable[1] = True  # the intercept (base) is always fitted
    if not idle_x:
        identifiable[0] = False
    xs = x[:, identifiable]
    scale = np.maximum(np.abs(xs).max(axis=0), 1e-12)
    x0 = np.linalg.lstsq(xs / scale, y, rcond=None)[0].clip(1e-9, None)
    sol = least_squares(lambda b: (xs / scale) @ b - y, x0, bounds=(0.0, np.inf),
                        loss="soft_l1", f_scale=max(float(np.median(np.abs(y))) * 0.1, 1e-4))
    beta = sol.x / scale
    resid = y - xs @ beta
    dof = max(len(y) - xs.shape[1], 1)
    sigma2 = float(resid @ resid) / dof
    cov_small = sigma2 * np.linalg.pinv(xs.T @ xs)
    values = np.zeros(len(PARAMS))
    values[identifiable] = beta
    cov = np.zeros((len(PARAMS), len(PARAMS)))
    idx = np.flatnonzero(identifiable)
    cov[np.ix_(idx, idx)] = cov_small
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return Fit(values, cov, len(step_x), len(idle_x), r2, float(np.sqrt(np.mean(resid**2))))


def calibrate(records: Sequence[RequestRecord], limits: EngineConfig) -> Calibration:
    """Fitted step cost and overhead on top of `limits` (max_num_seqs, KV capacity, cold start)."""
    fit = fit_step_cost(records)
    notes = []
    if fit.idle_rows == 0:
        notes.append("no request found the engine idle: overhead_s not identifiable, set to 0")
    names = ("overhead", "base", "per decode sequence", "per prefill token")
    for name, v, s in zip(names, fit.values, fit.stderr(), strict=True):
        if v > 0 and s > v:
            notes.append(f"{name} cost is poorly determined ({v:.3g} +- {s:.3g} s)")
    engine = limits.with_cost(fit.cost(), overhead_s=float(fit.values[0]))
    return Calibration(engine, fit, notes)
