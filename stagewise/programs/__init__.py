"""Programs users compose pipelines from: every one a dspy.Module whose stages are named.

- :class:`Stage`: one step, a DSPy module fed from context sections;
- :class:`Chain`: steps in order; :class:`Retrieve`: a local TF-IDF retrieval step;
- :class:`FanOut`: concurrent branches on one baseline context, then an aggregator;
- :class:`Router`: an LLM or trained classifier picks a route, each route a program;
- :class:`Cascade`: cheapest model first, a scorer accepts or escalates;
- :class:`Hierarchy`: a planner delegates to specialists, a synthesizer combines.

Programs nest; ``program.set_models({"stage": "model"})`` assigns models by stage name, and
``program(query=...)`` returns a prediction with the request's ``trace``.
"""

from stagewise.programs.cascade import Cascade
from stagewise.programs.chain import Chain
from stagewise.programs.fanout import (
    DisagreementReport,
    FanOut,
    LLMAggregate,
    MajorityVote,
    MergeProfile,
    WeightedVote,
)
from stagewise.programs.hierarchy import Hierarchy, PlanError, Specialist
from stagewise.programs.plain import observed_call
from stagewise.programs.retrieval import DocumentIndex, Retrieve
from stagewise.programs.router import Router, UnknownRouteError
from stagewise.programs.stage import Pipeline, Stage, StageConfigError
from stagewise.programs.trace import Trace

__all__ = [
    "Cascade", "Chain", "DisagreementReport", "DocumentIndex", "FanOut", "Hierarchy", "LLMAggregate",
    "MajorityVote", "MergeProfile", "Pipeline", "PlanError", "Retrieve", "Router", "Specialist", "Stage",
    "StageConfigError", "Trace", "UnknownRouteError", "WeightedVote", "observed_call",
]
