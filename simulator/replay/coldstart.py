"""How long a replica the autoscaler adds takes before it serves: a scenario's `fleet.cold_start`,
its model load time taken from the section or from a model and GPU of the catalog it names (the
replica's GPUs: `cost.gpus_per_replica`, as tensor parallelism)."""

from __future__ import annotations

import numpy as np

from scenarios.deployment_spec import Deployment
from scenarios.spec import ColdStartSpec
from simulator.deploy.catalog import load_catalog
from simulator.deploy.memory import load_seconds as weights_load_seconds
from simulator.deploy.memory import memory_plan


def load_seconds(spec: ColdStartSpec, gpus_per_replica: int = 1) -> float | None:
    """The model load a cold start pays: `load_s`, or the named model's weights (bf16) at the
    named GPU's load bandwidth, each GPU loading its shard (None: the engine's own
    cold_start_s). ValueError naming the field for a name the catalog lacks or weights that
    do not fit."""
    if spec.model is None or spec.gpu is None:
        return spec.load_s
    catalog = load_catalog()
    for kind, find in (("model", catalog.model), ("gpu", catalog.gpu)):
        try:
            find(getattr(spec, kind))
        except KeyError as e:
            raise ValueError(f"fleet.cold_start.{kind}: {e.args[0]}") from None
    deployment = Deployment(model=spec.model, gpu=spec.gpu, tensor_parallel=gpus_per_replica)
    plan = memory_plan(deployment, catalog)
    if not plan.fits:
        where = f"{spec.model} on {gpus_per_replica} x {spec.gpu} (cost.gpus_per_replica)"
        raise ValueError(f"fleet.cold_start: {where}: {plan.why}")
    return weights_load_seconds(deployment, catalog)


def draw(spec: ColdStartSpec, load_s: float, rng: np.random.Generator) -> float:
    """One cold start's seconds: provisioning_s, then (load + init_s) x a lognormal factor of
    median 1 and shape `jitter`."""
    spread = float(rng.lognormal(0.0, spec.jitter)) if spec.jitter > 0 else 1.0
    return spec.provisioning_s + (load_s + spec.init_s) * spread
