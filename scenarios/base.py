"""The strict pydantic base every scenario section derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors and parsed sections are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
