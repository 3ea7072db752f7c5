"""The base of every pydantic model edgepack reads from data files (profiles, recipes, farm settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo in a TOML file is reported, not ignored); instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
