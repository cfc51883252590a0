"""Programs users compose pipelines from: every one a dspy.Module whose stages are named.

- :class:`Stage`: one step, a DSPy module fed from context sections; :class:`StageConfigError`
  when a program is assembled wrongly;
- :class:`Chain`: steps in order; :class:`Retrieve` over a :class:`DocumentIndex`: a local
  TF-IDF retrieval step;
- :class:`FanOut`: concurrent branches on one baseline context, then an :class:`Aggregator`
  (:class:`MajorityVote`, :class:`WeightedVote`, :class:`DisagreementReport`,
  :class:`MergeProfile`, :class:`LLMAggregate`); :class:`BaselineMismatchError`;
- :class:`Router`: an LLM or trained classifier picks a route, each route a program
  (:class:`UnknownRouteError`);
- :class:`Cascade`: cheapest model first, a scorer accepts or escalates;
- :class:`Hierarchy`: a planner delegates to each :class:`Specialist`, a synthesizer combines
  (:class:`PlanError`);
- :class:`Pipeline`: the base of every program (subclasses implement ``execute(run)`` on a
  :class:`Run`, logging a :class:`StageRun` per stage); :class:`Trace` and :class:`StageTrace`:
  what ``prediction.trace`` holds.

Any ``dspy.Module`` (a plain DSPy program too):

- :func:`stages_of` finds its stages by name (a :class:`Stage` or a :class:`PredictorStage`);
  :func:`named` the ones asked for; :func:`set_models` and :func:`set_demos` set their models and
  few-shot examples; :func:`observed_call` calls it with its predictors reported as stages.

Execution-time layers (the runtime's checkpoints, tracing, stores, resilience) plug in here:

- :class:`Observer`: hooks around each request, stage (:class:`StageEvent`) and step
  (:class:`StepEvent`, of a :data:`StepKind`); install with :func:`observing`; a program's own
  steps report with :func:`stepping`;
- :class:`CallGuard`: how each stage's model call is made; install with :func:`guarding`.

Programs nest; ``program.set_models({"stage": "model"})`` assigns models by stage name, and
``program(query=...)`` returns a prediction with the request's ``trace``.
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
from stagewise.programs.predictors import PredictorStage, named, set_demos, set_models, stages_of
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
    "named", "observed_call", "observing", "set_demos", "set_models", "stages_of", "stepping",
]
