"""The deployment search's speed, and its agreement with brute force.

    python benchmarks/deployment_search.py            # 4 models x 11 GPUs x 3 weight formats
                                                      # x tp 1,2,4 at x1, x10, x100, x1000
    python benchmarks/deployment_search.py --brute    # ... and 2 models x tp 1,2 searched and
                                                      # brute-forced at x1 and x10, to compare

The calibration is a known engine (the demo's reference target: 15 ms a step, 1 ms a decoding
sequence, 0.08 ms a prompt token, 16 sequences) said to be Llama-3.1-8B on an L4; the traffic is
scenarios/chatbot.yaml's. The search prunes with the analytic load bound; brute force simulates
every option that fits. Prints, per scale, the choice, the options simulated and the wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from scenarios.deployment_spec import Deployment, DeploymentOptions
from scenarios.spec import load_scenario
from simulator.deploy.catalog import load_catalog
from simulator.engine.core import EngineConfig, StepCost
from simulator.fit.calibrate import Calibration, Fit
from simulator.forecast.deployments import Choice, DeploymentSearch, options
from simulator.forecast.search import ForecastConfig

ROOT = Path(__file__).resolve().parents[1]
COST = StepCost(0.015, 0.001, 0.00008)
MEASURED = Deployment(model="Llama-3.1-8B", gpu="L4", max_num_seqs=16)
MODELS = ["Llama-3.1-8B", "Qwen2.5-7B", "Mistral-7B-v0.3", "Llama-3.1-70B"]
WEIGHTS = ["bf16", "fp8", "int4"]
TP = [1, 2, 4]
SCALES = [1.0, 10.0, 100.0, 1000.0]


def calibration() -> Calibration:
    values = np.array([0.0, COST.base_s, COST.per_decode_seq_s, COST.per_prefill_token_s])
    engine = EngineConfig(max_num_seqs=16, kv_cache_tokens=32768, cost=COST)
    return Calibration(engine, Fit(values, np.zeros((4, 4)), 100, 10, 1.0, 0.0))


def timed(search: DeploymentSearch, scales: list[float], brute: bool) -> tuple[list[Choice], float]:
    start = time.perf_counter()
    choices = search.run(scales, exhaustive=brute)
    return choices, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--brute", action="store_true", help="also simulate every option at x1, x10")
    a = p.parse_args()
    scenario = load_scenario(str(ROOT / "scenarios" / "chatbot.yaml"))
    catalog = load_catalog()
    spec = DeploymentOptions(
        measured=MEASURED,
        models=MODELS,
        gpus=list(catalog.gpus),
        weights=WEIGHTS,
        tensor_parallel=TP,
    )
    candidates = options(spec.combinations(), catalog)
    fitting = sum(o.memory.fits for o in candidates)
    config = ForecastConfig.of(scenario)
    search = DeploymentSearch(scenario, calibration(), MEASURED, candidates, catalog, config)
    print(
        f"{len(candidates)} options, {fitting} fit; {config.seeds} seeds x {config.duration_s:g} s"
    )
    choices, wall = timed(search, SCALES, brute=False)
    print("\n| scale | choice | replicas | $/month | options simulated |")
    print("|---|---|---|---|---|")
    for c in choices:
        simulated = sum(o.point is not None for o in c.outcomes)
        best = c.best.point.best if c.best and c.best.point else None
        if c.best and best:
            row = f"{c.best.option.label} | {best.replicas} | {c.best.cost_per_month_usd:,.0f}"
        else:
            row = "none | - | -"
        print(f"| x{c.scale:g} | {row} | {simulated} of {fitting} |")
    print(f"\nsearch over {len(SCALES)} scales: {wall:.1f} s wall")
    if a.brute:  # a smaller set: brute force simulates every option that fits, at every scale
        few = [o for o in candidates if o.deployment.model in MODELS[:2]]
        few = [o for o in few if o.deployment.tensor_parallel in TP[:2]]
        for brute in (False, True):
            search = DeploymentSearch(scenario, calibration(), MEASURED, few, catalog, config)
            found, wall = timed(search, SCALES[:2], brute)
            labels = [c.best.option.label if c.best else None for c in found]
            print(f"{'brute force' if brute else 'search'} over {len(few)} options at x1, x10: "
                  f"{wall:.1f} s wall; choices {labels}")  # fmt: skip


if __name__ == "__main__":
    main()
