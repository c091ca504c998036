"""Calibrating the engine model from run folders: their records laid end to end, the limits
their target declared (or the command line gives), step-time drift and saturation notes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from scenarios.records import RequestRecord
from simulator.engine.core import EngineConfig
from simulator.fit.backtest import replay_plan
from simulator.fit.calibrate import Calibration, CalibrationError, calibrate
from simulator.fit.speed import SPEED_WINDOW_S, step_speed
from simulator.forecast.capacity import saturation_throughput
from surgecast.rundir import RunFolder

DRIFT_NOTE = 0.05  # step-time drift (between or within calibration runs) worth a note


def limits_from_runs(folders: Sequence[RunFolder]) -> EngineConfig | None:
    """Batch limits the runs' target declared (reference target, llama-server, vLLM), if any."""
    for f in folders:
        target = f.meta().target
        if target.engine is not None:
            return target.engine
        limits = target.limits
        if limits:
            default = EngineConfig()
            return replace(
                default,
                max_num_seqs=int(limits.get("max_num_seqs", default.max_num_seqs)),
                kv_cache_tokens=int(limits.get("kv_cache_tokens", default.kv_cache_tokens)),
                max_batched_tokens=int(
                    limits.get("max_batched_tokens", default.max_batched_tokens)
                ),
                block_size=int(limits.get("block_size", default.block_size)),
                enable_prefix_caching=bool(
                    limits.get("enable_prefix_caching", default.enable_prefix_caching)
                ),
            )
    return None


def declared_limits(folders: Sequence[RunFolder]) -> set[str]:
    """Which batch limits the runs' target declared (all of the reference target's)."""
    for f in folders:
        target = f.meta().target
        if target.engine is not None:
            return {"max_num_seqs", "kv_cache_tokens", "max_batched_tokens"}
        if target.limits:
            return set(target.limits)
    return set()


def calibrate_runs(
    folders: Sequence[RunFolder],
    *,
    max_num_seqs: int | None = None,
    kv_cache_tokens: int | None = None,
) -> Calibration:
    records: list[RequestRecord] = []
    offset = 0.0
    for f in folders:
        if not streamed(f):
            raise CalibrationError(
                f"{f.path}: calibration needs streamed responses (rerun with streaming on: "
                "target.stream: true)"
            )
    runs = [f.records() for f in folders]  # read once: a bad line is warned about once
    for run in runs:  # lay the runs end to end so their steps never interleave
        for r in run:
            records.append(_shifted(r, offset))
        offset = max((r.end or r.start for r in records), default=offset) + 1000.0
    declared = limits_from_runs(folders)
    limits = declared or EngineConfig()
    if max_num_seqs:
        limits = replace(limits, max_num_seqs=max_num_seqs)
    if kv_cache_tokens:
        limits = replace(limits, kv_cache_tokens=kv_cache_tokens)
    calibration = calibrate(records, limits)
    notes = [*calibration.notes, *_saturation_notes(folders, calibration)]
    calibration = replace(calibration, notes=notes, runs=[_run_id(f) for f in folders])
    if not all(math.isfinite(v) for v in calibration.fit.values):
        raise CalibrationError(
            "the fit is not finite: the records do not determine the step cost "
            "(check the run's records, or rerun with more requests)"
        )
    calibration = _with_drift(calibration, runs)
    guessed = []  # only limits neither the target nor the command line gave
    from_target = declared_limits(folders)
    if "max_num_seqs" not in from_target and not max_num_seqs:
        guessed.append((f"max_num_seqs {limits.max_num_seqs}", "--max-num-seqs"))
    if "kv_cache_tokens" not in from_target and not kv_cache_tokens:
        guessed.append((f"KV cache {limits.kv_cache_tokens} tokens", "--kv-cache-tokens"))
    if guessed:
        assumed = (
            f"batch limits are ASSUMED ({', '.join(g[0] for g in guessed)}): give "
            f"{' and '.join(g[1] for g in guessed)} with the target's real settings, "
            "they bound every forecast"
        )
        calibration = replace(calibration, notes=[*calibration.notes, assumed])
    return calibration


def _with_drift(calibration: Calibration, runs: Sequence[Sequence[RequestRecord]]) -> Calibration:
    """The calibration with its step-time drift: the larger of the spread between the runs'
    speeds and the spread of 20 s windows within them (a held-out run may meet either)."""
    cost = calibration.engine.cost
    speeds = [step_speed(run, cost) for run in runs]
    known = [s.whole for s in speeds if s.whole is not None]
    windows = [w for s in speeds for w in s.windows]
    between = float(np.std(known, ddof=1)) if len(known) >= 2 else 0.0
    within = float(np.std(windows, ddof=1)) if len(windows) >= 2 else 0.0
    calibration = replace(calibration, drift=max(between, within))
    notes = []
    if between > DRIFT_NOTE:
        notes.append(
            f"step time drifted between the runs ({between:.0%} relative sd, runs at "
            + ", ".join(f"{r:.2f}" for r in known)
            + " x the fit): the target's speed changed; intervals include it"
        )
    if within > DRIFT_NOTE:
        notes.append(
            f"step time wandered within the runs ({within:.0%} relative sd over "
            f"{len(windows)} windows of {SPEED_WINDOW_S:g} s): intervals include it"
        )
    return replace(calibration, notes=[*calibration.notes, *notes])


NEAR_SATURATION = 0.85  # a run's load, against the calibrated saturation throughput


def _saturation_notes(folders: Sequence[RunFolder], calibration: Calibration) -> list[str]:
    """A note for each run sent near or beyond what the calibrated replica can serve: there,
    queueing amplifies any error of the fit, and a forecast leans on that edge."""
    notes = []
    for f in folders:
        records = f.records()
        plan = replay_plan(records)
        span = max((r.end or r.start for r in records), default=0.0) - min(
            (r.start for r in records), default=0.0
        )
        if not plan or span <= 0:
            continue
        load = len(records) / span / saturation_throughput(calibration.engine, plan)
        if load >= NEAR_SATURATION:
            notes.append(
                f"{f.path.name} ran at {load:.0%} of the calibrated saturation throughput: near "
                "saturation small errors of the fit grow into large latency errors; calibrate "
                "on lighter loads and back-test this one"
            )
    return notes


def _shifted(r: RequestRecord, dt: float) -> RequestRecord:
    if dt == 0:
        return r
    return replace(
        r,
        intended_start=r.intended_start + dt,
        start=r.start + dt,
        first_token=None if r.first_token is None else r.first_token + dt,
        end=None if r.end is None else r.end + dt,
        chunk_times=[t + dt for t in r.chunk_times],
    )


def _run_id(folder: RunFolder) -> str:
    return folder.meta().run_id


def in_sample(folder: RunFolder, calibration: Calibration) -> bool:
    """The calibration was fitted on this run: its back-test cannot show a forecast's error."""
    return _run_id(folder) in calibration.runs


def streamed(folder: RunFolder) -> bool:
    """False when the run's scenario turned streaming off (its records time no tokens)."""
    target = folder.meta().scenario.get("target")
    return not (isinstance(target, dict) and target.get("stream") is False)
