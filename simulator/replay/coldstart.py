"""How long a replica the autoscaler adds takes before it serves: a scenario's `fleet.cold_start`,
its model load time taken from the section or from a model and GPU profile it names (the
replica's GPUs: `cost.gpus_per_replica`, as tensor parallelism)."""

from __future__ import annotations

import numpy as np

from scenarios.spec import ColdStartSpec
from simulator.engine import profiles
from simulator.engine.profiles import GPUS, MODELS, ServingConfig, blocks_per_replica


def load_seconds(spec: ColdStartSpec, gpus_per_replica: int = 1) -> float | None:
    """The model load a cold start pays: `load_s`, or the named model's weights at the named
    GPU's load bandwidth, each GPU loading its shard (None: the engine's own cold_start_s).
    ValueError naming the field for an unknown profile or weights that do not fit."""
    if spec.model is None or spec.gpu is None:
        return spec.load_s
    for kind, name, known in (("model", spec.model, MODELS), ("gpu", spec.gpu, GPUS)):
        if name not in known:
            raise ValueError(
                f"fleet.cold_start.{kind}: unknown {kind} {name!r}; known: {', '.join(known)}"
            )
    model, gpu = MODELS[spec.model], GPUS[spec.gpu]
    try:
        serving = ServingConfig(tensor_parallel=gpus_per_replica)
    except ValueError:
        raise ValueError(
            f"cost.gpus_per_replica: a cold start from a model and GPU profile splits the "
            f"weights over 1, 2, 4 or 8 GPUs, got {gpus_per_replica}"
        ) from None
    try:
        blocks_per_replica(model, gpu, serving)  # raises, naming model and gpu, if it cannot fit
    except ValueError as e:
        raise ValueError(f"fleet.cold_start: {e}") from None
    return profiles.load_seconds(model, gpu, serving)


def draw(spec: ColdStartSpec, load_s: float, rng: np.random.Generator) -> float:
    """One cold start's seconds: provisioning_s, then (load + init_s) x a lognormal factor of
    median 1 and shape `jitter`."""
    spread = float(rng.lognormal(0.0, spec.jitter)) if spec.jitter > 0 else 1.0
    return spec.provisioning_s + (load_s + spec.init_s) * spread
