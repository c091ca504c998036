"""A scenario's `fleet:` section as the simulator's FleetConfig.

The scenario schema cannot see the model and GPU profiles (scenarios come before the simulator),
so the checks that need them (a known name, weights that fit on the replica's GPUs) run here,
with messages that name the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from scenarios.spec import ColdStartSpec, FleetSpec
from simulator.engine.profiles import GPUS, MODELS, ServingConfig
from simulator.replay.fleet import AutoscalerConfig, ColdStart, FleetConfig


@dataclass(frozen=True)
class FleetPlan:
    config: FleetConfig
    initial_replicas: int | None  # None: the caller's count (a fixed fleet)


def _named(kind: str, name: str, known: dict[str, object]) -> None:
    if name not in known:
        raise ValueError(
            f"fleet.cold_start.{kind}: unknown {kind} {name!r}; known: {', '.join(sorted(known))}"
        )


def cold_start_from_spec(spec: ColdStartSpec) -> ColdStart:
    rest = {"provisioning_s": spec.provisioning_s, "init_s": spec.init_s, "jitter": spec.jitter}
    if spec.model is None or spec.gpu is None:
        return ColdStart(load_s=spec.load_s, **rest)
    _named("model", spec.model, dict(MODELS))
    _named("gpu", spec.gpu, dict(GPUS))
    try:
        serving = ServingConfig(tensor_parallel=spec.tensor_parallel)
        return ColdStart.from_profile(MODELS[spec.model], GPUS[spec.gpu], serving, **rest)
    except ValueError as e:
        raise ValueError(f"fleet.cold_start: {e}") from None


def fleet_from_spec(spec: FleetSpec) -> FleetPlan:
    """ValueError, naming the field, for a model that does not fit or an unknown profile."""
    a = spec.autoscaler
    scaler = None
    if a is not None:
        scaler = AutoscalerConfig(
            a.metric,
            a.target,
            a.interval_s,
            a.stabilisation_s,
            a.min_replicas,
            a.max_replicas,
            a.keep_alive_s,
        )
    config = FleetConfig(
        routing=spec.routing,
        admission_limit=spec.admission_limit,
        central_queue=spec.central_queue,
        autoscaler=scaler,
        cold_start=cold_start_from_spec(spec.cold_start),
        affinity_overload=spec.affinity_overload,
        retry_after_s=spec.retry_after_s,
        seed=spec.seed,
    )
    initial = None if a is None else a.initial_replicas
    if a is not None and initial is None:
        initial = a.min_replicas
    return FleetPlan(config, initial)
