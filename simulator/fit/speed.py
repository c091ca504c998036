"""How fast a run's target stepped against a cost model: its timed steps' durations over what
the model predicts for them, over the whole run and window by window (how its speed wandered:
the step-time band of a forecast)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenarios.records import RequestRecord
from simulator.engine.stepcost import CostModel
from simulator.fit.calibrate import recover_steps, streamed
from simulator.fit.costfit import StepRows, predict


def _timed_steps(
    records: Sequence[RequestRecord], cost: CostModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For the run's timed steps: end times, durations and what `cost` predicts for them (s);
    None when the run has too few."""
    ok = streamed(records)
    if sum(len(r.chunk_times) for r in ok) < 3 or not any(len(r.chunk_times) > 1 for r in ok):
        return None
    steps = recover_steps(ok)
    rows = np.flatnonzero(steps.busy)
    if len(rows) < 8:
        return None
    y = steps.end[rows] - steps.end[rows - 1]
    each = StepRows(
        np.ones(len(rows)), steps.decode[rows], steps.prefill_tokens[rows], steps.context[rows], y
    )
    return steps.end[rows], y, predict(cost, each)  # as cost.duration, vectorised


SPEED_WINDOW_S = 20.0
SPEED_WINDOW_STEPS = 50  # fewer timed steps: the window is left out


@dataclass(frozen=True)
class StepSpeed:
    """A run's timed steps' duration over what a cost model predicts for them (1.0: as
    fitted): over the whole run (None: too few timed steps) and in each window of it, which
    says how the target's speed wandered (a run at 80% load inherits whatever speed the
    engine has then)."""

    whole: float | None
    windows: list[float]


def step_speed(
    records: Sequence[RequestRecord], cost: CostModel, window_s: float = SPEED_WINDOW_S
) -> StepSpeed:
    """The run's StepSpeed against `cost`, its steps recovered once."""
    timed = _timed_steps(records, cost)
    if timed is None:
        return StepSpeed(None, [])
    end, took, fitted = timed
    whole = float(took.sum() / fitted.sum()) if fitted.sum() > 0 else None
    window = ((end - end[0]) // window_s).astype(int)
    windows = []
    for w in np.unique(window):
        k = window == w
        if k.sum() >= SPEED_WINDOW_STEPS and fitted[k].sum() > 0:
            windows.append(float(took[k].sum() / fitted[k].sum()))
    return StepSpeed(whole, windows)


def step_time_ratio(records: Sequence[RequestRecord], cost: CostModel) -> float | None:
    """`step_speed`'s whole-run ratio."""
    return step_speed(records, cost).whole
