"""Typed DSPy signatures for stage roles. Docstrings are the models' instructions."""

from stagewise.signatures.roles import (
    Aggregate,
    Plan,
    QueryAnalysis,
    Review,
    RoutingDecision,
    SpecialistAnswer,
    SubTask,
    Summarize,
    Synthesize,
    Verify,
)

__all__ = [
    "Aggregate",
    "Plan",
    "QueryAnalysis",
    "Review",
    "RoutingDecision",
    "SpecialistAnswer",
    "SubTask",
    "Summarize",
    "Synthesize",
    "Verify",
]
