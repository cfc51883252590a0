"""Typed DSPy signatures for stage roles. Docstrings are the models' instructions.

- [`QueryAnalysis`][stagewise.signatures.QueryAnalysis]: what kind of request it is, before anyone answers it;
- [`RoutingDecision`][stagewise.signatures.RoutingDecision]: the route for a [`Router`][stagewise.programs.Router]
stage;
- [`SpecialistAnswer`][stagewise.signatures.SpecialistAnswer]: an answer from the context given;
[`Summarize`][stagewise.signatures.Summarize]: a compression;
- [`Review`][stagewise.signatures.Review]: a verdict on an answer before it reaches the user;
[`Verify`][stagewise.signatures.Verify]: whether
  an answer is correct (a [`Cascade`][stagewise.programs.Cascade] verifier);
- [`Plan`][stagewise.signatures.Plan] (a list of [`SubTask`][stagewise.signatures.SubTask], each for one specialist) and
[`Synthesize`][stagewise.signatures.Synthesize]:
  a [`Hierarchy`][stagewise.programs.Hierarchy]'s planner and synthesizer;
- [`Aggregate`][stagewise.signatures.Aggregate]: one answer from a fan-out's candidates
([`LLMAggregate`][stagewise.programs.LLMAggregate]).

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
