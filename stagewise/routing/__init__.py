"""Trained routers and cascade scorers, and their offline evaluation on recorded outcomes.

What a router or a scorer must do is declared in `stagewise.routing.contracts`:
[`Decider`][stagewise.routing.Decider] (predicts a label for each text: a Router's decision),
[`Scorer`][stagewise.routing.Scorer] (predicts the probability that an answer is right: a Cascade's scorer) and
[`OutcomeLearner`][stagewise.routing.OutcomeLearner] (trains on recorded outcomes: what
[`route_eval`][stagewise.routing.route_eval] evaluates).
"""

from stagewise.routing.contracts import Decider, OutcomeLearner, Scorer
from stagewise.routing.evaluation import RoutingEvalError, RoutingReport, route_eval
from stagewise.routing.features import AnswerChecks, TextFeatures
from stagewise.routing.outcomes import Outcomes, load_outcomes, outcomes_from_table
from stagewise.routing.persist import RouterFileError, load_router, save_router
from stagewise.routing.routers import (
                                       CascadeScorer,
                                       LabelRouter,
                                       QualityRouter,
                                       RouterSpecError,
                                       WinRouter,
                                       ZeroRouter,
                                       make_router,
                                       suggest_router,
)
from stagewise.routing.selection import Selection, candidate_specs, nested_route_eval, select_router

__all__ = [
    "AnswerChecks", "CascadeScorer", "Decider", "LabelRouter", "OutcomeLearner", "Outcomes", "QualityRouter",
    "RouterFileError", "RouterSpecError", "RoutingEvalError", "RoutingReport", "Scorer", "Selection", "TextFeatures",
    "WinRouter", "ZeroRouter",
    "candidate_specs", "load_outcomes", "load_router", "make_router", "nested_route_eval", "outcomes_from_table",
    "route_eval", "save_router", "select_router", "suggest_router",
]
