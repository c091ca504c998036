"""Token-length distributions of a scenario (prompt and output tokens, turns): integers drawn
from a named law and clipped to [min, max]."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from scenarios.base import Strict

MAX_VALUE = 10_000_000  # tokens (or turns): a million-token context ten times over


class _Bounded(Strict):
    min: int = Field(1, ge=0, le=MAX_VALUE, description="Smallest value after sampling (clipped).")
    max: int | None = Field(
        None,
        ge=1,
        le=MAX_VALUE,
        description=f"Largest value after sampling (clipped; at most {MAX_VALUE:,} anyway).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> _Bounded:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Constant(_Bounded):
    dist: Literal["constant"]
    value: int = Field(ge=1, le=MAX_VALUE)


class Uniform(_Bounded):
    dist: Literal["uniform"]
    low: int = Field(ge=1, le=MAX_VALUE)
    high: int = Field(ge=1, le=MAX_VALUE)

    @model_validator(mode="after")
    def _low_le_high(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class Normal(_Bounded):
    dist: Literal["normal"]
    mean: float = Field(gt=0, le=MAX_VALUE)
    std: float = Field(ge=0, le=MAX_VALUE)


class LogNormal(_Bounded):
    dist: Literal["lognormal"]
    median: float = Field(gt=0, le=MAX_VALUE)
    sigma: float = Field(ge=0, le=5)


Distribution = Annotated[Constant | Uniform | Normal | LogNormal, Field(discriminator="dist")]
