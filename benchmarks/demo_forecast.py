"""The demo's forecast, timed scale by scale: each scale's search, its 90% interval and the fleets
it simulated (the aim of issue 23: the x1000 point in under 10 s on this 2-core machine).

    python benchmarks/demo_forecast.py          # on the latest `make demo` run's calibration
    python benchmarks/demo_forecast.py --calibration reports/chatbot-X/calibration.json

scenarios/chatbot.yaml's forecast as `make demo` runs it (x1, x10, x100, x1000; its seeds and
simulated seconds; its interval, from the calibration's uncertainty; a local Dask cluster, one
worker per core), on a demo run's calibration (default: the latest reports/chatbot-*). A
scale's time runs from its first fleet's start to its interval's end (the scales below it gave
its search a starting point, as in the demo); each run in a fresh cluster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scenarios.spec import load_scenario
from simulator.fast.warm import warm
from simulator.fit.calibrate import Calibration
from simulator.forecast.search import Evaluation, ForecastConfig, Forecaster, ForecastPoint
from surgecast.contracts.model import read_calibration

ROOT = Path(__file__).resolve().parents[1]
SCALES = [1.0, 10.0, 100.0, 1000.0]


class Timed(Forecaster):
    """A forecaster noting when each scale's first simulated fleet began and its interval
    ended, and how many fleets it simulated."""

    began: dict[float, float]
    ended: dict[float, float]
    simulated: dict[float, int]

    def evaluate(self, scale: float, replicas: int, fleet: object = None) -> Evaluation:
        t = time.perf_counter()
        result = super().evaluate(scale, replicas, fleet)  # type: ignore[arg-type]
        if result.simulated:
            self.began.setdefault(scale, t)
            self.simulated[scale] = self.simulated.get(scale, 0) + 1
        return result

    def with_interval(self, p: ForecastPoint) -> ForecastPoint:
        result = super().with_interval(p)
        self.ended[p.scale] = time.perf_counter()
        return result


def one_run(calibration: Calibration) -> list[tuple[float, int | None, int, float]]:
    scenario = load_scenario(str(ROOT / "scenarios" / "chatbot.yaml"))
    config = ForecastConfig.of(scenario)
    forecaster = Timed(scenario, calibration, config)
    # the interval's searches run on copies of it, which share these
    forecaster.began, forecaster.ended, forecaster.simulated = {}, {}, {}
    points = forecaster.run(SCALES)
    return [
        (
            p.scale,
            p.best.replicas if p.best else None,
            forecaster.simulated.get(p.scale, 0),
            forecaster.ended.get(p.scale, 0.0) - forecaster.began.get(p.scale, 0.0),
        )
        for p in points
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calibration", type=Path, help="a demo run's calibration.json")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    demos = sorted((ROOT / "reports").glob("chatbot-*/calibration.json"))
    path = a.calibration or (demos[-1] if demos else None)
    if path is None:
        raise SystemExit("no demo run under reports/: run `make demo` first, or --calibration")
    warm(print)
    calibration = read_calibration(path)
    print(f"calibration: {path}")
    print("| run | scale | replicas | fleets simulated | wall s (search + interval) |")
    print("|-----|-------|----------|------------------|----------------------------|")
    for run in range(1, a.repeat + 1):
        for scale, replicas, fleets, wall in one_run(calibration):
            print(f"| {run} | x{scale:g} | {replicas} | {fleets} | {wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
