"""Simulator speed: simulated requests per wall-clock second, and one forecast-sized point.

    python benchmarks/simulator_speed.py              # fleets of 1, 32 and 1,000 replicas
    python benchmarks/simulator_speed.py --million    # ... and one point over 1,000,000 requests
    python benchmarks/simulator_speed.py --stepping   # the same, stepping every engine step

Each fleet gets 6 requests/s per replica (continuous batching, 32 slots); each row runs in a fresh
process (so its peak memory is its own) `--repeat` times and shows the fastest. `--stepping` runs
the engine one step at a time (no jumps), as the simulator did before it jumped. Compare rows of
one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time

from scenarios.plan import build_plan
from scenarios.spec import parse_scenario
from simulator.engine import EngineConfig, StepCost
from simulator.sim import simulate

ENGINE = EngineConfig(max_num_seqs=32, cost=StepCost(0.015, 0.0008, 0.00006))
PER_REPLICA = 6.0  # requests/s: about 80% of what a replica serves (32 slots, ~110 tokens each)
FLEETS = [(1, 4800.0), (32, 150.0), (1000, 8.0)]  # replicas, simulated seconds
MILLION = (256, 651.0)  # a forecast slice of 256 replicas: about 1,000,000 requests


def scenario(rate: float, duration: float) -> dict[str, object]:
    return {
        "name": "bench",
        "traffic": {"rate": rate, "duration_s": duration, "seed": 1},
        "workload": {
            "prompt_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 200},
        },
    }


def run_point(replicas: int, duration: float, stepping: bool) -> dict[str, float]:
    """One simulation in this process: its size, wall seconds and peak memory (MiB, RSS)."""
    plan = build_plan(parse_scenario(scenario(PER_REPLICA * replicas, duration)))
    kw = {"jumps": False} if stepping else {}
    if "jumps" not in inspect.signature(simulate).parameters:  # an older simulator
        kw = {}
    t0 = time.perf_counter()
    records = simulate(plan, ENGINE, replicas=replicas, record_chunks=False, **kw).records  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    ok = sum(r.status == "ok" for r in records)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"requests": len(plan), "ok": ok, "wall": wall, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--million", action="store_true", help="add the 1,000,000-request point")
    parser.add_argument("--stepping", action="store_true", help="one engine step at a time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--point", nargs=2, type=float, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.point:
        print(json.dumps(run_point(int(a.point[0]), a.point[1], a.stepping)))
        return
    rows = FLEETS + ([MILLION] if a.million else [])
    print(f"{'replicas':>8} {'requests':>9} {'ok':>8} {'wall s':>7} {'req/s':>8} {'peak MiB':>9}")
    for replicas, duration in rows:
        repeat = 1 if (replicas, duration) == MILLION else a.repeat
        runs = [_subprocess(replicas, duration, a.stepping) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["wall"])
        print(
            f"{replicas:8d} {best['requests']:9.0f} {best['ok']:8.0f} {best['wall']:7.2f} "
            f"{best['requests'] / best['wall']:8.0f} {best['peak_mib']:9.0f}"
        )


def _subprocess(replicas: int, duration: float, stepping: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--point", str(replicas), str(duration)]
    out = subprocess.run(cmd + (["--stepping"] if stepping else []), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    result: dict[str, float] = json.loads(out.stdout)
    return result


if __name__ == "__main__":
    main()
