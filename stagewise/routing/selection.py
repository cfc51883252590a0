"""Choosing a router spec without looking at the rows it is scored on: nested cross-validation.

- [`candidate_specs`][stagewise.routing.candidate_specs]: the specs a table supports: the zero router (no learning, the
best
  fixed mix of single models) always; prompt-only pre-routers always; cascade scorers, which
  read the weak model's answer, when the table records it.
- [`select_router`][stagewise.routing.select_router]: K-fold cross-validates each candidate on a training table
(out-of-fold
  predictions pooled, as [`route_eval`][stagewise.routing.evaluation.route_eval] does) and keeps the
  best by AIQ (cost-aware: a cascade pays its cheap call) or APGR. On a tie (within rounding)
  the earlier candidate wins; the zero router comes first, so a learned router is chosen only
  when it does strictly better than no routing.
- [`nested_route_eval`][stagewise.routing.nested_route_eval]: scores that choice honestly. Against a test table the spec
is
  chosen on the training table alone; under K-fold cross-validation it is chosen inside each
  outer fold's training part, fitted there and scored on that fold's held-out rows, so no row
  that scores a router helped to choose it. The outer folds' curves are averaged, weighted by
  their sizes: for two models at each share of queries sent to the strong model, for more at
  each cost budget (each fold at its hull's point for that budget). APGR, CPT, AIQ and the cost
  saving are read from that curve; the report says which spec each fold chose and the inner
  cross-validation score of every candidate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from stagewise.routing.evaluation import (
    Curve,
    RoutingEvalError,
    RoutingReport,
    hull,
    lambda_curve,
    many_model_report,
    route_eval,
    route_values,
    share_curve,
    two_model_report,
    zero_curve,
)
from stagewise.routing.outcomes import Outcomes

ZERO = "zero"
PRE_ROUTERS = ("win:features=word", "win", "quality")  # two models, decide on the prompt before any call
CASCADES = ("cascade:features=word", "cascade:features=checks", "cascade")  # read the weak model's answer
MANY_MODEL_ROUTERS = ("quality:features=word", "quality")
METRICS = ("aiq", "apgr")
INNER_FOLDS = 3
TIE = 1e-9  # scores this close are equal (floating-point rounding): the earlier candidate is kept


@dataclass(frozen=True)
class Selection:
    """The spec an inner cross-validation chose, and every candidate's score (None: it could not be trained)."""

    chosen: str
    metric: str
    folds: int
    scores: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def zero_router(self) -> bool:
        """No learned router beat the zero router."""
        return self.chosen == ZERO

    def to_json(self) -> dict:
        """The chosen spec, the metric, the inner folds, each candidate's score and any errors, as JSON-able data."""
        return {"chosen": self.chosen, "metric": self.metric, "inner_folds": self.folds, "inner_cv": self.scores,
                **({"errors": self.errors} if self.errors else {})}


def two_model_mode(outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> bool:
    """Routing between two models (the table has two, or `weak`/`strong` name them), or among all."""
    return len(outcomes.models) == 2 or weak is not None or strong is not None


def has_responses(outcomes: Outcomes, model: str) -> bool:
    """Every row records `model`'s response (what a cascade scorer reads)."""
    if outcomes.responses is None:
        return False
    j = outcomes.column(model)
    return all(isinstance(row[j], str) and row[j].strip() for row in outcomes.responses)


def candidate_specs(outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> list[str]:
    """The zero router, then the pre-routers, then (when the weak model's responses are recorded) the cascades."""
    if not two_model_mode(outcomes, weak, strong):
        return [ZERO, *MANY_MODEL_ROUTERS]
    weak, _ = _pair(outcomes, weak, strong)
    return [ZERO, *PRE_ROUTERS, *(CASCADES if has_responses(outcomes, weak) else ())]


def select_router(train: Outcomes, candidates: list[str] | tuple[str, ...], *, metric: str = "aiq",
                  folds: int = INNER_FOLDS, seed: int = 0, weak: str | None = None,
                  strong: str | None = None) -> Selection:
    """The candidate with the best `folds`-fold cross-validated `metric` on `train` (first on a tie).

    `metric`: `"aiq"` (two models fall back to APGR when both cost the same) or `"apgr"`
    (two models only). A candidate that cannot be trained on a fold (say, a cascade scorer on a
    fold where the weak model is always right) is left out, and the reason kept.
    """
    if metric not in METRICS:
        raise RoutingEvalError(f"selection metric {metric!r}: use one of {METRICS}")
    if not candidates:
        raise RoutingEvalError("no candidate router specs to choose from")
    folds = min(folds, len(train))
    if folds < 2:
        raise RoutingEvalError(f"choosing a router needs at least 2 training rows, {train.source!r} has {len(train)}")
    scores: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for spec in candidates:
        try:
            report = route_eval(spec, train, cv=folds, seed=seed, weak=weak, strong=strong)
        except ValueError as exc:  # a spec this table cannot train (the message says why)
            scores[spec], errors[spec] = None, str(exc)
            continue
        scores[spec] = figure(report, metric)
    usable = {spec: score for spec, score in scores.items() if score is not None}
    if not usable:
        raise RoutingEvalError("no candidate router could be trained: "
                               + "; ".join(f"{spec}: {reason}" for spec, reason in errors.items()))
    best = max(usable.values())
    chosen = next(spec for spec, score in usable.items() if score >= best - TIE)  # the first of the best
    return Selection(chosen, metric, folds, scores, errors)


def figure(report: RoutingReport, metric: str) -> float:
    """`metric` of a report; AIQ falls back to APGR for two models of the same cost, APGR to AIQ for more."""
    value = report.metrics.get(metric)
    return float(value if value is not None else report.metrics["apgr" if metric == "aiq" else "aiq"])


def nested_route_eval(train: Outcomes, test: Outcomes | None = None, *, cv: int | None = None,
                      candidates: list[str] | tuple[str, ...] | None = None, metric: str = "aiq",
                      inner_folds: int = INNER_FOLDS, seed: int = 0, weak: str | None = None,
                      strong: str | None = None, name: str = "auto", progress=None) -> RoutingReport:
    """Choose a router spec inside each training part and score the choice on rows it never saw.

    The choice is among `candidates` (default: [`candidate_specs`][stagewise.routing.candidate_specs]);
    the rows are `test`, or the held-out fold of `cv`-fold CV.

    The report's `metrics["selection"]` says which spec each outer fold chose and why (every
    candidate's inner cross-validation score), and whether the choice was the zero router.
    """
    from sklearn.model_selection import KFold

    from stagewise.routing.contracts import Scorer
    from stagewise.routing.routers import make_router

    if (test is None) == (cv is None):
        raise RoutingEvalError("give either a test table or a number of cross-validation folds")
    if test is not None:
        test = test.aligned(train.models, f"the training table {train.source!r}")
    if cv is not None and not 2 <= cv <= len(train):
        raise RoutingEvalError(f"--cv {cv}: needs 2 <= K <= {len(train)} (the rows of {train.source!r})")
    two = two_model_mode(train, weak, strong)
    if two:
        weak, strong = _pair(train, weak, strong)
        train = train.select([weak, strong])
        test = None if test is None else test.select([weak, strong])
    candidates = list(candidates or candidate_specs(train, weak, strong))
    kinds = {spec: make_router(spec) for spec in candidates}  # a bad spec fails before any training
    evaluated = test if test is not None else train
    splits = [(np.arange(len(train)), None)] if test is not None else \
        list(KFold(cv, shuffle=True, random_state=seed).split(np.arange(len(train))))
    curves, sizes, folds = [], [], []
    cascade_rows = np.zeros(len(evaluated), dtype=bool)
    for number, (fit_rows, eval_rows) in enumerate(splits):
        part = train.subset(fit_rows)
        target = evaluated if eval_rows is None else evaluated.subset(eval_rows)
        selection = select_router(part, candidates, metric=metric, folds=inner_folds, seed=seed, weak=weak,
                                  strong=strong)
        chosen = kinds[selection.chosen]
        if selection.zero_router:
            curve = zero_curve(target, weak, strong) if two else zero_curve(target)
        else:
            fitted = make_router(selection.chosen).fit_outcomes(part, weak, strong)
            values = route_values(fitted, target, weak, strong, two_models=two)
            if two:
                scores, costs = target.scores, target.costs  # weak, then strong (select)
                curve = share_curve(values, scores, costs, cascade=isinstance(chosen, Scorer))
            else:
                curve = lambda_curve(values, part.costs.mean(axis=0), target.scores, target.costs)
        if isinstance(chosen, Scorer):
            cascade_rows[slice(None) if eval_rows is None else eval_rows] = True
        curves.append(curve)
        sizes.append(len(target))
        folds.append({**selection.to_json(), "n_train": len(part), "n_test": len(target)})
        if progress is not None:
            progress(number + 1, len(splits))
    curve = curves[0] if len(curves) == 1 else combine_curves(curves, sizes, by_share=two)
    chosen = Counter(f["chosen"] for f in folds)
    label = f"{name}: " + ", ".join(spec if len(chosen) == 1 else f"{spec} ({count} of {len(folds)} folds)"
                                    for spec, count in chosen.most_common())
    if two:
        report = two_model_report(label, evaluated, None, weak=weak, strong=strong, cascade=cascade_rows, curve=curve)
    else:
        report = many_model_report(label, evaluated, None, train.costs.mean(axis=0), curve=curve)
    report.metrics["selection"] = {
        "candidates": candidates, "metric": folds[0]["metric"], "inner_folds": folds[0]["inner_folds"],
        "chosen": next(iter(chosen)) if len(chosen) == 1 else None,
        "zero_router": set(chosen) == {ZERO},
        "outer": "test table" if test is not None else f"{len(splits)}-fold cross-validation",
        "folds": folds,
    }
    return report


def combine_curves(curves: list[Curve], sizes: list[int], *, by_share: bool) -> Curve:
    """The outer folds' curves averaged, each weighted by its number of rows.

    `by_share` (two models): at each share k/n of queries sent to the strong model, every fold
    at that share (interpolated between its own k/n_f). Otherwise at each cost budget (every
    vertex of a fold's hull): every fold at its hull's point for that budget (its cheapest or
    dearest point outside its own range), so each averaged point is one a router could reach.
    """
    weights = np.asarray(sizes, dtype=float) / sum(sizes)
    if by_share:
        grid = np.arange(sum(sizes) + 1) / sum(sizes)
        cost = sum(w * np.interp(grid, c.share, c.cost) for w, c in zip(weights, curves))
        quality = sum(w * np.interp(grid, c.share, c.quality) for w, c in zip(weights, curves))
        return Curve(np.asarray(cost), np.asarray(quality), grid)
    hulls = [hull(c.cost, c.quality) for c in curves]
    budgets = np.unique(np.concatenate([xs for xs, _ in hulls]))
    cost = sum(w * np.clip(budgets, xs[0], xs[-1]) for w, (xs, _) in zip(weights, hulls))
    quality = sum(w * np.interp(budgets, xs, ys) for w, (xs, ys) in zip(weights, hulls))
    return Curve(np.asarray(cost), np.asarray(quality))


def _pair(outcomes: Outcomes, weak: str | None, strong: str | None) -> tuple[str, str]:
    from stagewise.routing.routers import _pair as pair

    return pair(outcomes, weak, strong)


def default_router(train: Outcomes, *, weak: str | None = None, strong: str | None = None,
                   candidates: list[str] | tuple[str, ...] | None = None, chosen: str | None = None,
                   metric: str = "aiq", inner_folds: int = INNER_FOLDS, seed: int = 0):
    """The default router trained on all of `train`.

    The spec is the one cross-validation on `train` chooses (or `chosen`, when that was already
    done), fitted on every row.

    Returns:
        (router, selection), the selection None when `chosen` is given.
    """
    from stagewise.routing.routers import make_router

    if two_model_mode(train, weak, strong):
        weak, strong = _pair(train, weak, strong)
        train = train.select([weak, strong])
    selection = None
    if chosen is None:
        selection = select_router(train, list(candidates or candidate_specs(train, weak, strong)), metric=metric,
                                  folds=inner_folds, seed=seed, weak=weak, strong=strong)
        chosen = selection.chosen
    return make_router(chosen).fit_outcomes(train, weak, strong), selection


def describe_selection(selection: dict) -> list[str]:
    """Lines saying which spec each fold's cross-validation chose, every candidate's score, and a fallback."""
    lines = []
    folds = selection["folds"]
    for number, fold in enumerate(folds, 1):
        scores = ", ".join(f"{spec} {'-' if score is None else format(score, '.4f')}"
                           for spec, score in fold["inner_cv"].items())
        lines.append(f"{'' if len(folds) == 1 else f'fold {number}: '}chose {fold['chosen']} by "
                     f"{fold['inner_folds']}-fold cross-validation on {fold['n_train']} training rows "
                     f"({fold['metric'].upper()}: {scores})")
    if selection["zero_router"]:
        lines.append("no learned router beat the zero router on the training rows: the default is the zero router "
                     "(the best fixed mix of single models)")
    return lines
