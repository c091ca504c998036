"""A scenario's `fleet` section: how simulated replicas share the traffic (routing, admission,
a central queue), an autoscaler, and the cold start a replica it adds pays."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from scenarios.base import Strict


class ColdStartSpec(Strict):
    """How long a replica the autoscaler adds takes before it serves."""

    provisioning_s: float = Field(0.0, ge=0, le=3600, description="Getting a machine.")
    load_s: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Model load; default: model's weights / gpu's load bandwidth, else "
        "reference_target.cold_start_s.",
    )
    model: str | None = Field(None, description="A model of the catalog (surgecast catalog).")
    gpu: str | None = Field(None, description="A GPU of the catalog (surgecast catalog).")
    init_s: float = Field(0.0, ge=0, le=3600, description="Engine start after the load.")
    jitter: float = Field(
        0.0, ge=0, le=2, description="Lognormal shape of the (load + init) factor; 0: fixed."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """tensor_parallel moved to cost.gpus_per_replica; a run.json written before keeps
        its default (1), which says nothing and is dropped."""
        if isinstance(data, dict) and "tensor_parallel" in data:
            if data["tensor_parallel"] != 1:
                raise ValueError(
                    "tensor_parallel: a replica's GPUs are set once, as cost.gpus_per_replica"
                )
            data = {k: v for k, v in data.items() if k != "tensor_parallel"}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ColdStartSpec:
        if (self.model is None) != (self.gpu is None):
            missing = "model" if self.model is None else "gpu"
            raise ValueError(f"{missing}: required beside the other")
        if self.model is not None and self.load_s is not None:
            raise ValueError("load_s: give either load_s or model and gpu, not both")
        return self


class AutoscalerSpec(Strict):
    """Replicas follow a metric summed over the fleet: ceil(sum / target), within bounds."""

    metric: Literal["in_flight", "queue", "kv"] = "in_flight"
    target: float = Field(gt=0, description="Metric per replica the autoscaler aims at.")
    interval_s: float = Field(15.0, gt=0, le=3600, description="Between evaluations.")
    stabilisation_s: float = Field(
        300.0, ge=0, le=86400, description="Scale down to the highest count wanted in it."
    )
    min_replicas: int = Field(1, ge=0, le=100000, description="0: scale to zero.")
    max_replicas: int = Field(ge=1, le=100000)
    initial_replicas: int | None = Field(None, ge=0, description="Default: min_replicas.")
    keep_alive_s: float = Field(60.0, ge=0, le=86400, description="Idle time before removal.")

    @property
    def starting_replicas(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas: must be <= max_replicas ({self.max_replicas}), "
                f"got {self.min_replicas}"
            )
        n = self.initial_replicas
        if n is not None and not self.min_replicas <= n <= self.max_replicas:
            raise ValueError(
                f"initial_replicas: must be in [min_replicas, max_replicas] = "
                f"[{self.min_replicas}, {self.max_replicas}], got {n}"
            )
        return self


class FleetSpec(Strict):
    """How simulated replicas share traffic: routing, admission, autoscaling."""

    routing: Literal[
        "random", "round_robin", "least_outstanding", "least_kv", "prefix_affinity"
    ] = "least_outstanding"
    admission_limit: int | None = Field(
        None, ge=0, description="Requests waiting fleet-wide beyond which one is refused (429)."
    )
    central_queue: bool = Field(
        False, description="Requests wait at the fleet until a replica has a free batch slot."
    )
    affinity_overload: float = Field(
        1.0,
        gt=0,
        le=100,
        description="prefix_affinity leaves the replica caching the prompt for the least loaded "
        "once it holds this x max_num_seqs requests.",
    )
    affinity_min_match: float = Field(
        0.5,
        ge=0,
        le=1,
        description="prefix_affinity follows a replica's cached prefix only when it covers this "
        "share of the prompt (SGLang's cache_threshold); else the least loaded replica.",
    )
    retry_after_s: float | None = Field(
        None, ge=0, le=3600, description="The Retry-After header of the fleet's 429s."
    )
    autoscaler: AutoscalerSpec | None = None
    cold_start: ColdStartSpec = Field(default_factory=ColdStartSpec)
    seed: int = Field(0, ge=0, description="Seeds random routing and cold-start draws.")
