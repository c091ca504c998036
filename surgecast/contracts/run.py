"""run.json: what a run was (scenario, seed, target, machine) and how it ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from simulator.engine.core import EngineConfig
from surgecast.contracts.base import LIMITS, Strict, servable_engine, write_doc

RUN_SCHEMA = "surgecast.run/1"


class Validity(Strict):
    valid: bool
    reasons: list[str] = Field(description="why the run cannot be trusted; empty when valid")


class Machine(Strict):
    platform: str
    cpus: int | None
    python: str = Field(description="the interpreter's path")


class Writer(Strict):
    """The process writing the folder: a reader tells a killed run from a live one by it."""

    host: str
    pid: int


class LoopLag(Strict):
    samples: int
    interval_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    chunks: int = Field(0, ge=0, description="content chunks read")
    merged: int = Field(
        0, ge=0, description="chunks read in one receive with the chunk before them"
    )
    unstamped_reads: int = Field(0, ge=0, description="reads without the kernel's arrival time")


class Cpu(Strict):
    samples: int
    mean: float = Field(description="share of one core, mean over the samples")
    max: float = Field(description="the busiest sample's share of one core")


class WorkerGenerator(Strict):
    index: int = Field(ge=0)
    loop_lag: LoopLag
    cpu: Cpu
    host: str | None = None
    cores: int | None = Field(None, ge=1, description="the cores it may run on")


class MasterGenerator(Strict):
    host: str
    cpu: Cpu


class HostCpu(Strict):
    host: str
    processes: int = Field(ge=1, description="workers on the host")
    cpu: float = Field(
        ge=0, description="its workers' CPU together, and the master's on its host, in cores"
    )
    cores: int = Field(ge=1, description="the cores they may run on")


class Generator(Strict):
    """How well the load generator kept its plan: its event loop's lag and its CPU (with
    several processes, the worst process's, each one's in `workers`)."""

    loop_lag: LoopLag
    cpu: Cpu
    processes: int = Field(1, ge=1)
    workers: list[WorkerGenerator] = Field(default_factory=list)
    master: MasterGenerator | None = None
    hosts: list[HostCpu] = Field(default_factory=list)
    failure: str | None = Field(None, description="why a distributed run could not finish")


class RunTarget(Strict):
    """What was loaded; the engine-specific sections are what that engine reported."""

    kind: Literal["reference", "llama-server", "vllm", "external", "simulated"]
    base_url: str | None = None
    prompt_salt: str | None = Field(None, description="hex prefix that defeats prefix caches")
    engine: EngineConfig | None = Field(
        None, description="the engine model behind a reference target or a simulated run"
    )
    limits: dict[str, Any] | None = Field(None, description="batch and KV limits it declared")
    llama_server: dict[str, Any] | None = None
    vllm: dict[str, Any] | None = None
    replicas: int | None = Field(None, description="simulated runs: the fleet's replicas")

    @field_validator("engine")
    @classmethod
    def _servable(cls, engine: EngineConfig | None) -> EngineConfig | None:
        return None if engine is None else servable_engine(engine)

    @field_validator("limits")
    @classmethod
    def _limits(cls, limits: dict[str, Any] | None) -> dict[str, Any] | None:
        """The batch limits a calibration takes from it: whole numbers of at least 1."""
        bad = [
            f"{k} must be a whole number of at least 1, not {v!r}"
            for k, v in (limits or {}).items()
            if k in LIMITS and not (type(v) is int and 1 <= v <= 2**53)
        ]
        if bad:
            raise ValueError("; ".join(bad))
        return limits

    scale: float | None = Field(None, description="simulated runs: the arrival rate's scale")
    fleet: dict[str, Any] | None = Field(None, description="simulated runs: the fleet's counts")
    core: Literal["reference", "fast"] | None = Field(
        None, description="simulated runs: the simulator core that ran it"
    )


class RunMeta(Strict):
    """run.json: what a run was (scenario, seed, target, machine) and how it ended. Written
    when the run starts and updated as it goes; `status` says how far it got."""

    schema_: Literal["surgecast.run/1"] = Field("surgecast.run/1", alias="schema")
    run_id: str
    source: Literal["measured", "simulated"]
    status: Literal["running", "finished", "interrupted", "not started", "killed"]
    scenario_file: str | None
    scenario: dict[str, Any] = Field(description="the scenario as resolved (its own schema)")
    plan: Literal["scenario", "given"] = Field(
        "scenario", description="given: a plan handed to the run (a staircase), not drawn"
    )
    seed: int
    planned_requests: int = Field(ge=0)
    duration_s: float
    target: RunTarget
    versions: dict[str, str]
    machine: Machine
    started_at: str
    finished_at: str | None = None
    writer: Writer | None = None
    step: Literal["target", "probe", "send", "summarise", "report"] | None = Field(
        None,
        description="the step the run is in, or was in when it stopped or was killed (null "
        "once it finished): starting the target, probing it, sending, summarising, writing "
        "the report",
    )
    validity: Validity | None = Field(None, description="null while the run is going")
    slos_passed: bool | None = None
    warnings: list[str] = Field(default_factory=list)
    sizing: dict[str, Any] | None = Field(None, description="the prompt-sizing probes")
    generator: Generator | None = None
    turns_not_sent: int | None = None
    telemetry_errors: list[str] = Field(default_factory=list)


def write_run(path: Path, meta: RunMeta) -> None:
    write_doc(path, meta)
