"""One seed's peak memory against the estimate that refuses a fleet too large to simulate
(simulator/forecast/footprint.py), each size in a fresh process.

    python benchmarks/seed_memory.py

scenarios/chatbot.yaml's traffic at each scale for 120 s over the given replicas (a known
engine: 15 ms a step, 16 sequences), without and with token times recorded (ITL judged). The
estimate must be at least the measured peak (it refuses what would not fit), and not far over.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(10.0, 10), (100.0, 50), (1000.0, 500), (2000.0, 1000), (1000.0, 10000)]

CHILD = """
import json, resource, sys
from scenarios.spec import load_scenario
from simulator.engine.core import EngineConfig, StepCost
from simulator.forecast.footprint import seed_bytes
from simulator.forecast.seeds import SeedJob, run_seed
scale, replicas, itl = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
scenario = load_scenario("scenarios/chatbot.yaml")
if itl:
    slos = {**scenario.model_dump()["slos"], "itl": "p(95) < 1000"}
    scenario = type(scenario).model_validate({**scenario.model_dump(), "slos": slos})
engine = EngineConfig(max_num_seqs=16, kv_cache_tokens=32768, cost=StepCost(0.015, 0.001, 8e-5))
job = SeedJob(scenario, engine, 1, scale, replicas, 120.0)
from scenarios.plan import build_plan
plan = build_plan(scenario, seed=1, rate_scale=scale, duration_s=120.0)
requests, tokens = len(plan), sum(s.max_tokens for s in plan)
del plan
run_seed(job)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
estimate = seed_bytes(requests, replicas, tokens if itl else 0)
print(json.dumps([requests, tokens, peak, estimate]))
"""


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    print("| scale | replicas | ITL | requests | peak MiB | estimate MiB | estimate / peak |")
    print("|-------|----------|-----|----------|----------|--------------|-----------------|")
    for scale, replicas in SIZES:
        for itl in (False, True):
            args = [sys.executable, "-c", CHILD, str(scale), str(replicas), str(int(itl))]
            out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
            requests, _, peak, estimate = json.loads(out.stdout)
            print(
                f"| x{scale:g} | {replicas:,} | {'yes' if itl else 'no'} | {requests:,} | "
                f"{peak / 2**20:,.0f} | {estimate / 2**20:,.0f} | {estimate / peak:.2f} |"
            )


if __name__ == "__main__":
    main()
