"""GPUs, models and number formats as data: the catalog that ships (deploy/data/catalog.yaml) and
catalog files of a user's own, validated as strictly as a scenario, each problem named with its
file, line and field.

A user's file has the same three sections (any may be left out); an entry of the same name as a
shipped one replaces it. Figures carry their source: a datasheet, a model's config.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from scenarios.base import Strict, validation_messages
from scenarios.files import data_file_problem
from scenarios.safe_yaml import parse_yaml

SHIPPED = Path(__file__).with_name("data") / "catalog.yaml"
MAX_CATALOG_BYTES = 1 << 20

Kind = Literal["gpu", "model", "number format"]
Compute = Literal["bf16", "fp8", "int8"]  # the matrix units a format's multiply runs on


class CatalogError(ValueError):
    """Every problem of the catalog files read, each as `FILE: line N: field.path: what`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class NumberFormat(Strict):
    """How a weight or KV-cache value is stored, and which matrix units multiply it."""

    bytes: float = Field(gt=0, le=8, description="Bytes a value takes (int4: 0.5).")
    compute: Compute = Field(description="The GPU throughput a matmul of it runs at.")
    source: str = ""


class Gpu(Strict):
    vendor: str
    memory_gib: float = Field(gt=0, le=4096, description="Memory as the driver reports it.")
    memory_bandwidth_gbs: float = Field(gt=0, le=1e5, description="GB/s (10^9 bytes).")
    tflops: dict[Compute, float] = Field(
        description="Dense (not sparse) tensor throughput by format, 10^12 operations/s."
    )
    interconnect_gbs: float = Field(
        ge=0, le=1e5, description="GPU-to-GPU GB/s one way (NVLink, Infinity Fabric, PCIe)."
    )
    load_bandwidth_gbs: float = Field(
        gt=0, le=1e5, description="Effective GB/s at which weights reach the GPU at start."
    )
    price_per_hour_usd: float = Field(ge=0, le=1e4, description="On-demand, per GPU.")
    aliases: list[str] = Field(default_factory=list)
    source: str

    @model_validator(mode="after")
    def _bf16(self) -> Gpu:
        if self.tflops.get("bf16", 0) <= 0 or any(v <= 0 for v in self.tflops.values()):
            raise ValueError("tflops: bf16 is required and every figure must be > 0")
        return self


class Model(Strict):
    """A transformer's shape, as its config.json gives it."""

    parameters: float = Field(gt=0, le=1e14, description="All weights (every expert).")
    layers: int = Field(gt=0, le=1024)
    hidden_size: int = Field(gt=0, le=1 << 20)
    attention_heads: int = Field(gt=0, le=4096)
    kv_heads: int = Field(gt=0, le=4096, description="Fewer than attention_heads with GQA.")
    head_dim: int = Field(gt=0, le=4096)
    intermediate_size: int = Field(gt=0, le=1 << 22, description="A (routed) expert's MLP.")
    vocab_size: int = Field(gt=0, le=1 << 24)
    max_context: int = Field(gt=0, le=1 << 24)
    tied_embeddings: bool = False
    experts: int = Field(1, gt=0, le=4096)
    experts_per_token: int = Field(1, gt=0, le=4096)
    active_parameters: float | None = Field(None, gt=0, description="Per token; MoE only.")
    aliases: list[str] = Field(default_factory=list)
    source: str

    @model_validator(mode="after")
    def _consistent(self) -> Model:
        if self.kv_heads > self.attention_heads or self.attention_heads % self.kv_heads:
            raise ValueError("kv_heads: must divide attention_heads")
        if self.experts_per_token > self.experts:
            raise ValueError("experts_per_token: at most experts")
        if (self.experts > 1) != (self.active_parameters is not None):
            raise ValueError("active_parameters: required for (and only for) mixture-of-experts")
        if self.active_parameters is not None and self.active_parameters > self.parameters:
            raise ValueError("active_parameters: at most parameters")
        if self.embedding_parameters >= self.parameters:
            raise ValueError("parameters: fewer than the embeddings alone (vocab x hidden)")
        return self

    @property
    def embedding_parameters(self) -> int:
        """The input embeddings and the output head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def per_token_parameters(self) -> float:
        """The weights one token's forward pass multiplies by (all of them for a dense model)."""
        return self.active_parameters or self.parameters


class CatalogFile(Strict):
    number_formats: dict[str, NumberFormat] = Field(default_factory=dict)
    gpus: dict[str, Gpu] = Field(default_factory=dict)
    models: dict[str, Model] = Field(default_factory=dict)


class Catalog:
    """The shipped catalog with a user's files over it; entries found by name or alias."""

    def __init__(self, files: Sequence[CatalogFile]):
        self.number_formats: dict[str, NumberFormat] = {}
        self.gpus: dict[str, Gpu] = {}
        self.models: dict[str, Model] = {}
        for f in files:
            self.number_formats |= f.number_formats
            self.gpus |= f.gpus
            self.models |= f.models

    def gpu(self, name: str) -> Gpu:
        return self.gpus[self.named("gpu", name)]

    def model(self, name: str) -> Model:
        return self.models[self.named("model", name)]

    def number_format(self, name: str) -> NumberFormat:
        return self.number_formats[self.named("number format", name)]

    def named(self, kind: Kind, name: str) -> str:
        """The catalog's own name for a name or alias given in any case (h100-80gb: H100-SXM-80GB),
        or KeyError listing the names it has."""
        tables: dict[str, Mapping[str, object]] = {
            "gpu": self.gpus,
            "model": self.models,
            "number format": self.number_formats,
        }
        known = tables[kind]
        if name in known:
            return name
        wanted = name.casefold()
        for key, entry in known.items():
            if wanted in (n.casefold() for n in (key, *getattr(entry, "aliases", ()))):
                return key
        raise KeyError(f"unknown {kind} {name!r}; the catalog has: {', '.join(sorted(known))}")


def read_catalog_file(path: str | Path) -> CatalogFile:
    """One catalog file, or CatalogError with every problem in it."""
    file = Path(path)
    problem = data_file_problem(file) if file.exists() else "no such file"
    if not problem and file.stat().st_size > MAX_CATALOG_BYTES:
        problem = f"larger than {MAX_CATALOG_BYTES >> 20} MiB: not a catalog"
    catalog, problems = (None, [problem]) if problem else _parse(file)
    if catalog is None:
        raise CatalogError([f"{path}: {p}" for p in problems])
    return catalog


def _parse(file: Path) -> tuple[CatalogFile | None, list[str]]:
    lines: dict[str, int] = {}
    try:
        data, problems = parse_yaml(file.read_text(encoding="utf-8"), lines)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        return None, [f"not a YAML catalog: {str(e).splitlines()[0]}"]
    if problems:
        return None, problems
    if not isinstance(data or {}, dict):
        return None, ["a catalog is a mapping of number_formats, gpus and models"]
    try:
        return CatalogFile.model_validate(data or {}), []
    except ValidationError as e:
        return None, validation_messages(e, data, lines)


def load_catalog(extra: Sequence[str | Path] = ()) -> Catalog:
    """The shipped catalog, then each of `extra` over it (CatalogError naming all the bad
    files' problems at once)."""
    files, problems = [], []
    for path in (SHIPPED, *extra):
        try:
            files.append(read_catalog_file(path))
        except CatalogError as e:
            problems += e.problems
    if problems:
        raise CatalogError(problems)
    return Catalog(files)
