"""Any `dspy.Module` is a pipeline: each of its predictors is a stage.

stagewise's own programs name their stages (`Stage("route", ...)`). A plain DSPy program's
stages are its predictors, named by their attribute path as `named_predictors()` gives it:
`area`, `answer.predict` for a `ChainOfThought` member, `hops[1]` for a list. The two
nest freely: a stagewise `Stage` inside a plain module is one stage under its own name (the
predictors of its step belong to it), and a plain module can be a `Stage`'s step.

- [`stages_of`][stagewise.programs.stages_of] finds every stage of a program (a
[`Stage`][stagewise.programs.stage.Stage]
  or a [`PredictorStage`][stagewise.programs.PredictorStage]), by name;
- [`set_models`][stagewise.programs.set_models] assigns each stage's model by name, whatever kind of program it is;
- [`program_inputs`][stagewise.programs.program_inputs] names the fields a call of the program takes;
- `stage_outputs` reads what each plain predictor answered from a DSPy trace (the
  `(predictor, inputs, prediction)` triples DSPy's metrics receive as `trace`).

A plain predictor's model calls are accounted under its stage name: [`stages_of`][stagewise.programs.stages_of] marks
each predictor with its name, and the usage ledger reads the innermost marked predictor among
DSPy's calling modules when no stagewise stage is running
(`current_stage`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dspy

from stagewise.errors import ConfigError
from stagewise.models.usage import STAGE_MARK


@dataclass
class PredictorStage:
    """A plain DSPy predictor seen as a stage: its name is its attribute path in the program."""

    name: str
    predictor: dspy.Predict

    @property
    def step(self) -> dspy.Predict:
        """The module whose state the optimizers learn (the predictor itself)."""
        return self.predictor

    @property
    def signature(self) -> type[dspy.Signature]:
        """The predictor's signature."""
        return self.predictor.signature

    @property
    def lm(self) -> dspy.BaseLM | None:
        """The predictor's model (None: DSPy's configured one)."""
        return self.predictor.lm

    @lm.setter
    def lm(self, lm: dspy.BaseLM | None) -> None:
        self.predictor.lm = lm


def stages_of(program: dspy.Module) -> dict[str, Any]:
    """Every stage of `program` by name: stagewise stages and plain predictors, nested ones included.

    Raises [`ConfigError`][stagewise.errors.ConfigError] when `program` is not a DSPy module, or when
    two stages share a name.
    """
    from stagewise.programs.stage import Stage

    if not isinstance(program, dspy.Module):
        raise ConfigError(f"expected a DSPy program (a dspy.Module), got {type(program).__module__}."
                          f"{type(program).__qualname__}")
    found: dict[str, Any] = {}
    owned: set[int] = set()  # predictors inside a stagewise Stage belong to that stage
    for _, module in program.named_sub_modules():
        if isinstance(module, Stage):
            if module.name in found and found[module.name] is not module:
                raise ConfigError(f"two stages are named {module.name!r}: stage names must be unique")
            found[module.name] = module
            owned.update(id(p) for p in module.step.predictors())
    for path, predictor in program.named_predictors():
        if id(predictor) in owned:
            continue
        if path in found:
            raise ConfigError(f"predictor {path!r} has the name of a stagewise stage: stage names must be unique")
        object.__setattr__(predictor, STAGE_MARK, path)
        found[path] = PredictorStage(path, predictor)
    return found


def named(program: dspy.Module, names: Iterable[str], what: str) -> dict[str, Any]:
    """The stages `names` of `program`; a ConfigError lists the stages it has when one is unknown."""
    stages = stages_of(program)
    unknown = sorted(set(names) - set(stages))
    if unknown:
        raise ConfigError(f"{what}: the program has no stage {', '.join(map(repr, unknown))}; "
                          f"its stages: {', '.join(stages) or 'none'}")
    return stages


def set_models(program: dspy.Module, models: dict[str, Any], *, catalog=None) -> dspy.Module:
    """Give each named stage its model (a catalog name, a model string or a `dspy.LM`); returns `program`.

    A recorded model named for a stage whose current model replays an outcome table replays the
    same table (`replay --model answer=recorded/gpt-4-1106-preview` on a recorded program).
    """
    from stagewise.models.lm import get_lm

    stages = named(program, models, "set_models")
    for name, model in models.items():
        if isinstance(model, dspy.BaseLM):
            stages[name].lm = model
            continue
        current = getattr(stages[name], "lm", None)
        table = getattr(getattr(current, "engine", None), "table", None)
        try:
            stages[name].lm = get_lm(model, catalog=catalog)
        except ConfigError:
            if table is None:
                raise
            stages[name].lm = get_lm(model, catalog=catalog, replay_table=table)
    return program


def set_demos(program: dspy.Module, demos: dict[str, list[dict]]) -> dspy.Module:
    """Give each named stage these few-shot examples (dicts of its fields) instead of its own; returns `program`."""
    from stagewise.programs.stage import Stage

    stages = named(program, demos, "set_demos")
    for name, examples in demos.items():
        if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
            raise ConfigError(f"set_demos: stage {name!r} needs a list of examples, each an object of its fields")
        stage = stages[name]
        predictors = stage.step.predictors() if isinstance(stage, Stage) else [stage.predictor]
        for predictor in predictors:
            predictor.demos = [dspy.Example(**example) for example in examples]
    return program


def program_inputs(program: dspy.Module) -> list[str]:
    """The fields a call of `program` takes, as keyword arguments.

    A plain DSPy module takes the named parameters of its `forward`; a stagewise program takes
    the `input.*` sections its stages read (and a `*.field` pattern's field when no stage
    writes it).

    Examples:
        >>> import dspy
        >>> class Support(dspy.Module):
        ...     def forward(self, message, channel="web"):
        ...         ...
        >>> program_inputs(Support())
        ['message', 'channel']
    """
    from stagewise.programs.stage import Pipeline

    if not isinstance(program, Pipeline):
        # read from the class: DSPy warns about `module.forward` looked up on an instance outside __call__
        parameters = list(inspect.signature(type(program).forward).parameters.values())[1:]  # without self
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    stages = program.stages().values()
    fields = []
    for stage in stages:
        for field, patterns in stage.inputs.items():
            for pattern in patterns:
                name = pattern.removeprefix("input.") if pattern.startswith("input.") else (
                    field if pattern == f"*.{field}" else None)
                if name and name not in fields and not any(name in other.signature.output_fields for other in stages):
                    fields.append(name)
    return fields


def stage_outputs(trace: list, stages: dict[str, Any]) -> dict[str, dspy.Prediction]:
    """What each plain predictor stage answered in one run, from DSPy's trace (its last call)."""
    names = {id(stage.predictor): name for name, stage in stages.items() if isinstance(stage, PredictorStage)}
    outputs = {}
    for predictor, _, prediction in trace:
        name = names.get(id(predictor))
        if name is not None:
            outputs[name] = prediction
    return outputs
