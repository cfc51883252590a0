"""What a router or a scorer must do to be used by stagewise: three declared contracts.

- [`Decider`][stagewise.routing.Decider]: predicts a label for each text (a route, or the model to call). A
  [`Router`][stagewise.programs.router.Router] takes one as its `decide` (or
  `use_classifier`). The trained routers ([`LabelRouter`][stagewise.routing.routers.LabelRouter],
  `QualityRouter`, `WinRouter`, `ZeroRouter`) are Deciders.
- [`Scorer`][stagewise.routing.Scorer]: predicts the probability that an answer to a query is right. A
  [`Cascade`][stagewise.programs.cascade.Cascade] takes one as its `scorer`; the trained
  [`CascadeScorer`][stagewise.routing.routers.CascadeScorer] is one.
- [`OutcomeLearner`][stagewise.routing.OutcomeLearner]: trains on recorded outcomes and says how much each query needs
  each model. [`route_eval`][stagewise.routing.evaluation.route_eval] trains and evaluates one (every
  router and scorer of `stagewise.routing.routers` but the label router is one).

The protocols are structural: a class satisfies one by having its members, no base class
needed. `Scorer` and `OutcomeLearner` are checked at run time (`isinstance`), which
only looks for the members' names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from stagewise.routing.outcomes import Outcomes

__all__ = ["Decider", "OutcomeLearner", "Scorer"]


class Decider(Protocol):
    """Predicts a label for each text: the route to take, or the model to call.

    `predict(texts)` returns one label per text, in order (a list or an array of strings). A
    Decider may also have `predict_proba(texts)` (one row of probabilities per text) and
    `classes_` (the label of each column): a Router then reports the highest probability as
    its confidence, and every label's probability.
    """

    def predict(self, texts: Sequence[str]) -> Sequence[Any]:
        """One label per text, in order."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Predicts the probability that an answer to a query is right.

    `correct_probability(queries, answers)` returns, for each (query, answer) pair, a number
    in [0, 1]: the probability that the answer is right. A Cascade accepts a tier's answer when
    it reaches the cascade's threshold, and escalates to the next tier otherwise.
    """

    def correct_probability(self, queries: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(answer i is right for query i), one number per pair, shape (n,)."""
        ...


@runtime_checkable
class OutcomeLearner(Protocol):
    """Trains on recorded outcomes and says how much each query needs each model.

    It trains on an [`Outcomes`][stagewise.routing.outcomes.Outcomes] table; it is what `route_eval`
    trains and evaluates.

    - `fit_outcomes(outcomes, weak, strong)`: trains on the table's prompts and scores (a
      scorer on the `weak` model's recorded responses); returns the fitted learner.
    - `route_values(outcomes, weak, strong)`: for each row of `outcomes`, with `weak` and
      `strong` named, how much the query needs the strong model rather than the weak one, shape
      (n,) (the highest go to the strong model first); without them, each model's predicted
      quality, shape (n, m) in the table's model order (a lambda sweep trades it for cost).
    - `pairwise`: True when it routes between two models only (a weak and a strong one), even
      on a table of more models.
    - `reads_queries`: False when its choice reads no query (the zero router): evaluation then
      scores the best fixed mix of single models instead of its route values.
    - `get_params`: scikit-learn's; `route_eval` fits a fresh copy (`sklearn.base.clone`)
      on each training part. Subclassing `sklearn.base.BaseEstimator` provides it.

    A learner that is also a [`Scorer`][stagewise.routing.Scorer] is evaluated as a cascade: the weak model has
    answered every query before the scorer reads its answer, so an escalation adds the strong
    model's call to the weak one's instead of replacing it.
    """

    pairwise: bool
    reads_queries: bool

    def fit_outcomes(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> Any:
        """Trained on `outcomes`; returns the fitted learner."""
        ...

    def route_values(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> np.ndarray:
        """(n,) need of the strong model when `weak`/`strong` are named, else (n, m) predicted quality."""
        ...

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn's convention), for a fresh copy."""
        ...
