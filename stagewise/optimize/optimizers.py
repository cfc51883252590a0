"""Stage optimizers: what a search space's optimizer names mean, and how users add their own.

A [`StageOptimizer`][stagewise.optimize.StageOptimizer] wraps one DSPy teleprompter
(DSPy's `Teleprompter`: `compile(student, *, trainset, ...)`) and says what it needs from the study:
demos to search, a teacher program, a reflection model, one model for the whole program. The
study compiles a program with it and keeps one stage's learned state (see `stagewise.optimize.compile`).

Config names (`[search.stages.NAME] optimizers = [...]`, `JointOptimizer(optimizers=...)`)
resolve through a registry: `none`, `labeled_fewshot`, `bootstrap_fewshot`,
`bootstrap_random_search`, `mipro`, `gepa` and `simba` are registered here; add yours
with [`register_optimizer`][stagewise.optimize.register_optimizer] (from the module of your program's
factory, so `stagewise optimize` and its workers see it):

```python
class QuickSimba(StageOptimizer):
    uses_demos = True      # the study searches its demo counts
    single_model = True    # SIMBA samples the whole program with one model

    def build(self, setup):
        return dspy.SIMBA(metric=setup.metric, bsize=min(4, len(setup.trainset)), num_candidates=2,
                          max_steps=1, max_demos=setup.demos, prompt_model=setup.prompt_model)

register_optimizer("quick_simba", QuickSimba)
```
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import dspy

from stagewise.errors import ConfigError, SearchSpaceError

__all__ = [
    "BootstrapFewShot", "BootstrapRandomSearch", "Gepa", "LabeledFewShot", "Mipro", "NoOptimizer",
    "OptimizerSetup", "Reflection", "Simba", "StageOptimizer", "get_optimizer", "optimizer_names",
    "register_optimizer",
]


@dataclass(frozen=True)
class Reflection:
    """What reflective optimizers (GEPA; MIPRO's and SIMBA's prompt model) need beyond the metric."""

    lm: Any  # the reflection model
    model: str  # its catalog name (part of the cache key)
    feedback: Callable  # (example, prediction) -> (score, feedback text)
    max_metric_calls: int = 40


@dataclass(frozen=True)
class OptimizerSetup:
    """What the study hands an optimizer for one stage's compile."""

    demos: int  # the trial's demo count for the stage (0 for optimizers that search none)
    metric: Callable  # DSPy metric: (example, prediction, trace=None) -> bool
    trainset: Sequence[dspy.Example]
    task_lm: Any  # the stage's model
    reflection: Reflection | None = None  # the study's reflection model, when it names one

    @property
    def prompt_model(self):
        """The model that writes instructions: the reflection model when the study names one, else the stage's."""
        return self.reflection.lm if self.reflection is not None else self.task_lm


class StageOptimizer:
    """One kind of stage optimization; subclasses set the capabilities and implement `build`.

    Capabilities (class attributes) tell the study what the optimizer needs:

    - `compiles`: False only for `none` (the stage keeps its prompt);
    - `uses_demos`: the trial's demo count is searched for it (0 demos: nothing to compile);
    - `model_free`: its result depends on no model (the compile cache leaves models out of the key);
    - `needs_teacher`: `compile` gets `teacher=` (the program with every stage's model);
    - `reflection`: `"required"` (the study must name a reflection model), `"optional"` (used as
      the prompt model when named) or `"none"`;
    - `single_model`: the teleprompter runs the whole program on one model (`dspy.Module.get_lm`):
      the student is given the stage's model on every predictor; only the stage's state is kept.
    """

    compiles: ClassVar[bool] = True
    uses_demos: ClassVar[bool] = False
    model_free: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    reflection: ClassVar[Literal["none", "optional", "required"]] = "none"
    single_model: ClassVar[bool] = False

    def build(self, setup: OptimizerSetup):
        """The DSPy teleprompter for one stage's compile."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    def compile(self, student: dspy.Module, *, setup: OptimizerSetup, teacher: dspy.Module | None = None):
        """Compile `student` (a copy of the whole program) and return the compiled program."""
        if self.single_model:
            student.set_lm(setup.task_lm)
        kwargs = {"teacher": teacher} if self.needs_teacher and teacher is not None else {}
        return self.build(setup).compile(student, trainset=list(setup.trainset), **kwargs)

    def cache_content(self, reflection: Reflection | None) -> dict:
        """What the compiled state depends on beyond the stage, demos, data and models (the cache key)."""
        if self.reflection != "none" and reflection is not None:
            return {"reflection": [reflection.model]}
        return {}

    def uses_reflection(self, reflection_model: str | None) -> bool:
        """Whether a compile with this optimizer calls the study's reflection model."""
        return self.reflection == "required" or (self.reflection == "optional" and bool(reflection_model))


class NoOptimizer(StageOptimizer):
    """`none`: the stage keeps its signature's instructions and no demos."""

    compiles = False
    model_free = True


class LabeledFewShot(StageOptimizer):
    """`labeled_fewshot`: `k` labeled training examples as demos (`dspy.LabeledFewShot`)."""

    uses_demos = True
    model_free = True

    def build(self, setup: OptimizerSetup):
        """`dspy.LabeledFewShot(k=demos)`."""
        return dspy.LabeledFewShot(k=setup.demos)


class BootstrapFewShot(StageOptimizer):
    """`bootstrap_fewshot`: demos from the teacher's passing traces (`dspy.BootstrapFewShot`)."""

    uses_demos = True
    needs_teacher = True

    def build(self, setup: OptimizerSetup):
        """One round, at most `demos` bootstrapped and `demos` labeled demos."""
        return dspy.BootstrapFewShot(metric=setup.metric, max_bootstrapped_demos=setup.demos,
                                     max_labeled_demos=setup.demos, max_rounds=1)


class BootstrapRandomSearch(StageOptimizer):
    """`bootstrap_random_search`: the best of a few bootstrapped demo sets (`dspy.BootstrapFewShotWithRandomSearch`).

    Args:
        candidates: how many candidate demo sets to try.
    """

    uses_demos = True
    needs_teacher = True

    def __init__(self, candidates: int = 2):
        self.candidates = candidates

    def build(self, setup: OptimizerSetup):
        """Two candidate programs by default, scored on the training set."""
        return dspy.BootstrapFewShotWithRandomSearch(metric=setup.metric, max_bootstrapped_demos=setup.demos,
                                                     max_labeled_demos=setup.demos,
                                                     num_candidate_programs=self.candidates, num_threads=1)


class Mipro(StageOptimizer):
    """`mipro`: instructions and demos proposed and searched by `dspy.MIPROv2` (`auto="light"`).

    Candidate instructions are written by the study's reflection model when it names one, else by
    the stage's own model; each stage calls its own model.
    """

    uses_demos = True
    reflection = "optional"

    def build(self, setup: OptimizerSetup):
        """`dspy.MIPROv2` with the stage's model as task model."""
        return dspy.MIPROv2(metric=setup.metric, prompt_model=setup.prompt_model, task_model=setup.task_lm,
                            auto="light", max_bootstrapped_demos=setup.demos, max_labeled_demos=setup.demos,
                            num_threads=1)


class Gepa(StageOptimizer):
    """`gepa`: instructions evolved by `dspy.GEPA` from the program's traces and textual feedback.

    The feedback (what the metric expected, what the program answered) is read by a reflection model.
    """

    reflection = "required"

    def build(self, setup: OptimizerSetup):
        """`dspy.GEPA` with the reflection's budget of metric calls."""
        reflection = setup.reflection
        if reflection is None:
            raise ConfigError("the gepa optimizer needs a reflection model ([search] reflection_model)")

        def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
            score, text = reflection.feedback(gold, pred)
            return dspy.Prediction(score=score, feedback=text)

        return dspy.GEPA(metric=feedback_metric, reflection_lm=reflection.lm,
                         max_metric_calls=reflection.max_metric_calls, num_threads=1, track_stats=False,
                         use_merge=False)

    def cache_content(self, reflection: Reflection | None) -> dict:
        """The reflection model and its budget of metric calls."""
        return {} if reflection is None else {"reflection": [reflection.model, reflection.max_metric_calls]}


class Simba(StageOptimizer):
    """`simba`: demos and self-written rules from stochastic mini-batch ascent (`dspy.SIMBA`).

    SIMBA samples the whole program on one model (copies of it at temperature 1.0), so the student
    runs the stage's model on every predictor; the stage's learned demos and rules are kept. Its
    mini-batch is at most `bsize` training examples (fewer when the training split is smaller).

    Args:
        bsize: the largest mini-batch.
        candidates: candidate programs per step.
        steps: optimization steps.
    """

    uses_demos = True
    single_model = True
    reflection = "optional"

    def __init__(self, bsize: int = 8, candidates: int = 4, steps: int = 4):
        self.bsize, self.candidates, self.steps = bsize, candidates, steps

    def build(self, setup: OptimizerSetup):
        """`dspy.SIMBA` with at most `demos` demos per predictor."""
        return dspy.SIMBA(metric=setup.metric, bsize=min(self.bsize, len(setup.trainset)),
                          num_candidates=self.candidates, max_steps=self.steps, max_demos=setup.demos,
                          prompt_model=setup.prompt_model, num_threads=1)


_REGISTRY: dict[str, StageOptimizer] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_optimizer(name: str, optimizer: type[StageOptimizer] | StageOptimizer, *, replace: bool = False) -> None:
    """Make `name` an optimizer a search space may name.

    Args:
        name: the name configs use (`optimizers = ["name"]`).
        optimizer: a [`StageOptimizer`][stagewise.optimize.StageOptimizer] subclass (instantiated without
            arguments) or an instance (`Simba(steps=8)`).
        replace: replace an optimizer registered under `name`; without it, registering a name twice
            is a [`ConfigError`][stagewise.ConfigError].

    Raises:
        ConfigError: `name` is not lower-case letters, digits and `_` (a letter first), `optimizer` is
            not a `StageOptimizer`, or `name` is already registered and `replace` is false.

    Examples:
        `register_optimizer("long_simba", Simba(steps=8))` makes `long_simba` a name configs may use.
        A name is registered once:

        >>> from stagewise.optimize import Simba, get_optimizer, register_optimizer
        >>> type(get_optimizer("simba")).__name__
        'Simba'
        >>> register_optimizer("simba", Simba(steps=8))
        Traceback (most recent call last):
        ...
        stagewise.errors.ConfigError: optimizer 'simba' is already registered ...
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"optimizer name {name!r}: use lower-case letters, digits and _ (a letter first)")
    instance = optimizer() if isinstance(optimizer, type) else optimizer
    if not isinstance(instance, StageOptimizer):
        raise ConfigError(f"optimizer {name!r}: expected a StageOptimizer subclass or instance, "
                          f"got {type(optimizer).__name__}")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"optimizer {name!r} is already registered (register_optimizer(..., replace=True) "
                          "replaces it)")
    _REGISTRY[name] = instance


def optimizer_names() -> tuple[str, ...]:
    """The registered optimizer names, in registration order."""
    return tuple(_REGISTRY)


def get_optimizer(name: str) -> StageOptimizer:
    """The optimizer registered as `name`.

    Raises:
        SearchSpaceError: no optimizer is registered as `name`; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise SearchSpaceError(f"unknown optimizer {name!r} (optimizers: {', '.join(_REGISTRY)})") from None


for _name, _optimizer in [("none", NoOptimizer), ("labeled_fewshot", LabeledFewShot),
                          ("bootstrap_fewshot", BootstrapFewShot), ("bootstrap_random_search", BootstrapRandomSearch),
                          ("mipro", Mipro), ("gepa", Gepa), ("simba", Simba)]:
    register_optimizer(_name, _optimizer)
