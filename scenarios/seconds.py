"""Seconds: the field types of a time in a scenario, and distributions of seconds for think
times and patience (`SecondsDistribution`: constant, uniform, exponential, lognormal)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from scenarios.base import Strict

MAX_SECONDS = 1e8  # any time field (about three years)

Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
SecondsOrZero = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]


class ConstantSeconds(Strict):
    dist: Literal["constant"]
    value: SecondsOrZero

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)


class UniformSeconds(Strict):
    dist: Literal["uniform"]
    low: SecondsOrZero
    high: SecondsOrZero

    @model_validator(mode="after")
    def _low_le_high(self) -> UniformSeconds:
        if self.high < self.low:
            raise ValueError(f"high: must be >= low ({self.low}), got {self.high}")
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=n)


class ExponentialSeconds(Strict):
    dist: Literal["exponential"]
    mean: Seconds  # the field is the mean the other kinds expose as a property

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, size=n)


class LogNormalSeconds(Strict):
    dist: Literal["lognormal"]
    median: Seconds
    sigma: float = Field(ge=0, le=5, allow_inf_nan=False)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.median * np.exp(rng.normal(0.0, self.sigma, size=n))


SecondsDistribution = Annotated[
    ConstantSeconds | UniformSeconds | ExponentialSeconds | LogNormalSeconds,
    Field(discriminator="dist"),
]
