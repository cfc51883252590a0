"""Trained routers and cascade scorers: scikit-learn estimators over text features (`stagewise.routing.features`).

- [`LabelRouter`][stagewise.routing.LabelRouter]: labeled queries -> route label (a classifier; e.g. a support desk's
  intent router).
- [`QualityRouter`][stagewise.routing.QualityRouter]: a recorded outcome table -> each model's predicted quality; routes
  each query to the model maximizing predicted quality - `cost_weight` * cost (RouterBench).
- [`WinRouter`][stagewise.routing.WinRouter]: two models -> probability that the strong model wins (it is right where
  the weak one is wrong); routes to it above `threshold` (RouteLLM).
- [`CascadeScorer`][stagewise.routing.CascadeScorer]: (query, cheap model's response) -> probability the response is
  correct; a cascade escalates below its threshold (FrugalGPT).
- [`ZeroRouter`][stagewise.routing.ZeroRouter]: no learning, the best fixed mix of single models (RouterBench's zero
  router); what a learned router has to beat.

All follow scikit-learn's conventions (`fit`/`predict`/`predict_proba`/`score`,
`get_params`) and the contracts of `stagewise.routing.contracts`: each router is a
`Decider` (a [`Router`][stagewise.programs.router.Router]'s `decide`), the cascade scorer is a
`Scorer` (a [`Cascade`][stagewise.programs.cascade.Cascade]'s `scorer`), and all but the label
router are `OutcomeLearner` objects (what `route_eval` trains and evaluates).
`make_router("kind:key=value,...")` builds one from a spec string; `suggest_router` draws one
from an Optuna trial.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression, Ridge

from stagewise.errors import ConfigError, DataError
from stagewise.routing.features import TextFeatures, as_pairs, parse_features
from stagewise.routing.outcomes import Outcomes


class RouterSpecError(ConfigError):
    """A router spec string names an unknown kind or option, or a bad value."""


def _classifier(C: float, balanced: bool = False, binary: bool = True) -> LogisticRegression:
    # liblinear is the faster solver for two classes on sparse text features (about 30% here)
    return LogisticRegression(C=C, max_iter=3000, solver="liblinear" if binary else "lbfgs",
                              class_weight="balanced" if balanced else None)


class _TextEstimator(BaseEstimator):
    features: str
    C: float

    def _features(self, X):
        return self.features_.transform(X)

    def _fit_features(self, X):
        self.features_ = TextFeatures(self.features)
        return self.features_.fit_transform(X)  # reads X once; the matrix of fit(X).transform(X)


class LabelRouter(ClassifierMixin, _TextEstimator):
    """Query -> route label, from labeled queries.

    Args:
        features: the text features (see [`TextFeatures`][stagewise.routing.features.TextFeatures]).
        C: the inverse regularization of the logistic regression (class-balanced).
    """

    def __init__(self, features: str = "word+char", C: float = 4.0):
        self.features = features
        self.C = C

    def fit(self, X, y):
        """Train on the queries `X` and their route labels `y`.

        Raises:
            DataError: `y` has fewer than two labels.
        """
        labels = np.asarray([str(v) for v in y])
        if len(set(labels)) < 2:
            raise DataError("a label router needs at least two route labels in its training data, "
                            f"got {sorted(set(labels))}")
        self.model_ = _classifier(self.C, balanced=True, binary=len(set(labels)) == 2).fit(
            self._fit_features(list(X)), labels)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        """Each label's probability per query, columns in `classes_` order."""
        return self.model_.predict_proba(self._features(list(X)))

    def predict(self, X):
        """The route label of each query."""
        return self.model_.predict(self._features(list(X)))


class _OutcomeRouter(_TextEstimator):
    """Routers whose predictions are model names; `score` is the mean realized quality."""

    models_: list[str]
    pairwise = False  # OutcomeLearner: routes among every model of its table
    reads_queries = True

    def route_values(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> np.ndarray:
        """Per prompt of `outcomes`, the predicted quality gap (strong minus weak) or each model's quality.

        With `weak` and `strong`, the gap, shape (n,); without, each model's predicted quality, (n, m),
        in the column order of `outcomes`.

        Raises:
            DataError: `outcomes` has a model the router was not trained on.
        """
        unknown = [m for m in outcomes.models if m not in self.models_]
        if unknown:
            raise DataError(f"{outcomes.source!r}: the router was not trained on {unknown} "
                            f"(its models: {self.models_})")
        quality = self.predict_quality(outcomes.prompts)[:, [self.models_.index(m) for m in outcomes.models]]
        if weak is None or strong is None:
            return quality
        return quality[:, outcomes.column(strong)] - quality[:, outcomes.column(weak)]

    def score(self, X, y, sample_weight=None) -> float:
        scores = _matrix(y, self.models_)
        chosen = [self.models_.index(m) for m in self.predict(X)]
        return float(np.average(scores[np.arange(len(chosen)), chosen], weights=sample_weight))


class QualityRouter(_OutcomeRouter):
    """Predicts each model's quality on a query; picks argmax(quality - cost_weight * cost).

    `cost_weight` (lambda, quality points per dollar of a call) applies at prediction time:
    changing it needs no refit.

    Args:
        features: the text features (see [`TextFeatures`][stagewise.routing.features.TextFeatures]).
        C: the inverse regularization (logistic regression for 0/1 scores, ridge otherwise).
        cost_weight: quality points per dollar, traded against cost at prediction time.
    """

    def __init__(self, features: str = "word+char", C: float = 1.0, cost_weight: float = 0.0):
        self.features = features
        self.C = C
        self.cost_weight = cost_weight

    def fit(self, X, y, *, models: list[str] | None = None, costs=None):
        """`y`: (n, m) scores (a DataFrame's columns name the models); `costs`: (n, m) or (m,) USD per call."""
        self.models_ = _models(y, models)
        scores = _matrix(y, self.models_)
        features = self._fit_features(list(X))
        binary = bool(np.isin(scores, (0.0, 1.0)).all())
        self.estimators_ = []
        for j in range(scores.shape[1]):
            column = scores[:, j]
            if binary and len(np.unique(column)) == 2:
                self.estimators_.append(_classifier(self.C).fit(features, column.astype(int)))
            elif not binary and np.ptp(column) > 0:
                self.estimators_.append(Ridge(alpha=1.0 / self.C).fit(features, column))
            else:
                self.estimators_.append(float(column.mean()))  # every query scored alike
        costs = np.zeros(len(self.models_)) if costs is None else np.asarray(costs, dtype=float)
        self.expected_cost_ = costs.mean(axis=0) if costs.ndim == 2 else costs
        return self

    def fit_outcomes(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> QualityRouter:
        """Trained on every model of `outcomes` (`weak`/`strong`, which two-model routers take, are unused)."""
        return self.fit(outcomes.prompts, outcomes.scores, models=outcomes.models, costs=outcomes.costs)

    def predict_quality(self, X) -> np.ndarray:
        """Each model's predicted quality per query, in [0, 1], shape (n, m)."""
        features = self._features(list(X))
        columns = []
        for estimator in self.estimators_:
            if isinstance(estimator, float):
                columns.append(np.full(features.shape[0], estimator))
            elif isinstance(estimator, LogisticRegression):
                columns.append(estimator.predict_proba(features)[:, 1])
            else:
                columns.append(np.clip(estimator.predict(features), 0.0, 1.0))
        return np.column_stack(columns)

    def predict_proba(self, X):
        """Each model's predicted quality (probability of a correct answer for 0/1 scores); not normalized."""
        return self.predict_quality(X)

    def predict(self, X):
        """The model maximizing predicted quality - `cost_weight` * expected cost, per query."""
        utility = self.predict_quality(X) - self.cost_weight * self.expected_cost_
        return np.asarray(self.models_, dtype=object)[np.argmax(utility, axis=1)]

    @property
    def classes_(self):
        """The model names, in column order."""
        return np.asarray(self.models_, dtype=object)


class WinRouter(_OutcomeRouter):
    """Two models: P(the strong model is right where the weak one is wrong); strong above `threshold`.

    Args:
        features: the text features (see [`TextFeatures`][stagewise.routing.features.TextFeatures]).
        C: the inverse regularization of the logistic regression.
        threshold: the win probability at or above which a query goes to the strong model.
    """

    pairwise = True

    def __init__(self, features: str = "word+char", C: float = 1.0, threshold: float = 0.5):
        self.features = features
        self.C = C
        self.threshold = threshold

    def fit(self, X, y, *, models: list[str] | None = None):
        """`y`: (n, 2) scores, the weak (cheaper) model first."""
        self.models_ = _models(y, models)
        if len(self.models_) != 2:
            raise DataError(f"a win router routes between two models, got {len(self.models_)}: {self.models_}")
        scores = _matrix(y, self.models_)
        wins = (scores[:, 1] > scores[:, 0]).astype(int)
        features = self._fit_features(list(X))
        self.model_ = _classifier(self.C).fit(features, wins) if len(set(wins)) == 2 else float(wins.mean())
        return self

    def fit_outcomes(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> WinRouter:
        """Trained on the `weak` and `strong` models' scores (on a table of two: the cheaper and the dearer).

        Raises:
            DataError: the table has more than two models and neither is named.
        """
        weak, strong = _pair(outcomes, weak, strong)
        columns = [outcomes.column(weak), outcomes.column(strong)]
        return self.fit(outcomes.prompts, outcomes.scores[:, columns], models=[weak, strong])

    def strong_probability(self, X) -> np.ndarray:
        """P(the strong model wins) per query, shape (n,)."""
        features = self._features(list(X))
        if isinstance(self.model_, float):
            return np.full(features.shape[0], self.model_)
        return self.model_.predict_proba(features)[:, 1]

    def route_values(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> np.ndarray:
        """The probability that the strong model wins, per prompt of `outcomes`.

        Raises:
            DataError: `weak` or `strong` is not the model the router was trained as.
        """
        named = [weak or self.models_[0], strong or self.models_[1]]
        if named != self.models_:
            raise DataError(f"the win router was trained with weak {self.models_[0]!r} and strong {self.models_[1]!r}, "
                            f"asked for weak {named[0]!r} and strong {named[1]!r}")
        return self.strong_probability(outcomes.prompts)

    def predict_proba(self, X):
        """(P(weak), P(strong wins)) per query, shape (n, 2)."""
        strong = self.strong_probability(X)
        return np.column_stack([1.0 - strong, strong])

    def predict(self, X):
        """The strong model where its win probability reaches `threshold`, else the weak one, per query."""
        return np.where(self.strong_probability(X) >= self.threshold, self.models_[1], self.models_[0]).astype(object)

    @property
    def classes_(self):
        """The model names, in column order."""
        return np.asarray(self.models_, dtype=object)


class ZeroRouter(_OutcomeRouter):
    """No learning: a fixed mix of single models that reads no query (RouterBench's zero router).

    Fitted on an outcome table it keeps each model's mean quality and cost; `predict` sends
    every query to the model maximizing mean quality - `cost_weight` * mean cost. Evaluated
    (`route_eval("zero", ...)`), its curve is the hull of the single models on the evaluated
    rows: a share of queries sent to one model at random and the rest to another gets, in
    expectation, the points between the two. The default router falls back to it when no
    learned router beats it in cross-validation.

    Args:
        cost_weight: quality points per dollar, traded against mean cost by `predict`.
    """

    reads_queries = False  # OutcomeLearner: evaluated as the best fixed mix of single models

    def __init__(self, cost_weight: float = 0.0):
        self.cost_weight = cost_weight

    def fit(self, X, y, *, models: list[str] | None = None, costs=None):
        """`y`: (n, m) scores; `costs`: (n, m) or (m,) USD per call. The queries `X` are not read."""
        self.models_ = _models(y, models)
        self.quality_ = _matrix(y, self.models_).mean(axis=0)
        costs = np.zeros(len(self.models_)) if costs is None else np.asarray(costs, dtype=float)
        self.expected_cost_ = costs.mean(axis=0) if costs.ndim == 2 else costs
        return self

    def fit_outcomes(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> ZeroRouter:
        """Every model of `outcomes`, or only `weak` and `strong` when both are named."""
        models = outcomes.models if weak is None or strong is None else [weak, strong]
        columns = [outcomes.column(m) for m in models]
        return self.fit(outcomes.prompts, outcomes.scores[:, columns], models=models, costs=outcomes.costs[:, columns])

    def predict_quality(self, X) -> np.ndarray:
        """Each model's mean training quality, the same for every query, shape (n, m)."""
        return np.tile(self.quality_, (len(list(X)), 1))

    def predict_proba(self, X):
        """The same as `predict_quality` (not normalized)."""
        return self.predict_quality(X)

    def predict(self, X):
        """The one model maximizing mean quality - `cost_weight` * mean cost, for every query."""
        choice = int(np.argmax(self.quality_ - self.cost_weight * self.expected_cost_))
        return np.full(len(list(X)), self.models_[choice], dtype=object)

    @property
    def classes_(self):
        """The model names, in column order."""
        return np.asarray(self.models_, dtype=object)


class CascadeScorer(ClassifierMixin, _TextEstimator):
    """(query, response) pairs -> P(the response is correct): a [`Scorer`][stagewise.routing.contracts.Scorer].

    Args:
        features: the text features (see [`TextFeatures`][stagewise.routing.features.TextFeatures]);
            `checks` reads the response.
        C: the inverse regularization of the logistic regression.
    """

    pairwise = True  # OutcomeLearner: judges the weak model's answer, escalates to the strong one
    reads_queries = True

    def __init__(self, features: str = "word+char+checks", C: float = 1.0):
        self.features = features
        self.C = C

    def fit(self, X, y):
        """Train on (query, response) pairs `X` and their scores `y` (>= 0.5 counts as correct).

        Raises:
            DataError: the responses are all correct or all wrong, or a row is not a pair.
        """
        correct = (np.asarray(y, dtype=float) >= 0.5).astype(int)
        if len(set(correct)) < 2:
            raise DataError("a cascade scorer needs both correct and wrong responses in its training data")
        self.model_ = _classifier(self.C).fit(self._fit_features(as_pairs(X)), correct)
        self.classes_ = self.model_.classes_
        return self

    def fit_outcomes(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> CascadeScorer:
        """Trained on the `weak` model's recorded responses (default: the cheapest; `strong` is unused)."""
        model = weak or outcomes.by_cost()[0]
        if outcomes.responses is None:
            raise DataError(f"{outcomes.source!r} records no responses: "
                            "a cascade scorer reads the cheap model's response")
        j = outcomes.column(model)
        pairs = [(p, r[j]) for p, r in zip(outcomes.prompts, outcomes.responses)]
        return self.fit(pairs, outcomes.scores[:, j])

    def correct_probability(self, queries, answers) -> np.ndarray:
        """P(answer i is right for query i), shape (n,)."""
        return self.predict_proba(list(zip(queries, answers)))[:, 1]

    def route_values(self, outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> np.ndarray:
        """The probability that the `weak` model's recorded response is wrong, per prompt of `outcomes`."""
        j = outcomes.column(weak)
        return 1.0 - self.correct_probability(outcomes.prompts, [row[j] for row in outcomes.responses])

    def predict_proba(self, X):
        """(P(wrong), P(correct)) per (query, response) pair, shape (n, 2)."""
        return self.model_.predict_proba(self._features(as_pairs(X)))

    def predict(self, X):
        """1 where the response is predicted correct, else 0, per (query, response) pair."""
        return self.model_.predict(self._features(as_pairs(X)))


def _models(y, models: list[str] | None) -> list[str]:
    if models is not None:
        return [str(m) for m in models]
    if isinstance(y, pd.DataFrame):
        return [str(c) for c in y.columns]
    return [f"model_{j}" for j in range(np.asarray(y).shape[1])]


def _matrix(y, models: list[str]) -> np.ndarray:
    scores = (y[models] if isinstance(y, pd.DataFrame) and set(models) <= set(y.columns) else np.asarray(y))
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != len(models):
        raise DataError(f"scores must be (queries, {len(models)} models), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise DataError("scores have missing values: drop those rows first")
    return scores


def _pair(outcomes: Outcomes, weak: str | None, strong: str | None) -> tuple[str, str]:
    if weak is None and strong is None:
        if len(outcomes.models) != 2:
            raise DataError(f"{outcomes.source!r} has {len(outcomes.models)} models: name the weak and the strong one")
        weak, strong = outcomes.by_cost()
    weak = weak or next(m for m in outcomes.by_cost() if m != strong)
    strong = strong or next(m for m in reversed(outcomes.by_cost()) if m != weak)
    return weak, strong


# --- specs and search spaces --------------------------------------------------------------

KINDS = {"label": LabelRouter, "quality": QualityRouter, "win": WinRouter, "cascade": CascadeScorer, "zero": ZeroRouter}
FEATURE_CHOICES = ("word", "char", "word+char", "embed", "word+char+embed")


def make_router(spec: str):
    """`"kind"` or `"kind:key=value,key=value"`, e.g. `"cascade:features=word+checks,C=2"`."""
    kind, _, options = spec.partition(":")
    if kind not in KINDS:
        raise RouterSpecError(f"router spec {spec!r}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    cls = KINDS[kind]
    params = {}
    valid = cls().get_params()
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, equals, value = option.partition("=")
        if not equals or key not in valid:
            raise RouterSpecError(f"router spec {spec!r}: option {option!r} is not key=value "
                                  f"with a key in {sorted(valid)}")
        if key == "features":
            parse_features(value)
            params[key] = value
        else:
            try:
                params[key] = float(value)
            except ValueError:
                raise RouterSpecError(f"router spec {spec!r}: {key}={value!r} is not a number") from None
    return cls(**params)


def suggest_router(trial, kind: str, *, embeddings: bool = False, prefix: str = "router"):
    """A router of `kind` with features and regularization drawn from an Optuna trial."""
    choices = [c for c in FEATURE_CHOICES if embeddings or "embed" not in c]
    features = trial.suggest_categorical(f"{prefix}.features", choices)
    if kind == "cascade":
        features += "+checks" if trial.suggest_categorical(f"{prefix}.checks", [True, False]) else ""
    return KINDS[kind](features=features, C=trial.suggest_float(f"{prefix}.C", 0.05, 50.0, log=True))
