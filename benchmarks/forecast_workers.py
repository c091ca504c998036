"""The forecast's wall time against the number of Dask workers running its seeds.

    python benchmarks/forecast_workers.py                      # 1 (in process), 2, 4 local workers
    python benchmarks/forecast_workers.py --workers 1,2        # ... the counts given
    python benchmarks/forecast_workers.py --scheduler tcp://host:8786   # ... and a cluster's

The calibration is a known engine (the demo's reference target: 15 ms a step, 1 ms a decoding
sequence, 0.08 ms a prompt token, 16 sequences); the traffic is scenarios/chatbot.yaml's at x1,
x10, x100 and x1000, 4 seeds of 120 s each. Every row must give the fewest replicas that the
in-process run gives (the `same` column); speed-up is against the first row, in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from scenarios.spec import load_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.fast.warm import warm
from simulator.fit.calibrate import Calibration, Fit
from simulator.forecast.search import ForecastConfig, Forecaster

ROOT = Path(__file__).resolve().parents[1]
COST = StepCost(0.015, 0.001, 0.00008)
SCALES = [1.0, 10.0, 100.0, 1000.0]


def calibration() -> Calibration:
    values = np.array([0.0, COST.base_s, COST.per_decode_seq_s, COST.per_prefill_token_s])
    engine = EngineConfig(max_num_seqs=16, kv_cache_tokens=32768, cost=COST)
    return Calibration(engine, Fit(values, np.zeros((4, 4)), 100, 10, 1.0, 0.0))


def timed(config: ForecastConfig) -> tuple[float, list[int | None], int]:
    scenario = load_scenario(str(ROOT / "scenarios" / "chatbot.yaml"))
    start = time.perf_counter()
    points = Forecaster(scenario, calibration(), config).run(SCALES)
    wall = time.perf_counter() - start
    fleets = sum(len(p.tried) for p in points)
    return wall, [p.best.replicas if p.best else None for p in points], fleets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", default="1,2,4", help="local worker counts (1: in process)")
    p.add_argument("--scheduler", help="also time the Dask cluster at this address")
    p.add_argument("--seeds", type=int, default=4)
    a = p.parse_args()
    warm(print)
    runs: list[tuple[str, ForecastConfig]] = [
        (f"{n} local" if n > 1 else "1 (in process)", ForecastConfig(a.seeds, workers=n))
        for n in map(int, a.workers.split(","))
    ]
    if a.scheduler:
        runs.append((a.scheduler, ForecastConfig(a.seeds, scheduler=a.scheduler)))
    print(f"{os.cpu_count()} cores; x{', x'.join(f'{s:g}' for s in SCALES)}, {a.seeds} seeds")
    print(f"| {'workers':<18} | wall s | speed-up | fleets | replicas per scale | same |")
    print(f"|{'-' * 20}|--------|----------|--------|--------------------|------|")
    first: tuple[float, list[int | None]] | None = None
    for label, config in runs:
        wall, replicas, fleets = timed(config)
        first = first or (wall, replicas)
        same = "yes" if replicas == first[1] else "NO"
        said = ", ".join(str(r) for r in replicas)
        print(
            f"| {label:<18} | {wall:6.1f} | {first[0] / wall:7.2f}x | {fleets:6d} | "
            f"{said:<18} | {same:<4} |"
        )


if __name__ == "__main__":
    main()
