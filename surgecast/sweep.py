"""A measured calibration sweep: open-loop levels up to the knee, a fit on the light ones, a
back-test on the rest.

Levels are Poisson at rising rates (the scenario's workload, its arrival process replaced;
personas with arrivals of their own keep them):
x0.25, x0.5, x1, x2 ... of the scenario's rate, until a level breaks its SLOs, errors climb,
the target falls behind the offered rate, or the generator itself could not keep the plan
(an invalid run). A staircase then measures every batch size up to the limit, so none is
extrapolated: as many requests as the batch holds, sent at once, their answers ending
STAIR_STEPS tokens apart, so the batch steps down from full to one, holding each size. The fit
uses the levels at or under half the knee's rate and the staircase; the others are predicted,
never seen by the fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from scenarios.plan import RequestSpec, build_plan, uncached
from scenarios.spec import Scenario, Traffic
from simulator.fit.backtest import BacktestRow
from simulator.fit.calibrate import Calibration, CalibrationError
from surgecast.calibration import calibrate_runs, declared_limits, limits_from_runs
from surgecast.console import Say, say_stderr
from surgecast.live_run import RunOutcome, run_load
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from surgecast.validity import spoiled_by_generator
from targets.launcher import Launcher

LEVELS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
KNEE_STEPS = 3  # bisections between the last level that kept up and the first that did not
MIN_LEVEL_REQUESTS = 200  # a level lasts long enough for these (a p95 of 200 has 10 above it)
MAX_LEVEL_FACTOR = 4.0  # ... but at most this many times the level duration asked for
MAX_ERROR_RATE = 0.05
MIN_ACHIEVED = 0.9  # of the offered rate: below it the target has fallen behind
STAIR_STEPS = 40  # engine steps each batch size is held for: enough rows to price it
# batch sizes a large batch's staircase holds (all of them up to 16)
STAIR_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def stair_sizes(slots: int) -> list[int]:
    """The batch sizes a staircase holds, largest first."""
    if slots <= 16:
        return list(range(slots, 0, -1))
    return sorted({slots, *(s for s in STAIR_SIZES if s < slots)}, reverse=True)


def staircase(scenario: Scenario, slots: int, hold: int = STAIR_STEPS) -> list[RequestSpec]:
    """`slots` of the scenario's requests (its prompts, first turns only, none a target may have
    cached) sent together, their answers ending `hold` tokens apart size by size: the batch
    steps down from `slots` to 1, holding each size of `stair_sizes` for about `hold` steps."""
    sizes = stair_sizes(slots)
    openers = [s for s in build_plan(scenario) if s.after is None]
    if not openers:
        return []
    lengths: list[int] = []
    for level, (size, below) in enumerate(zip(sizes, [*sizes[1:], 0], strict=True)):
        lengths += [hold * (level + 1)] * (size - below)  # these end after this size's hold
    stairs = [
        replace(openers[i % len(openers)], id=f"stair-{i}", arrival=0.001 * i, max_tokens=n)
        for i, n in enumerate(lengths)
    ]
    return uncached(stairs, f"stair{scenario.traffic.seed}")


@dataclass(frozen=True)
class Level:
    rate: float  # offered requests/s
    outcome: RunOutcome
    stairs: bool = False  # the staircase that measures every batch size

    @property
    def achieved(self) -> float:
        return self.outcome.summary.throughput

    def knee_reason(self) -> str | None:
        """Why this level is past the knee, or None while the target keeps up."""
        s = self.outcome.summary
        if not self.outcome.valid:
            if spoiled_by_generator(self.outcome.reasons):
                return (
                    "the generator could not time it, this machine's limit and not "
                    "necessarily the target's: " + "; ".join(self.outcome.reasons)
                )
            return "the run is invalid: " + "; ".join(self.outcome.reasons)
        if s.error_rate > MAX_ERROR_RATE:
            return f"errors at {s.error_rate:.0%}"
        if s.slos and not s.slos_passed:
            return "SLOs missed"
        if self.achieved < MIN_ACHIEVED * s.request_rate:
            return f"served {self.achieved:.2f} of {s.request_rate:.2f} req/s sent"
        return None


@dataclass(frozen=True)
class SweepResult:
    levels: list[Level]
    calibration: Calibration
    fitted: list[Level]
    held_out: dict[float, list[BacktestRow]]  # per held-out level's rate


def _level(scenario: Scenario, rate: float, duration_s: float, seed: int) -> Scenario:
    """The scenario as one level: Poisson at `rate` for `duration_s`, every other traffic
    setting (its validity limits, in-flight cap, stop grace) kept."""
    kept = scenario.traffic.model_dump(exclude={"arrival", "rate", "duration_s", "seed"})
    traffic = Traffic(rate=rate, duration_s=duration_s, seed=seed, **kept)
    return scenario.model_copy(update={"traffic": traffic})


def sweep(
    scenario: Scenario,
    scenario_file: str,
    out: Path,
    launcher: Launcher,
    *,
    level_s: float = 30.0,
    level_requests: int | None = None,
    batch_limit: int | None = None,
    knee_steps: int | None = None,
    say: Say = say_stderr,
) -> SweepResult:
    """Run the levels into `out/level-N`, fit, back-test; see the module's docstring (None:
    the defaults MIN_LEVEL_REQUESTS, KNEE_STEPS)."""
    level_requests = level_requests or MIN_LEVEL_REQUESTS
    knee_steps = KNEE_STEPS if knee_steps is None else knee_steps
    base = len(build_plan(scenario)) / scenario.traffic.duration_s  # requests/s at x1
    levels: list[Level] = []

    def measure(rate: float) -> Level:
        n = len(levels) + 1
        seconds = level_seconds(rate, level_s, level_requests)
        say(f"sweep level {n}: {rate:.3g} req/s for {seconds:g} s")
        level_scenario = _level(scenario, rate, seconds, scenario.traffic.seed + n)
        outcome = run_load(
            level_scenario,
            scenario_file,
            launcher,
            out=out / f"level-{n}",
            say=say,
            progress=False,
            fresh_prompts=True,
        )
        levels.append(Level(rate, outcome))
        return levels[-1]

    passed = _find_knee(measure, base, knee_steps, say)
    slots = batch_limit or declared_slots(levels[0].outcome.folder) or 16
    stairs_level = _stairs(scenario, scenario_file, out, launcher, slots, say)
    fitted, held = _fitted_and_held(levels, passed)
    calibration = calibrate_runs(
        [lv.outcome.folder for lv in [*fitted, stairs_level]], max_num_seqs=slots
    )
    served = max(lv.achieved for lv in levels)
    calibration = replace(calibration, measured_capacity=served if served > 0 else None)
    held_out = {lv.rate: backtest_run(lv.outcome.folder, calibration) for lv in held}
    return SweepResult([*levels, stairs_level], calibration, fitted, held_out)


def _find_knee(
    measure: Callable[[float], Level], base: float, knee_steps: int, say: Say
) -> float | None:
    """Levels from `base` req/s, doubling until one breaks, then `knee_steps` of geometric
    bisection between the last that passed and the first that broke; the highest rate that
    passed (None: none did)."""
    passed: float | None = None
    failed: float | None = None
    for factor in LEVELS:
        level = measure(base * factor)
        reason = level.knee_reason()
        if reason:
            say(f"sweep: knee reached at {level.rate:.3g} req/s ({reason})")
            failed = level.rate
            break
        passed = level.rate
    for _ in range(knee_steps if passed and failed else 0):
        assert passed is not None and failed is not None
        level = measure(math.sqrt(passed * failed))
        if level.knee_reason():
            failed = level.rate
        else:
            passed = level.rate
    if passed and failed:
        say(f"sweep: knee between {passed:.4g} and {failed:.4g} req/s")
    return passed


def _stairs(
    scenario: Scenario, scenario_file: str, out: Path, launcher: Launcher, slots: int, say: Say
) -> Level:
    """The staircase into `out/staircase`: `slots` requests at once, every batch size held."""
    say(f"sweep staircase: {slots} requests at once, the batch stepping down to 1")
    stairs = _level(scenario, 1.0, 1.0, scenario.traffic.seed + 99)
    outcome = run_load(
        stairs,
        scenario_file,
        launcher,
        out=out / "staircase",
        say=say,
        progress=False,
        plan=staircase(stairs, slots),
    )
    return Level(float(slots), outcome, stairs=True)


def _fitted_and_held(levels: list[Level], passed: float | None) -> tuple[list[Level], list[Level]]:
    """The valid levels the fit takes (at or under half the knee's rate, at least two) and
    those it predicts; CalibrationError when none is valid (an invalid level's times are
    void)."""
    timed = [lv for lv in levels if lv.outcome.valid]
    if not timed:
        raise CalibrationError(
            f"no sweep level could be trusted: the first, at {levels[0].rate:.3g} req/s, was "
            f"invalid ({'; '.join(levels[0].outcome.reasons)}). Lower the scenario's rate, or "
            "give the generator a core of its own (the target and the generator share this "
            "machine's cores), and sweep again"
        )
    knee = passed if passed is not None else timed[0].rate
    fitted = [lv for lv in timed if lv.rate <= 0.5 * knee]
    if len(fitted) < 2:
        fitted = sorted(timed, key=lambda lv: lv.rate)[:2]
    return fitted, [lv for lv in timed if lv not in fitted]


def level_seconds(rate: float, level_s: float, requests: int = MIN_LEVEL_REQUESTS) -> float:
    """`level_s`, longer where it would hold fewer than `requests` (a tail's quantile needs
    them), at most MAX_LEVEL_FACTOR times `level_s`."""
    return round(min(max(level_s, requests / rate), MAX_LEVEL_FACTOR * level_s), 1)


def declared_slots(folder: RunFolder) -> int | None:
    """The batch limit the target reported of itself in a run (None: it reported none)."""
    if "max_num_seqs" not in declared_limits([folder]):
        return None
    limits = limits_from_runs([folder])
    return limits.max_num_seqs if limits else None


def level_rows(result: SweepResult) -> list[list[object]]:
    """One row per level for a table: rate, achieved, TTFT p95, role, knee reason."""
    rows: list[list[object]] = []
    for lv in result.levels:
        s = lv.outcome.summary
        role = "staircase (fit)" if lv.stairs else "fit" if lv in result.fitted else "held out"
        rows.append(
            [
                f"{lv.rate:.3g}",
                f"{lv.achieved:.3g}",
                f"{s.metrics['ttft'].percentiles[95]:,.0f}",
                f"{s.metrics['e2e'].percentiles[95]:,.0f}",
                role,
                lv.knee_reason() or "",
            ]
        )
    return rows


def held_out_rows(result: SweepResult) -> Sequence[BacktestRow]:
    return [row for rows in result.held_out.values() for row in rows]
