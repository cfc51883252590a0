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
    thresholds: dict[str, float] = field(default_factory=dict)  # cascade name -> acceptance threshold

    def params(self) -> dict[str, str | int | float]:
        flat: dict[str, str | int | float] = {}
        for stage, model in self.models.items():
            flat[f"{stage}.model"] = model
            flat[f"{stage}.optimizer"] = self.optimizers.get(stage, "none")
            flat[f"{stage}.demos"] = self.demos.get(stage, 0)
        for cascade, threshold in self.thresholds.items():
            flat[f"{cascade}.threshold"] = threshold
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


def cascades(program) -> dict:
    """The program's cascades by name."""
    from stagewise.programs import Cascade

    return {module.name: module for _, module in program.named_sub_modules() if isinstance(module, Cascade)}


def validate_thresholds(thresholds: dict[str, tuple[float, ...]], program) -> None:
    found = cascades(program)
    for name, values in thresholds.items():
        if name not in found:
            raise SearchSpaceError(f"search space: the program has no cascade {name!r} "
                                   f"(cascades: {', '.join(found) or 'none'})")
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise SearchSpaceError(f"search space: cascade {name!r} thresholds must be in [0, 1], got {values}")


def suggest(trial, space: dict[str, StageChoices], thresholds: dict[str, tuple[float, ...]] | None = None) -> TrialChoice:
    """Ask an Optuna trial for one point of the space (categorical choices per stage and cascade)."""
    chosen_thresholds = {name: trial.suggest_categorical(f"{name}.threshold", list(values))
                         for name, values in (thresholds or {}).items()}
    models, optimizers, demos = {}, {}, {}
    for stage, choices in space.items():
        models[stage] = trial.suggest_categorical(f"{stage}.model", list(choices.models))
        optimizers[stage] = trial.suggest_categorical(f"{stage}.optimizer", list(choices.optimizers))
        demos[stage] = (trial.suggest_categorical(f"{stage}.demos", list(choices.demos))
                        if optimizers[stage] != "none" else 0)
    return TrialChoice(models, optimizers, demos, chosen_thresholds)
