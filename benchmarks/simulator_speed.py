"""Simulator speed: simulated requests per wall-clock second, and one forecast-sized point,
on each core (the fast one, simulator/fast, beside the reference, SimPy, in the same run).

    python benchmarks/simulator_speed.py              # fleets of 1, 32 and 1,000 replicas
    python benchmarks/simulator_speed.py --million    # ... and one point over 1,000,000 requests
    python benchmarks/simulator_speed.py --stepping   # the reference stepping every engine step
    python benchmarks/simulator_speed.py --cores fast # one core only

Each fleet gets 6 requests/s per replica (continuous batching, 32 slots, answers of 20-200
tokens: about 80% load); the `long` rows have answers of 200-1000 tokens at 1 request/s per
replica, where a batch changes less often a step. Each row runs in a fresh process (so its
peak memory is its own) `--repeat` times and shows the fastest; req/s is per wall-clock second,
req/cpu-s per second of the process's CPU time (steadier on a shared machine). `--stepping`
runs the engine one step at a time (no jumps), as the simulator did before it jumped. Neither
core's time includes loading its code (imports; for the fast core, numba's cache of its
compiled code, about 0.4 s in a fresh process; it compiles once per checkout, before the timed
runs). Compare rows of one run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

from scenarios.plan import build_plan
from scenarios.spec import FleetSpec, parse_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.replay.sim import simulate

ENGINE = EngineConfig(max_num_seqs=32, cost=StepCost(0.015, 0.0008, 0.00006))
SHORT = (6.0, 20, 200, False)  # requests/s per replica, answer tokens (uniform): about 80% load
LONG = (1.0, 200, 1000, False)
CHAT = (6.0, 20, 200, True)  # conversations of 4 turns, prefix caching, prefix_affinity routing
# (label, replicas, simulated seconds, workload)
ROWS = [
    ("1", 1, 4800.0, SHORT),
    ("32", 32, 150.0, SHORT),
    ("1000", 1000, 8.0, SHORT),
    ("1 long", 1, 28800.0, LONG),
    ("32 long", 32, 900.0, LONG),
    ("1000 long", 1000, 48.0, LONG),
    ("32 chat", 32, 150.0, CHAT),
]
MILLION = ("256 (1M)", 256, 651.0, SHORT)  # a forecast slice of 256 replicas: ~1,000,000 requests
Workload = tuple[float, int, int, bool]


def scenario(rate: float, duration: float, low: int, high: int, chat: bool) -> dict[str, object]:
    turns = {
        "turns": {"dist": "constant", "value": 4},
        "think_time": {"dist": "constant", "value": 2},
    }
    return {
        "name": "bench",
        "traffic": {"rate": rate / 4 if chat else rate, "duration_s": duration, "seed": 1},
        "session": turns if chat else {},
        "workload": {
            "prompt_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6},
            "output_tokens": {"dist": "uniform", "low": low, "high": high},
        },
    }


def run_point(
    replicas: int, duration: float, work: Workload, stepping: bool, core: str
) -> dict[str, float]:
    """One simulation in this process: its size, wall and CPU seconds, peak memory (MiB, RSS)."""
    rate, low, high, chat = work
    plan = build_plan(parse_scenario(scenario(rate * replicas, duration, low, high, chat)))
    kw: dict[str, object] = {"jumps": False} if stepping else {}
    engine = ENGINE
    if chat:
        engine = replace(ENGINE, enable_prefix_caching=True)
        kw["fleet"] = FleetSpec(routing="prefix_affinity")
    params = inspect.signature(simulate).parameters
    if "jumps" not in params:  # an older simulator
        kw = {}
    if "core" in params:
        kw["core"] = core
        simulate([], engine, core=core)  # type: ignore[arg-type]  # its code loaded, as imports are
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(plan, engine, replicas=replicas, record_chunks=False, **kw)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ok = int(result.table.ok.sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"requests": len(plan), "ok": ok, "wall": wall, "cpu": cpu, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--million", action="store_true", help="add the 1,000,000-request point")
    parser.add_argument("--stepping", action="store_true", help="one engine step at a time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="run the rows with this label")
    parser.add_argument("--cores", default="reference,fast", help="default: reference,fast")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    a = parser.parse_args()
    rows = [*ROWS, MILLION]
    cores = a.cores.split(",")
    if a.point:
        _, replicas, duration, work = next(r for r in rows if r[0] == a.point)
        print(json.dumps(run_point(replicas, duration, work, a.stepping, cores[0])))
        return
    if "fast" in cores:  # compile the fast core once, outside the timed runs
        simulate([], ENGINE, core="fast")
    rows = (
        [r for r in rows if r[0] == a.only] if a.only else ROWS + ([MILLION] if a.million else [])
    )
    print(
        f"{'replicas':>9} {'core':>9} {'requests':>9} {'ok':>8} {'wall s':>7} {'req/s':>8} "
        f"{'cpu s':>7} {'req/cpu-s':>9} {'peak MiB':>8}"
    )
    for label, *_ in rows:
        repeat = 1 if label == MILLION[0] else a.repeat
        for core in cores:
            runs = [_subprocess(label, a.stepping, core) for _ in range(repeat)]
            best = min(runs, key=lambda r: r["cpu"])
            n = best["requests"]
            print(
                f"{label:>9} {core:>9} {n:9.0f} {best['ok']:8.0f} {best['wall']:7.2f} "
                f"{n / best['wall']:8.0f} {best['cpu']:7.2f} {n / best['cpu']:9.0f} "
                f"{best['peak_mib']:8.0f}",
                flush=True,
            )


def _subprocess(label: str, stepping: bool, core: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--point", label, "--cores", core]
    out = subprocess.run(cmd + (["--stepping"] if stepping else []), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    result: dict[str, float] = json.loads(out.stdout)
    return result


if __name__ == "__main__":
    main()
