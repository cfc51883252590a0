"""A study's settings, parsed and validated once, with their defaults in one place.

[`SearchSettings`][stagewise.optimize.SearchSettings] holds what `[search]` of a study config sets (its TOML names:
`latency_objective` is `latency` here); [`StudySettings`][stagewise.optimize.StudySettings] adds the study's name. The
config file, [`JointOptimizer`][stagewise.optimize.JointOptimizer] and [`Study`][stagewise.optimize.study.Study]
all read their defaults from here.
"""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, field_validator

from stagewise.optimize.sampling import SAMPLERS

__all__ = ["DEFAULTS", "SearchSettings", "StudySettings"]


class SearchSettings(BaseModel):
    """How a study searches and selects (`[search]` of a study config, the stages' space apart)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    trials: PositiveInt | None = 12  # the study's budget; a worker may leave it None to take the study's
    seed: int = 0
    storage: str | None = None  # default: sqlite in the output directory
    prune_on: NonNegativeInt = 8  # dev examples scored before the pruning decision
    prune_margin: NonNegativeFloat = 0.15
    min_quality: float | None = None  # selection: cheapest with quality >= this
    max_cost_per_1k: NonNegativeFloat | None = None  # selection: best quality under this cost
    latency: bool = Field(False, alias="latency_objective")  # a third objective: mean latency per request, down
    reflection_model: str | None = None  # GEPA's reflection model, MIPRO's and SIMBA's prompt model
    gepa_metric_calls: PositiveInt = 40  # GEPA's budget per compile
    sampler: Any = "tpe"  # a name of SAMPLERS or any optuna.samplers.BaseSampler
    pruner: Any = None  # any optuna.pruners.BasePruner; None: MarginPruner(prune_margin)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, value):
        if isinstance(value, optuna.samplers.BaseSampler):
            return value
        if value not in SAMPLERS:
            raise ValueError(f"use one of {', '.join(SAMPLERS)} or an optuna.samplers.BaseSampler, got {value!r}")
        return value

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, value):
        if value is not None and not isinstance(value, optuna.pruners.BasePruner):
            raise ValueError(f"expected an optuna.pruners.BasePruner, got {type(value).__name__}")
        return value


class StudySettings(SearchSettings):
    """[`SearchSettings`][stagewise.optimize.SearchSettings] of one named study."""

    name: str


DEFAULTS = SearchSettings()
