"""The search space of a study: per stage, candidate models, optimizers and demo counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from stagewise.models.catalog import ModelCatalog, UnknownModelError, default_catalog

OPTIMIZERS = ("none", "labeled_fewshot", "bootstrap_fewshot", "bootstrap_random_search", "mipro")


class SearchSpaceError(ValueError):
    """A search space names an unknown stage, model or optimizer."""


@dataclass(frozen=True)
class StageChoices:
    models: tuple[str, ...]
    optimizers: tuple[str, ...] = ("none",)
    demos: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class TrialChoice:
    """One point of the space: each stage's model, optimizer and number of demos."""

    models: dict[str, str]
    optimizers: dict[str, str] = field(default_factory=dict)
    demos: dict[str, int] = field(default_factory=dict)

    def params(self) -> dict[str, str | int]:
        flat: dict[str, str | int] = {}
        for stage, model in self.models.items():
            flat[f"{stage}.model"] = model
            flat[f"{stage}.optimizer"] = self.optimizers.get(stage, "none")
            flat[f"{stage}.demos"] = self.demos.get(stage, 0)
        return flat


def validate(space: dict[str, StageChoices], stages: list[str], catalog: ModelCatalog | None = None) -> None:
    """Every stage exists, every candidate model is known, every optimizer is supported."""
    catalog = catalog or default_catalog()
    for stage, choices in space.items():
        if stage not in stages:
            raise SearchSpaceError(f"search space: the program has no stage {stage!r} (stages: {', '.join(stages)})")
        if not choices.models:
            raise SearchSpaceError(f"search space: stage {stage!r} has no candidate models")
        for model in choices.models:
            try:
                catalog.resolve(model)
            except UnknownModelError as exc:
                raise SearchSpaceError(f"search space: stage {stage!r}, candidate {exc}") from None
        for optimizer in choices.optimizers:
            if optimizer not in OPTIMIZERS:
                raise SearchSpaceError(f"search space: stage {stage!r}: unknown optimizer {optimizer!r} "
                                       f"(optimizers: {', '.join(OPTIMIZERS)})")
        if any(d < 0 for d in choices.demos):
            raise SearchSpaceError(f"search space: stage {stage!r}: demo counts must be >= 0, got {choices.demos}")


def suggest(trial, space: dict[str, StageChoices]) -> TrialChoice:
    """Ask an Optuna trial for one point of the space (categorical choices per stage)."""
    models, optimizers, demos = {}, {}, {}
    for stage, choices in space.items():
        models[stage] = trial.suggest_categorical(f"{stage}.model", list(choices.models))
        optimizers[stage] = trial.suggest_categorical(f"{stage}.optimizer", list(choices.optimizers))
        demos[stage] = (trial.suggest_categorical(f"{stage}.demos", list(choices.demos))
                        if optimizers[stage] != "none" else 0)
    return TrialChoice(models, optimizers, demos)
