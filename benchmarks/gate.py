"""Gate benchmark: how often the regression gate cries wolf, and how often it catches a slowdown.

    python benchmarks/gate.py                      # 200 pairs a row: 60 s x1, x3, x10 (~15 min)
    python benchmarks/gate.py --pairs 400 --budget 5 --rows 60x1 120x1 60x5

Each pair is a baseline and a candidate simulated from independent plans (different seeds: the
traffic differs as two runs' would; `--same-plan`: the same seeds on both sides, as a scenario's
fixed seed gives, leaving no noise in a simulation), one replica of a fixed engine at about 55%
of its saturation throughput. With no change both use the same engine; with the slowdown the
candidate's step costs are x1.10. The gate judges `p(95) regress < BUDGET%` on TTFT and on E2E
with the default 95% bootstrap intervals (2000 resamples; runs, then blocks of requests); a
metric fails only when its regression is significant and over budget. A row `60x3` is three
60-second runs a side.
`--live` sends the same traffic to the reference target (`reference_target.slowdown` for the
slower candidate) instead: slow, for a handful of pairs. Printed: false-alarm rate (no change,
failed) and power (slowdown, failed), each with a 95% Wilson interval, and how often the interval
excluded 0 with no change (nominal 5%).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scenarios.plan import build_plan
from scenarios.regress import parse_budget
from scenarios.spec import parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.engine.stepcost import scaled
from simulator.replay.sim import simulate
from surgecast.compare import Run, compare
from surgecast.gate import judge_budget

COST = StepCost(0.015, 0.0008, 0.00006)
ENGINE = EngineConfig(max_num_seqs=32, cost=COST)
RATE = 4.0  # requests/s: about 55% of this engine's saturation with the workload below
METRICS = ("ttft", "e2e")


def scenario(duration: float, seed: int) -> dict[str, object]:
    return {
        "name": "gate-bench",
        "traffic": {"rate": RATE, "duration_s": duration, "seed": seed},
        "workload": {
            "prompt_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 200},
        },
    }


def run(duration: float, seed: int, slowdown: float) -> Run:
    plan = build_plan(parse_scenario(scenario(duration, seed)))
    engine = ENGINE.with_cost(scaled(ENGINE.cost, slowdown))
    result = simulate(plan, engine, record_chunks=False)
    return Run.of(f"seed {seed}", result.table)


def live_run(duration: float, seed: int, slowdown: float) -> Run:
    """The same traffic sent to the reference target (serving ENGINE, slowed by `slowdown`)."""
    from surgecast.gate import load_run
    from surgecast.live_run import run_load
    from targets.reference_launch import ReferenceLauncher

    data = scenario(duration, seed)
    cost = COST  # linear: the reference target's step spec is
    data["reference_target"] = {
        "max_num_seqs": ENGINE.max_num_seqs,
        "cold_start_s": 0.2,
        "slowdown": slowdown,
        "step": {
            "base_ms": cost.base_s * 1000,
            "per_decode_seq_ms": cost.per_decode_seq_s * 1000,
            "per_prefill_token_ms": cost.per_prefill_token_s * 1000,
        },
    }
    data["telemetry"] = {"prometheus": False, "gpu": False}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        spec = parse_scenario(data)
        launcher = ReferenceLauncher(spec.reference_target)
        run_load(spec, "gate-bench.yaml", launcher, out=out, say=lambda _: None, progress=False)
        return load_run(out)  # InvalidRun (a run that fell behind) stops the benchmark


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:6.1%} [{lo:5.1%}, {hi:5.1%}]"


def row(
    duration: float,
    repeats: int,
    pairs: int,
    budget: float,
    slowdown: float,
    same_plan: bool,
    make: Callable[[float, int, float], Run] = run,
) -> list[str]:
    budgets = [parse_budget(m, f"p(95) regress < {budget:g}%") for m in METRICS]
    false_alarm = {m: 0 for m in METRICS}
    power = {m: 0 for m in METRICS}
    significant = {m: 0 for m in METRICS}
    either = [0, 0]  # the gate as a whole (both budgets): false alarms, detections
    seed = 0
    for _ in range(pairs):
        sides = []
        for factor in (1.0, 1.0, slowdown):  # baseline, unchanged candidate, slower candidate
            sides.append([make(duration, seed + i, factor) for i in range(repeats)])
            seed += 0 if same_plan else repeats
        seed += repeats if same_plan else 0
        for j, candidate in enumerate(sides[1:]):
            comparison = compare(sides[0], candidate, [(m, "p95") for m in METRICS], seed=seed)
            failed = False
            for b in budgets:
                change = comparison.find(b.metric, "p95")
                assert change is not None
                verdict = judge_budget(b, change)
                if j == 0:
                    false_alarm[b.metric] += not verdict.passed
                    significant[b.metric] += change.significant
                else:
                    power[b.metric] += not verdict.passed
                failed |= not verdict.passed
            either[j] += failed
    label = f"{duration:g} s x{repeats}" + (" live" if make is live_run else "")
    cells = [label]
    for m in METRICS:
        cells += [_rate(false_alarm[m], pairs), _rate(power[m], pairs)]
    cells += [_rate(either[0], pairs), _rate(either[1], pairs)]
    cells += [" / ".join(f"{significant[m] / pairs:.0%}" for m in METRICS)]
    return cells


def _shape(text: str) -> tuple[float, int]:
    duration, _, repeats = text.partition("x")
    return float(duration), int(repeats or 1)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=200, help="pairs per row and case (default 200)")
    p.add_argument("--budget", type=float, default=5.0, help="p95 budget in %% (default 5)")
    p.add_argument("--slowdown", type=float, default=1.10, help="step-cost factor (default 1.10)")
    p.add_argument(
        "--rows", nargs="+", default=["60x1", "60x3", "60x10"], help="SECONDSxREPEATS rows"
    )
    p.add_argument(
        "--same-plan",
        action="store_true",
        help="both sides replay the same plans (a scenario's fixed seed): no traffic noise",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="send the runs to the reference target instead of simulating them (slow: keep "
        "--pairs and the rows small, e.g. --pairs 10 --rows 10x1)",
    )
    a = p.parse_args(argv)
    print(
        f"{a.pairs} pairs a case; budgets p(95) regress < {a.budget:g}% on TTFT and E2E; "
        f"slowdown: step cost x{a.slowdown:g}; {RATE:g} req/s, one replica; 95% Wilson intervals; "
        + ("both sides replay the same plans" if a.same_plan else "independent plans (seeds)")
    )
    headers = ["run a side"]
    for m in METRICS:
        headers += [f"{m} false alarms", f"{m} power"]
    headers += ["gate false alarms", "gate power", "CI excl. 0, no change (ttft/e2e)"]
    print(" | ".join(headers))
    for shape in a.rows:
        t0 = time.perf_counter()
        make = live_run if a.live else run
        cells = row(*_shape(shape), a.pairs, a.budget, a.slowdown, a.same_plan, make)
        print(" | ".join(cells) + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
