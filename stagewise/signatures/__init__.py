"""Typed DSPy signatures for stage roles. Docstrings are the models' instructions.

- :class:`QueryAnalysis`: what kind of request it is, before anyone answers it;
- :class:`RoutingDecision`: the route for a :class:`~stagewise.programs.Router` stage;
- :class:`SpecialistAnswer`: an answer from the context given; :class:`Summarize`: a compression;
- :class:`Review`: a verdict on an answer before it reaches the user; :class:`Verify`: whether
  an answer is correct (a :class:`~stagewise.programs.Cascade` verifier);
- :class:`Plan` (a list of :class:`SubTask`, each for one specialist) and :class:`Synthesize`:
  a :class:`~stagewise.programs.Hierarchy`'s planner and synthesizer;
- :class:`Aggregate`: one answer from a fan-out's candidates (:class:`~stagewise.programs.LLMAggregate`).

Users write their own signatures the same way; the programs take any signature.
"""

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
