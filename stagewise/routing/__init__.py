"""Trained routers and cascade scorers, and their offline evaluation on recorded outcomes."""

from stagewise.routing.evaluation import RoutingEvalError, RoutingReport, route_eval
from stagewise.routing.features import AnswerChecks, TextFeatures
from stagewise.routing.outcomes import Outcomes, load_outcomes, outcomes_from_table
from stagewise.routing.persist import RouterFileError, load_router, save_router
from stagewise.routing.routers import (CascadeScorer, LabelRouter, QualityRouter, RouterSpecError, WinRouter,
                                       make_router, suggest_router)

__all__ = [
    "AnswerChecks", "CascadeScorer", "LabelRouter", "Outcomes", "QualityRouter", "RouterFileError",
    "RouterSpecError", "RoutingEvalError", "RoutingReport", "TextFeatures", "WinRouter", "load_outcomes",
    "load_router", "make_router", "outcomes_from_table", "route_eval", "save_router", "suggest_router",
]
