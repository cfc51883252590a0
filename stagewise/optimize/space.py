"""The search space of a study.

Per stage, candidate models, optimizers and demo counts; per cascade, acceptance thresholds;
per router, an LLM decision stage or a trained classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stagewise.errors import SearchSpaceError
from stagewise.models.catalog import ModelCatalog, UnknownModelError, default_catalog
from stagewise.optimize.optimizers import get_optimizer


@dataclass(frozen=True)
class StageChoices:
    """A stage's candidates: catalog models, optimizer names and demo counts.

    Optimizer names are those registered (see [`register_optimizer`][stagewise.optimize.register_optimizer]).
    """

    models: tuple[str, ...]
    optimizers: tuple[str, ...] = ("none",)
    demos: tuple[int, ...] = (0,)


DECISIONS = ("llm", "trained")


@dataclass(frozen=True)
class RouterChoices:
    """A router's decision candidates: its LLM stage, or a trained classifier.

    The classifier is a [`LabelRouter`][stagewise.routing.routers.LabelRouter] trained on the train split's
    `label` field, with these feature and C candidates.
    """

    label: str
    decisions: tuple[str, ...] = DECISIONS
    features: tuple[str, ...] = ("word+char",)
    C: tuple[float, ...] = (4.0,)


@dataclass(frozen=True)
class TrialChoice:
    """One point of the space: each stage's model, optimizer and number of demos."""

    models: dict[str, str]
    optimizers: dict[str, str] = field(default_factory=dict)
    demos: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # cascade name -> acceptance threshold
    routers: dict[str, dict] = field(default_factory=dict)  # router name -> {"decision", "features", "C"}

    def params(self) -> dict[str, str | int | float]:
        """The choice as flat parameters (`<stage>.model`, `<cascade>.threshold`, `<router>.decision` ...)."""
        flat: dict[str, str | int | float] = {}
        for router, decision in self.routers.items():
            flat.update({f"{router}.{key}": value for key, value in decision.items()})
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
            try:
                get_optimizer(optimizer)
            except SearchSpaceError as exc:
                raise SearchSpaceError(f"search space: stage {stage!r}: {exc}") from None
        if any(d < 0 for d in choices.demos):
            raise SearchSpaceError(f"search space: stage {stage!r}: demo counts must be >= 0, got {choices.demos}")


def cascades(program) -> dict:
    """The program's cascades by name."""
    from stagewise.programs import Cascade

    return {module.name: module for _, module in program.named_sub_modules() if isinstance(module, Cascade)}


def validate_thresholds(thresholds: dict[str, tuple[float, ...]], program) -> None:
    """Check cascade thresholds against the program.

    Raises:
        SearchSpaceError: a name is not one of the program's cascades, or its values are empty or outside [0, 1].
    """
    found = cascades(program)
    for name, values in thresholds.items():
        if name not in found:
            raise SearchSpaceError(f"search space: the program has no cascade {name!r} "
                                   f"(cascades: {', '.join(found) or 'none'})")
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise SearchSpaceError(f"search space: cascade {name!r} thresholds must be in [0, 1], got {values}")


def router_modules(program) -> dict:
    """The program's routers by name."""
    from stagewise.programs import Router

    return {module.name: module for _, module in program.named_sub_modules() if isinstance(module, Router)}


def validate_routers(choices: dict[str, RouterChoices], program, label_fields: set[str]) -> None:
    """Check router choices against the program and the examples' fields.

    Raises:
        SearchSpaceError: a name is not one of the program's routers; a decision is unknown or none is given;
            `llm` is asked of a router without an LLM decision stage; `trained` is asked without the label field
            in the examples; a feature spec is invalid; or a C value is not > 0.
    """
    from stagewise.programs import Stage
    from stagewise.routing.features import parse_features

    found = router_modules(program)
    for name, choice in choices.items():
        if name not in found:
            raise SearchSpaceError(f"search space: the program has no router {name!r} "
                                   f"(routers: {', '.join(found) or 'none'})")
        unknown = [d for d in choice.decisions if d not in DECISIONS]
        if unknown or not choice.decisions:
            raise SearchSpaceError(f"search space: router {name!r}: decisions must be among {list(DECISIONS)}, "
                                   f"got {list(choice.decisions)}")
        if "llm" in choice.decisions and not isinstance(found[name].decide, Stage):
            raise SearchSpaceError(f"search space: router {name!r} has no LLM decision stage to choose")
        if "trained" in choice.decisions and choice.label not in label_fields:
            raise SearchSpaceError(f"search space: router {name!r}: the examples have no label field "
                                   f"{choice.label!r} to train a classifier on (fields: {sorted(label_fields)})")
        for features in choice.features:
            try:
                parse_features(features)
            except ValueError as exc:
                raise SearchSpaceError(f"search space: router {name!r}: {exc}") from None
        if not choice.C or any(c <= 0 for c in choice.C):
            raise SearchSpaceError(f"search space: router {name!r}: C values must be > 0, got {list(choice.C)}")


def suggest(trial, space: dict[str, StageChoices], thresholds: dict[str, tuple[float, ...]] | None = None,
            router_choices: dict[str, RouterChoices] | None = None, decision_stages: dict[str, str] | None = None,
            ) -> TrialChoice:
    """Ask an Optuna trial for one point of the space (categorical choices per stage, cascade and router).

    A router decided by a trained classifier leaves its decision stage (`decision_stages`:
    router -> stage) out of the trial: no model, optimizer or demos are drawn for it.
    """
    chosen_thresholds = {name: trial.suggest_categorical(f"{name}.threshold", list(values))
                         for name, values in (thresholds or {}).items()}
    chosen_routers, skipped = {}, set()
    for name, choice in (router_choices or {}).items():
        decision = trial.suggest_categorical(f"{name}.decision", list(choice.decisions))
        chosen_routers[name] = {"decision": decision}
        if decision == "trained":
            chosen_routers[name]["features"] = trial.suggest_categorical(f"{name}.features", list(choice.features))
            chosen_routers[name]["C"] = trial.suggest_categorical(f"{name}.C", list(choice.C))
            skipped.add((decision_stages or {}).get(name))
    models, optimizers, demos = {}, {}, {}
    for stage, choices in space.items():
        if stage in skipped:
            continue
        models[stage] = trial.suggest_categorical(f"{stage}.model", list(choices.models))
        optimizers[stage] = trial.suggest_categorical(f"{stage}.optimizer", list(choices.optimizers))
        demos[stage] = (trial.suggest_categorical(f"{stage}.demos", list(choices.demos))
                        if get_optimizer(optimizers[stage]).uses_demos else 0)
    return TrialChoice(models, optimizers, demos, chosen_thresholds, chosen_routers)
