"""Offline routing evaluation on recorded outcomes, in the terms of RouteLLM and RouterBench.

Two models (a weak and a strong one), RouteLLM: a router ranks queries by how much they need
the strong model; sending the top share `c` to it gives quality `q(c)`.

- PGR(c) = (q(c) - q_weak) / (q_strong - q_weak); APGR = the area under PGR(c) for c from 0
  to 1, by the trapezoid rule as RouteLLM computes it, here over every share k/n (random
  routing: 0.5); CPT(x%) = the smallest share whose PGR reaches x%.

Many models, RouterBench: a router trades predicted quality for cost with a weight lambda;
sweeping lambda gives (cost, quality) points.

- AIQ = area under the non-decreasing convex hull of the points, extended flat to the
  largest cost, divided by the cost range of the single models. The zero router is the hull
  of the single models; the oracle sends each prompt to its cheapest best model.

Both: the cost saving at >= 95% of the best single model's quality, against that model's cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stagewise.errors import DataError
from stagewise.routing.outcomes import Outcomes

RANDOM_SEEDS = 10
TARGET = 0.95


class RoutingEvalError(DataError):
    """The outcomes cannot support the requested evaluation (the message says why)."""


@dataclass(frozen=True)
class Curve:
    """Operating points of a router: mean cost per query and mean quality at each setting."""

    cost: np.ndarray
    quality: np.ndarray
    share: np.ndarray | None = None  # two models: the share of queries sent to the strong model


def share_curve(strong_score: np.ndarray, scores: np.ndarray, costs: np.ndarray, *,
                cascade: bool | np.ndarray = False) -> Curve:
    """Send the k queries with the highest `strong_score` to the strong model, k = 0..n.

    `scores`/`costs` are (n, 2): weak, then strong. A pre-router calls one model per query:
    sending a query to the strong model replaces the weak call. In a cascade the weak model has
    already answered every query, so an escalation adds the strong call to the weak one: the
    cascade always pays the cheap call. `cascade` is one flag, or one per query.
    """
    n = len(strong_score)
    order = np.argsort(-np.asarray(strong_score, dtype=float), kind="stable")
    gain = (scores[:, 1] - scores[:, 0])[order]
    extra = np.where(cascade, costs[:, 1], costs[:, 1] - costs[:, 0])[order]
    quality = scores[:, 0].mean() + np.concatenate([[0.0], np.cumsum(gain)]) / n
    cost = costs[:, 0].mean() + np.concatenate([[0.0], np.cumsum(extra)]) / n
    return Curve(cost, quality, np.arange(n + 1) / n)


def pgr(curve: Curve, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance gap recovered at each point of `curve`: (quality - q_weak) / (q_strong - q_weak).

    Raises:
        RoutingEvalError: the two models have the same quality (PGR is undefined).
    """
    if np.isclose(q_strong, q_weak):
        raise RoutingEvalError(f"the two models have the same quality ({q_weak:.3f}): PGR is undefined")
    return (curve.quality - q_weak) / (q_strong - q_weak)


def apgr(curve: Curve, q_weak: float, q_strong: float) -> float:
    """Average PGR: the area under the PGR curve over the share of strong calls (trapezoids).

    Raises:
        RoutingEvalError: the two models have the same quality (PGR is undefined).
    """
    gains = pgr(curve, q_weak, q_strong)
    return float(np.sum((gains[1:] + gains[:-1]) / 2 * np.diff(curve.share)))


def cpt(curve: Curve, q_weak: float, q_strong: float, target: float) -> float | None:
    """The smallest share of strong calls whose PGR reaches `target`, interpolated; None if never."""
    gains = pgr(curve, q_weak, q_strong)
    reached = np.flatnonzero(gains >= target - 1e-12)
    if not len(reached):
        return None
    k = int(reached[0])
    if k == 0:
        return 0.0
    low, high = gains[k - 1], gains[k]
    fraction = (target - low) / (high - low) if high > low else 1.0
    return float(curve.share[k - 1] + fraction * (curve.share[k] - curve.share[k - 1]))


def lambda_curve(predicted: np.ndarray, expected_cost: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                 steps: int = 200) -> Curve:
    """Per query, the model maximizing predicted quality - lambda * cost, for lambda from 0 to infinity."""
    span = float(np.ptp(expected_cost)) or 1.0
    lambdas = np.concatenate([[0.0], np.geomspace(1e-4, 1e4, steps) / span])
    rows = np.arange(len(scores))
    cost, quality = [], []
    for lam in lambdas:
        choice = np.argmax(predicted - lam * expected_cost, axis=1)
        cost.append(costs[rows, choice].mean())
        quality.append(scores[rows, choice].mean())
    cheapest = int(np.argmin(expected_cost))  # lambda -> infinity
    cost.append(costs[:, cheapest].mean())
    quality.append(scores[:, cheapest].mean())
    return Curve(np.array(cost), np.array(quality))


def hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of (cost, quality) points, as its vertices."""
    points = sorted(set(zip(np.round(cost, 12), np.round(quality, 12))))
    upper: list[tuple[float, float]] = []
    for point in points:
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], point) >= 0:
            upper.pop()
        upper.append(point)
    best = int(np.argmax([q for _, q in upper]))
    vertices = upper[: best + 1]  # past the best quality the curve stays flat
    return np.array([c for c, _ in vertices]), np.array([q for _, q in vertices])


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def aiq(cost: np.ndarray, quality: np.ndarray, low: float, high: float) -> float:
    """Area under the hull on [low, high] divided by (high - low); flat beyond the hull's ends."""
    if high <= low:
        raise RoutingEvalError("AIQ needs models of different costs")
    xs, ys = hull(cost, quality)
    grid = np.unique(np.concatenate([[low, high], xs[(xs > low) & (xs < high)]]))
    values = np.interp(grid, xs, ys)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)) / (high - low))


def cost_saving(curve: Curve, target_quality: float, reference_cost: float) -> dict | None:
    """The cheapest operating point reaching `target_quality`, and its saving against `reference_cost`."""
    feasible = np.flatnonzero(curve.quality >= target_quality - 1e-12)
    if not len(feasible):
        return None
    best = feasible[np.argmin(curve.cost[feasible])]
    return {"cost": float(curve.cost[best]), "quality": float(curve.quality[best]),
            "saving": float(1.0 - curve.cost[best] / reference_cost) if reference_cost > 0 else 0.0}


@dataclass
class RoutingReport:
    """A router's figures beside the baselines, on one set of test outcomes."""

    router: str
    outcomes: Outcomes
    curve: Curve
    metrics: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)  # name -> curve, for the plot

    def to_json(self) -> dict:
        """The router, the models, the test size, the skipped rows and the metrics, as JSON-able data."""
        return {"router": self.router, "models": self.outcomes.models, "n_test": len(self.outcomes),
                "skipped_rows": self.outcomes.skipped, **self.metrics}


def single_models(outcomes: Outcomes) -> dict[str, dict]:
    """Each model's mean `quality` and mean `cost` per call on `outcomes`."""
    return {m: {"quality": float(outcomes.scores[:, j].mean()), "cost": float(outcomes.costs[:, j].mean())}
            for j, m in enumerate(outcomes.models)}


def _best_single(singles: dict[str, dict]) -> tuple[str, dict]:
    return max(singles.items(), key=lambda item: (item[1]["quality"], -item[1]["cost"]))


def zero_curve(outcomes: Outcomes, weak: str | None = None, strong: str | None = None) -> Curve:
    """The zero router (RouterBench): a fixed mix of single models that reads no query.

    Between `weak` and `strong`, sending a share c of the queries to the strong model at
    random gets, in expectation, the line between the two models (APGR 0.5). Without them, the
    upper convex hull of every single model's (mean cost, mean quality) on `outcomes`.
    """
    singles = single_models(outcomes)
    if weak is not None and strong is not None:
        low, high = singles[weak], singles[strong]
        return Curve(np.array([low["cost"], high["cost"]]), np.array([low["quality"], high["quality"]]),
                     np.array([0.0, 1.0]))
    return Curve(*hull(np.array([s["cost"] for s in singles.values()]),
                       np.array([s["quality"] for s in singles.values()])))


def oracle_choice(outcomes: Outcomes) -> np.ndarray:
    """Per prompt, the cheapest model among those with the best score."""
    best = outcomes.scores.max(axis=1, keepdims=True)
    masked = np.where(np.isclose(outcomes.scores, best), outcomes.costs, np.inf)
    return np.argmin(masked, axis=1)


def _common(outcomes: Outcomes, curve: Curve) -> dict:
    singles = single_models(outcomes)
    best_name, best = _best_single(singles)
    rows = np.arange(len(outcomes))
    choice = oracle_choice(outcomes)
    return {
        "single_models": singles,
        "best_single_model": best_name,
        "oracle": {"quality": float(outcomes.scores[rows, choice].mean()),
                   "cost": float(outcomes.costs[rows, choice].mean())},
        "cost_saving_at_95": cost_saving(curve, TARGET * best["quality"], best["cost"]),
        "target_quality": TARGET * best["quality"],
    }


def two_model_report(router: str, outcomes: Outcomes, strong_score: np.ndarray | None, *, weak: str, strong: str,
                     cascade: bool | np.ndarray = False, curve: Curve | None = None) -> RoutingReport:
    """APGR, CPT(20/50/80%) and the quality-versus-strong-share curve, with random and oracle baselines.

    The router's curve comes from `strong_score` (a ranking of the queries), or is given as
    `curve` (a zero router's, or the outer folds' curves of a nested cross-validation);
    `cascade` (one flag, or one per query) says which queries a cascade routed.
    """
    columns = [outcomes.column(weak), outcomes.column(strong)]
    scores, costs = outcomes.scores[:, columns], outcomes.costs[:, columns]
    q_weak, q_strong = float(scores[:, 0].mean()), float(scores[:, 1].mean())
    if curve is None:
        curve = share_curve(strong_score, scores, costs, cascade=cascade)

    def figures(c: Curve) -> dict:
        return {"apgr": apgr(c, q_weak, q_strong),
                **{f"cpt{x}": cpt(c, q_weak, q_strong, x / 100) for x in (20, 50, 80)}}

    randoms = [share_curve(np.random.default_rng(seed).random(len(outcomes)), scores, costs, cascade=cascade)
               for seed in range(RANDOM_SEEDS)]
    random_figures = [figures(c) for c in randoms]
    oracle_curve = share_curve(scores[:, 1] - scores[:, 0], scores, costs, cascade=cascade)
    common = _common(outcomes, curve)
    low, high = common["single_models"][weak]["cost"], common["single_models"][strong]["cost"]
    zero = zero_curve(outcomes, weak, strong)
    kind = "cascade" if np.all(cascade) else "router" if not np.any(cascade) else "mixed"
    metrics = {
        "kind": kind, "weak": weak, "strong": strong,
        **figures(curve),
        # The two single models' hull: routing a share c at random gets it in expectation (APGR 0.5).
        "aiq": aiq(curve.cost, curve.quality, low, high) if high > low else None,
        "zero_router_aiq": aiq(zero.cost, zero.quality, low, high) if high > low else None,
        "zero_router": figures(zero),
        "random": {"apgr": float(np.mean([f["apgr"] for f in random_figures])),
                   **{f"cpt{x}": _mean_or_none([f[f"cpt{x}"] for f in random_figures]) for x in (20, 50, 80)}},
        **common,
    }
    metrics["oracle"]["apgr"] = apgr(oracle_curve, q_weak, q_strong)
    return RoutingReport(router, outcomes, curve, metrics,
                         {"random": _mean_curve(randoms), "zero router": zero, "oracle": oracle_curve})


def many_model_report(router: str, outcomes: Outcomes, predicted: np.ndarray | None, expected_cost: np.ndarray,
                      curve: Curve | None = None) -> RoutingReport:
    """AIQ and the quality-versus-cost curve, beside the zero router, random routing and the oracle.

    The router's curve comes from its `predicted` quality (n, m) and the `expected_cost` of each
    model (a lambda sweep), or is given as `curve`.
    """
    if curve is None:
        curve = lambda_curve(predicted, expected_cost, outcomes.scores, outcomes.costs)
    singles = single_models(outcomes)
    single_cost = np.array([s["cost"] for s in singles.values()])
    single_quality = np.array([s["quality"] for s in singles.values()])
    low, high = float(single_cost.min()), float(single_cost.max())
    randoms = [lambda_curve(np.random.default_rng(seed).random(outcomes.scores.shape), expected_cost,
                            outcomes.scores, outcomes.costs) for seed in range(RANDOM_SEEDS)]
    metrics = {
        "kind": "router",
        "aiq": aiq(curve.cost, curve.quality, low, high),
        "zero_router_aiq": aiq(single_cost, single_quality, low, high),
        "random": {"aiq": float(np.mean([aiq(c.cost, c.quality, low, high) for c in randoms]))},
        **_common(outcomes, curve),
    }
    zero = zero_curve(outcomes)
    return RoutingReport(router, outcomes, curve, metrics, {"zero router": zero, "random": randoms[0]})


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if len(present) == len(values) else None


def _mean_curve(curves: list[Curve]) -> Curve:
    return Curve(np.mean([c.cost for c in curves], axis=0), np.mean([c.quality for c in curves], axis=0),
                 curves[0].share)


# --- training and evaluating a router on outcome tables -------------------------------------

def route_eval(router, train: Outcomes, test: Outcomes | None = None, *, cv: int | None = None, seed: int = 0,
               weak: str | None = None, strong: str | None = None, progress=None) -> RoutingReport:
    """Train `router` on `train` and evaluate it on `test`, or K-fold cross-validate it on `train`.

    Cross-validation pools the out-of-fold predictions over every row. A `pairwise` learner (a
    `WinRouter` or `CascadeScorer`) routes between two models (`weak` and `strong`; on a table of
    two, the cheaper and the dearer), any other between all (a `QualityRouter`), or between two on
    a table of two. One whose `reads_queries` is False
    (a `ZeroRouter`) learns nothing: its curve is the single models' hull on the evaluated rows.
    A [`Scorer`][stagewise.routing.contracts.Scorer] is evaluated as a cascade.
    To choose among several specs without looking at the rows they are scored on, see
    [`stagewise.routing.selection.nested_route_eval`][stagewise.routing.selection.nested_route_eval].

    Args:
        router (OutcomeLearner | str): an [`OutcomeLearner`][stagewise.routing.contracts.OutcomeLearner] or a
            spec string (see `make_router`).
        train: the outcomes to train on.
        test: the outcomes to evaluate on (or give `cv`).
        cv: the number of cross-validation folds (or give `test`).
        seed: the fold shuffle's seed.
        weak: the weak model of a two-model evaluation.
        strong: the strong model of a two-model evaluation.
        progress (Callable[[int, int], None] | None): called as `progress(done, total)` after each fold.

    Raises:
        RoutingEvalError: `router` is not an outcome learner, both or neither of `test` and `cv` are
            given, or `cv` is not between 2 and the training rows.
        OutcomeTableError: `test` has other models than `train`.
    """
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    from stagewise.routing.contracts import OutcomeLearner, Scorer
    from stagewise.routing.routers import _pair, make_router

    estimator = make_router(router) if isinstance(router, str) else router
    name = router if isinstance(router, str) else type(router).__name__
    if not isinstance(estimator, OutcomeLearner):
        raise RoutingEvalError(f"router {name!r}: route-eval trains quality, win or cascade routers on outcome tables "
                               "(an OutcomeLearner: fit_outcomes, route_values, pairwise, reads_queries, get_params)")
    if (test is None) == (cv is None):
        raise RoutingEvalError("give either a test table or a number of cross-validation folds")
    if test is not None:
        test = test.aligned(train.models, f"the training table {train.source!r}")
    two_models = estimator.pairwise or len(train.models) == 2
    if two_models:
        weak, strong = _pair(train, weak, strong)
    if cv is not None and not 2 <= cv <= len(train):
        raise RoutingEvalError(f"--cv {cv}: needs 2 <= K <= {len(train)} (the rows of {train.source!r})")
    evaluated = test if test is not None else train
    if not estimator.reads_queries:  # nothing to train: the same curve on every split
        if progress is not None:
            progress(cv or 1, cv or 1)
        if two_models:
            return two_model_report(name, evaluated, None, weak=weak, strong=strong,
                                    curve=zero_curve(evaluated, weak, strong))
        return many_model_report(name, evaluated, None, train.costs.mean(axis=0), curve=zero_curve(evaluated))
    splits = [(np.arange(len(train)), None)] if test is not None else \
        list(KFold(cv, shuffle=True, random_state=seed).split(np.arange(len(train))))
    predictions: np.ndarray | None = None
    for number, (fit_rows, eval_rows) in enumerate(splits):
        fitted = clone(estimator)
        part = train.subset(fit_rows)
        target = evaluated if eval_rows is None else evaluated.subset(eval_rows)
        fitted.fit_outcomes(part, weak, strong)
        values = route_values(fitted, target, weak, strong, two_models=two_models)
        if predictions is None:
            predictions = np.zeros((len(evaluated),) + values.shape[1:])
        predictions[slice(None) if eval_rows is None else eval_rows] = values
        if progress is not None:
            progress(number + 1, len(splits))
    if two_models:
        return two_model_report(name, evaluated, predictions, weak=weak, strong=strong,
                                cascade=isinstance(estimator, Scorer))
    return many_model_report(name, evaluated, predictions, train.costs.mean(axis=0))


def route_values(fitted, target: Outcomes, weak: str | None, strong: str | None, *, two_models: bool) -> np.ndarray:
    """What a fitted learner says about each query of `target` (its `route_values`).

    The learner is an [`OutcomeLearner`][stagewise.routing.contracts.OutcomeLearner].

    Two models: how much the query needs the strong model (the highest go to it first): a win
    router's probability that the strong model wins, a cascade scorer's probability that the
    weak model's recorded response is wrong, a quality router's predicted quality gap. More
    models: each model's predicted quality, (n, m).
    """
    return fitted.route_values(target, weak, strong) if two_models else fitted.route_values(target)


def plot_report(report: RoutingReport, path) -> None:
    """Quality versus strong share (two models) or versus cost (many), with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    two = report.curve.share is not None
    x_of = (lambda c: c.share) if two else (lambda c: c.cost * 1000)
    axes.plot(x_of(report.curve), report.curve.quality, label=report.router, linewidth=2)
    for name, curve in report.baselines.items():
        if two or name != "random":
            axes.plot(x_of(curve), curve.quality, label=name, linestyle="--" if name == "oracle" else ":")
    if not two:
        for model, figures in report.metrics["single_models"].items():
            axes.scatter(figures["cost"] * 1000, figures["quality"], s=18)
            axes.annotate(model.split("/")[-1], (figures["cost"] * 1000, figures["quality"]), fontsize=7)
        axes.set_xscale("log")
    axes.axhline(report.metrics["target_quality"], color="grey", linewidth=0.8, label="95% of the best model")
    axes.set_xlabel("share of queries sent to the strong model" if two else "cost per 1,000 queries (USD)")
    axes.set_ylabel("quality")
    axes.set_title(f"{report.router} on {len(report.outcomes)} queries")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
