"""Programs users compose pipelines from: every one a dspy.Module whose stages are named.

- [`Stage`][stagewise.programs.Stage]: one step, a DSPy module fed from context sections;
[`StageConfigError`][stagewise.programs.StageConfigError]
  when a program is assembled wrongly;
- [`Chain`][stagewise.programs.Chain]: steps in order; [`Retrieve`][stagewise.programs.Retrieve] over a
[`DocumentIndex`][stagewise.programs.DocumentIndex]: a local
  TF-IDF retrieval step;
- [`FanOut`][stagewise.programs.FanOut]: concurrent branches on one baseline context, then an
[`Aggregator`][stagewise.programs.Aggregator]
  ([`MajorityVote`][stagewise.programs.MajorityVote], [`WeightedVote`][stagewise.programs.WeightedVote],
  [`DisagreementReport`][stagewise.programs.DisagreementReport], [`MergeProfile`][stagewise.programs.MergeProfile],
  [`LLMAggregate`][stagewise.programs.LLMAggregate]);
  [`BaselineMismatchError`][stagewise.programs.BaselineMismatchError];
- [`Router`][stagewise.programs.Router]: an LLM or trained classifier picks a route, each route a program
  ([`UnknownRouteError`][stagewise.programs.UnknownRouteError]);
- [`Cascade`][stagewise.programs.Cascade]: cheapest model first, a scorer accepts or escalates;
- [`Hierarchy`][stagewise.programs.Hierarchy]: a planner delegates to each
[`Specialist`][stagewise.programs.Specialist], a synthesizer combines
  ([`PlanError`][stagewise.programs.PlanError]);
- [`Pipeline`][stagewise.programs.Pipeline]: the base of every program (subclasses implement `execute(run)` on a
  [`Run`][stagewise.programs.Run], logging a [`StageRun`][stagewise.programs.StageRun] per stage);
  [`Trace`][stagewise.programs.Trace] and [`StageTrace`][stagewise.programs.StageTrace]: what `prediction.trace` holds.

Any `dspy.Module` (a plain DSPy program too):

- [`stages_of`][stagewise.programs.stages_of] finds its stages by name (a [`Stage`][stagewise.programs.Stage] or a
[`PredictorStage`][stagewise.programs.PredictorStage]);
  [`named`][stagewise.programs.named] the ones asked for; [`set_models`][stagewise.programs.set_models] and
  [`set_demos`][stagewise.programs.set_demos] set their models and few-shot examples;
  [`program_inputs`][stagewise.programs.program_inputs] names the fields its call takes;
  [`observed_call`][stagewise.programs.observed_call] calls it with its predictors reported as stages.

Execution-time layers (the runtime's checkpoints, tracing, stores, resilience) plug in here:

- [`Observer`][stagewise.programs.Observer]: hooks around each request, stage
([`StageEvent`][stagewise.programs.StageEvent]) and step
  ([`StepEvent`][stagewise.programs.StepEvent], of a [`StepKind`][stagewise.programs.StepKind]); install with
  [`observing`][stagewise.programs.observing]; a program's own steps report with
  [`stepping`][stagewise.programs.stepping];
- [`CallGuard`][stagewise.programs.CallGuard]: how each stage's model call is made; install with
[`guarding`][stagewise.programs.guarding].

Programs nest; `program.set_models({"stage": "model"})` assigns models by stage name, and
`program(query=...)` returns a prediction with the request's `trace`.
"""

from stagewise.programs.cascade import Cascade
from stagewise.programs.chain import Chain
from stagewise.programs.fanout import (
    Aggregator,
    BaselineMismatchError,
    DisagreementReport,
    FanOut,
    LLMAggregate,
    MajorityVote,
    MergeProfile,
    WeightedVote,
)
from stagewise.programs.hierarchy import Hierarchy, PlanError, Specialist
from stagewise.programs.plain import observed_call
from stagewise.programs.predictors import PredictorStage, named, program_inputs, set_demos, set_models, stages_of
from stagewise.programs.retrieval import DocumentIndex, Retrieve
from stagewise.programs.router import Router, UnknownRouteError
from stagewise.programs.run import (
    CallGuard,
    Observer,
    Run,
    StageEvent,
    StageRun,
    StepEvent,
    StepKind,
    guarding,
    observing,
    stepping,
)
from stagewise.programs.stage import Pipeline, Stage, StageConfigError
from stagewise.programs.trace import StageTrace, Trace

__all__ = [
    "Aggregator", "BaselineMismatchError", "CallGuard", "Cascade", "Chain", "DisagreementReport", "DocumentIndex",
    "FanOut", "Hierarchy", "LLMAggregate", "MajorityVote", "MergeProfile", "Observer", "Pipeline", "PlanError",
    "PredictorStage", "Retrieve", "Router", "Run", "Specialist", "Stage", "StageConfigError", "StageEvent",
    "StageRun", "StageTrace", "StepEvent", "StepKind", "Trace", "UnknownRouteError", "WeightedVote", "guarding",
    "named", "observed_call", "observing", "program_inputs", "set_demos", "set_models", "stages_of", "stepping",
]
