"""Simulator speed: simulated requests and engine steps per wall-clock second.

    python benchmarks/simulator_speed.py

Prints one table; compare rows of one run (the machine is shared and noisy).
"""

from __future__ import annotations

import time

from scenarios.plan import build_plan
from scenarios.spec import parse_scenario
from simulator.engine import EngineConfig, StepCost
from simulator.sim import simulate

ENGINE = EngineConfig(max_num_seqs=32, cost=StepCost(0.015, 0.0008, 0.00006))


def scenario(rate: float, duration: float) -> dict[str, object]:
    return {
        "name": "bench",
        "traffic": {"rate": rate, "duration_s": duration, "seed": 1},
        "workload": {
            "prompt_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 200},
        },
    }


def main() -> None:
    print(
        f"{'replicas':>8} {'rate/s':>8} {'requests':>9} {'chunks':>6} {'wall s':>7} "
        f"{'req/s':>8} {'tokens/s':>10}"
    )
    for replicas, rate, chunks in [(1, 8, True), (1, 8, False), (8, 64, False), (32, 256, False)]:
        plan = build_plan(parse_scenario(scenario(rate, 60)))
        t0 = time.perf_counter()
        records = simulate(plan, ENGINE, replicas=replicas, record_chunks=chunks).records
        wall = time.perf_counter() - t0
        tokens = sum(r.output_tokens or 0 for r in records)
        print(
            f"{replicas:8d} {rate:8g} {len(plan):9d} {chunks!s:>6} {wall:7.2f} "
            f"{len(plan) / wall:8.0f} {tokens / wall:10.0f}"
        )


if __name__ == "__main__":
    main()
