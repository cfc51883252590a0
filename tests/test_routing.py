"""Trained routers, cascade scorers and their evaluation: metrics against hand-computed cases,
real RouterBench/RouteLLM data, real sentence embeddings, skops files, the Router and Cascade
programs on the replay engine, and `stagewise route-eval`."""

import json
import zipfile

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.base import clone
from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.data import OutcomeTable, OutcomeTableError
from stagewise.errors import DataError
from stagewise.models.lm import get_lm
from stagewise.programs import Cascade, Router, Stage
from stagewise.routing import (
    CascadeScorer,
    LabelRouter,
    QualityRouter,
    RouterFileError,
    RouterSpecError,
    RoutingEvalError,
    WinRouter,
    load_outcomes,
    load_router,
    make_router,
    route_eval,
    save_router,
    suggest_router,
)
from stagewise.routing import evaluation as ev
from stagewise.routing import selection as sel
from stagewise.routing.features import SentenceEmbeddings, TextFeatures, _vectors, answer_checks, arithmetic
from stagewise.routing.outcomes import Outcomes
from stagewise.routing.routers import ZeroRouter
from tests.conftest import DATA, ROUTELLM

ARC_TRAIN = DATA / "routerbench" / "arc_challenge_train.csv"
ARC_TEST = DATA / "routerbench" / "arc_challenge_test.csv"
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def table(scores, costs=None, models=None) -> Outcomes:
    scores = np.asarray(scores, dtype=float)
    models = models or [f"m{j}" for j in range(scores.shape[1])]
    costs = np.tile(np.arange(1, scores.shape[1] + 1, dtype=float), (len(scores), 1)) if costs is None \
        else np.asarray(costs, dtype=float)
    return Outcomes("constructed", [f"q{i}" for i in range(len(scores))], models, scores, costs, None)


@pytest.fixture(scope="module")
def gsm8k():
    return load_outcomes(ROUTELLM)


@pytest.fixture(scope="module")
def arc():
    return load_outcomes(ARC_TRAIN), load_outcomes(ARC_TEST)


# --- metrics, by hand -----------------------------------------------------------------------

def test_perfect_router_apgr_cpt_by_hand():
    # 10 queries: the strong model wins on 2, both right on 6, both wrong on 2.
    scores = [[0, 1]] * 2 + [[1, 1]] * 6 + [[0, 0]] * 2
    outcomes = table(scores)
    perfect = np.array([1.0, 1.0] + [0.0] * 8)
    report = ev.two_model_report("perfect", outcomes, perfect, weak="m0", strong="m1")
    # PGR: 0 at share 0, 0.5 at 0.1, 1 from 0.2 on -> area 0.025 + 0.075 + 0.8 = 0.9
    assert report.metrics["apgr"] == pytest.approx(0.9)
    assert report.metrics["cpt50"] == pytest.approx(0.1)
    assert report.metrics["cpt80"] == pytest.approx(0.16)  # 0.1 + (0.8 - 0.5) / (1 - 0.5) * 0.1
    # Routing the wins last is the worst router: PGR stays 0 until the last two queries.
    worst = ev.two_model_report("worst", outcomes, -perfect, weak="m0", strong="m1")
    assert worst.metrics["apgr"] == pytest.approx(0.1)
    # The zero router mixes the two models linearly: APGR 0.5, CPT(x) = x.
    zero = report.metrics["zero_router"]
    assert (zero["apgr"], zero["cpt50"], zero["cpt80"]) == pytest.approx((0.5, 0.5, 0.8))
    assert report.metrics["zero_router_aiq"] == pytest.approx((0.6 + 0.8) / 2)  # costs 1 and 2


def test_perfect_router_apgr_is_one_when_the_gap_is_one_query():
    scores = [[0, 1]] + [[1, 1]] * 199
    report = ev.two_model_report("perfect", table(scores), np.array([1.0] + [0.0] * 199), weak="m0", strong="m1")
    assert report.metrics["apgr"] == pytest.approx(1.0, abs=0.003)
    assert report.metrics["oracle"]["apgr"] == pytest.approx(report.metrics["apgr"])


def test_random_router_apgr_is_about_one_half():
    rng = np.random.default_rng(2024)
    outcomes = table(np.column_stack([rng.random(4000) < 0.6, rng.random(4000) < 0.85]).astype(float))
    report = ev.two_model_report("random", outcomes, rng.random(4000), weak="m0", strong="m1")
    assert report.metrics["apgr"] == pytest.approx(0.5, abs=0.03)
    assert report.metrics["random"]["apgr"] == pytest.approx(0.5, abs=0.02)  # 10 seeds averaged
    assert report.metrics["random"]["cpt50"] == pytest.approx(0.5, abs=0.05)


def test_zero_router_aiq_is_the_hull_of_the_single_models():
    # costs 1, 2, 3, 4; qualities 0.5, 0.8, 0.6 (dominated), 0.9 -> hull (1,.5) (2,.8) (4,.9)
    quality = [0.5, 0.8, 0.6, 0.9]
    n = 20
    rows = np.array([[float(i < q * n) for q in quality] for i in range(n)])
    outcomes = table(rows)
    by_hand = ((0.5 + 0.8) / 2 * 1 + (0.8 + 0.9) / 2 * 2) / 3
    assert ev.aiq(np.arange(1.0, 5.0), np.array(quality), 1.0, 4.0) == pytest.approx(by_hand)
    # A router that knows only each model's mean quality picks single models: exactly the zero router.
    constant = np.tile(rows.mean(axis=0), (n, 1))
    report = ev.many_model_report("constant", outcomes, constant, np.arange(1.0, 5.0))
    assert report.metrics["zero_router_aiq"] == pytest.approx(by_hand)
    assert report.metrics["aiq"] == pytest.approx(by_hand)
    # The oracle knows per query: strictly better than the hull.
    oracle = ev.many_model_report("oracle", outcomes, rows, np.arange(1.0, 5.0))
    assert oracle.metrics["aiq"] > by_hand


def test_oracle_takes_the_cheapest_best_model_and_cost_saving():
    scores = [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]]
    costs = [[1, 2, 4]] * 4
    outcomes = table(scores, costs)
    assert list(ev.oracle_choice(outcomes)) == [0, 1, 2, 0]
    curve = ev.Curve(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.72, 0.75]))
    assert ev.cost_saving(curve, 0.95 * 0.75, 4.0) == {"cost": 2.0, "quality": 0.72, "saving": 0.5}
    assert ev.cost_saving(curve, 0.8, 4.0) is None


def test_a_cascade_always_pays_the_cheap_call_a_pre_router_replaces_it():
    # 4 queries; weak costs 1, strong 10; the strong model is right on queries 0 and 1 only.
    scores = np.array([[0, 1], [0, 1], [1, 1], [0, 0]], dtype=float)
    costs = np.array([[1.0, 10.0]] * 4)
    need = np.array([4.0, 3.0, 2.0, 1.0])  # sends query 0 first, then 1, 2, 3
    pre = ev.share_curve(need, scores, costs)
    cascade = ev.share_curve(need, scores, costs, cascade=True)
    assert pre.cost.tolist() == [1.0, 3.25, 5.5, 7.75, 10.0]  # each strong call replaces a weak one
    assert cascade.cost.tolist() == [1.0, 3.5, 6.0, 8.5, 11.0]  # each is added to the weak call
    assert pre.quality.tolist() == cascade.quality.tolist() == [0.25, 0.5, 0.75, 0.75, 0.75]
    # One flag per query: only the rows a cascade routed pay both calls.
    mixed = ev.share_curve(need, scores, costs, cascade=np.array([True, False, True, False]))
    assert mixed.cost.tolist() == [1.0, 3.5, 5.75, 8.25, 10.5]
    report = ev.two_model_report("c", table(scores, costs), need, weak="m0", strong="m1", cascade=True)
    assert report.metrics["kind"] == "cascade" and report.curve.cost.tolist() == cascade.cost.tolist()
    # At >= 95% of the strong model's quality (0.7125) the cascade needs 2 escalations: 1 + 2 * 10 / 4.
    assert report.metrics["cost_saving_at_95"] == {"cost": 6.0, "quality": 0.75, "saving": 0.4}


def test_same_quality_models_give_a_clear_error():
    with pytest.raises(RoutingEvalError, match="same quality"):
        ev.two_model_report("r", table([[1, 1], [0, 0]]), np.array([0.1, 0.2]), weak="m0", strong="m1")


# --- outcome tables -------------------------------------------------------------------------

def test_routellm_costs_are_priced_from_the_catalog(gsm8k):
    assert len(gsm8k) == 1319 and gsm8k.models == [WEAK, STRONG] and gsm8k.skipped == 0
    assert gsm8k.cost_sources[STRONG].startswith("catalog recorded/gpt-4")
    weak_cost, strong_cost = gsm8k.costs.mean(axis=0)
    assert 20 < strong_cost / weak_cost < 100  # GPT-4 Turbo against Mixtral's price


def test_routerbench_rows_with_missing_scores_are_skipped_and_counted(arc):
    train, test = arc
    raw = pd.read_csv(ARC_TEST)
    models = test.models
    assert test.skipped == int(raw[models].isna().any(axis=1).sum()) > 0
    assert len(test) + test.skipped == len(raw)
    assert set(test.cost_sources.values()) == {"recorded"}
    assert not np.isnan(test.scores).any()


def test_plain_table_with_and_without_costs(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("prompt,small,big,big|total_cost,topic\n"
                    "what is 2+2,1,1,0.01,math\nname a prime,0,1,0.02,math\nsay hi,1,0,0.01,chat\n")
    with pytest.raises(OutcomeTableError, match="'small' has calls with no recorded cost and no catalog price"):
        load_outcomes(path)
    path.write_text("prompt,small,big,small_cost,big|total_cost,topic\n"
                    "what is 2+2,1,1,0.001,0.01,math\nname a prime,,1,0.001,0.02,math\n"
                    "say hi,true,false,0.001,0.01,chat\n")
    outcomes = load_outcomes(path)
    assert outcomes.models == ["small", "big"] and len(outcomes) == 2 and outcomes.skipped == 1
    assert outcomes.scores.tolist() == [[1, 1], [1, 0]] and outcomes.responses is None
    assert OutcomeTable.load(path).format == "plain"
    # No cost columns: models the catalog knows are priced from their prompt tokens.
    path.write_text(f"prompt,{WEAK},{STRONG}\nwhat is 2+2,1,1\nname a prime,0,1\n")
    priced = load_outcomes(path)
    assert priced.cost_sources[STRONG] == "catalog recorded/gpt-4-1106-preview"
    assert 0 < priced.costs[0, 0] < priced.costs[0, 1]


def test_bad_outcome_files_name_the_problem(tmp_path):
    no_models = tmp_path / "no_models.csv"
    no_models.write_text("prompt,topic\nhello,chat\n")
    with pytest.raises(OutcomeTableError, match="no model columns"):
        load_outcomes(no_models)
    empty_model = tmp_path / "empty_model.csv"
    empty_model.write_text("prompt,a,b,a|total_cost,b|total_cost\nx,1,,0.1,0.2\ny,0,,0.1,0.2\n")
    with pytest.raises(OutcomeTableError, match="model 'b' has no scores"):
        load_outcomes(empty_model)
    other = tmp_path / "other.csv"
    other.write_text("prompt,a,c,a|total_cost,c|total_cost\nx,1,0,0.1,0.2\ny,0,1,0.1,0.2\n")
    train = load_outcomes(tmp_path / "other.csv")
    test = table([[1, 0], [0, 1]], models=["a", "b"])
    with pytest.raises(OutcomeTableError, match=r"different models.*missing \['c'\].*extra \['b'\]"):
        route_eval("quality", train, test)


# --- features -------------------------------------------------------------------------------

def test_answer_checks_find_wrong_arithmetic_without_eval():
    right = "16 - 3 = 13 eggs, 13 - 4 = 9 left, 9 * $2 = $<<9*2=18>>18.\n#### 18"
    wrong = "2 + 1/2 = 5/2 = <<5/2=2.5>>2.5 bolts. However 3 * 4 = 13, so #### 2.5"
    checked, bad, any_bad, no_final, several, fractional, hedges, _ = answer_checks(right)
    assert (checked, bad, any_bad, no_final, fractional, hedges) == (3, 0, 0, 0, 0, 0)
    checked, bad, any_bad, no_final, several, fractional, hedges, _ = answer_checks(wrong)
    assert (checked, bad, any_bad, fractional, hedges) == (3, 1, 1, 1, 1)
    assert answer_checks("no numbers here")[3] == 1.0  # no final answer
    assert arithmetic("2*(3+4)") == 14 and arithmetic("__import__('os')") is None and arithmetic("2**99") is None


def test_text_features_read_pairs_query_and_response():
    features = TextFeatures("word+checks").fit([("what is 2+2", "2 + 2 = 4 #### 4"), ("name a prime", "7")])
    matrix = features.transform([("what is 2+2", "2 + 2 = 5 #### 5")])
    words = features.parts_["word"].vocabulary_
    assert "prime" in words and "what" in words  # the query is read
    assert matrix.shape[1] == len(words) + 8


def test_fit_transform_is_fit_then_transform_bit_for_bit(gsm8k):
    # Routers fit their features with fit_transform (each training text read once, not twice):
    # it must give exactly the matrix fit().transform() gives, so route-eval's results do not move.
    pairs = [(p, r[0]) for p, r in zip(gsm8k.prompts[:300], gsm8k.responses[:300])]
    for X, features in ((gsm8k.prompts[:300], "word+char"), (pairs, "word+char+checks"), (pairs, "checks")):
        once = TextFeatures(features).fit_transform(X)
        twice = TextFeatures(features).fit(X).transform(X)
        assert once.has_sorted_indices and twice.has_sorted_indices
        assert np.array_equal(once.indptr, twice.indptr) and np.array_equal(once.indices, twice.indices)
        assert np.array_equal(once.data, twice.data), features  # not approximately: the same bits


def test_win_router_predictions_are_those_of_fitting_features_twice(gsm8k, monkeypatch):
    from stagewise.routing import routers

    part, held_out = gsm8k.subset(range(500)), gsm8k.prompts[500:700]
    fast = WinRouter().fit_outcomes(part).strong_probability(held_out)

    def fit_then_transform(self, X):  # how features were fitted before: fit, then transform again
        self.features_ = TextFeatures(self.features).fit(X)
        return self.features_.transform(X)

    monkeypatch.setattr(routers._TextEstimator, "_fit_features", fit_then_transform)
    slow = WinRouter().fit_outcomes(part).strong_probability(held_out)
    assert np.array_equal(fast, slow)


def test_sentence_embeddings_real_model_each_text_once():
    texts = ["I lost my card yesterday", "my card was stolen", "what is the exchange rate for euros"]
    encoder = SentenceEmbeddings().fit(texts)
    before = len(_vectors)
    vectors = encoder.transform(texts + texts)
    assert vectors.shape == (6, 384) and len(_vectors) == before + 3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # meaning, not spelling
    assert np.array_equal(vectors[:3], vectors[3:])


# --- estimators -----------------------------------------------------------------------------

def test_routers_follow_scikit_learn_conventions(gsm8k):
    router = WinRouter(features="word", C=2.0, threshold=0.3)
    assert router.get_params() == {"features": "word", "C": 2.0, "threshold": 0.3}
    assert clone(router).set_params(C=5.0).C == 5.0
    part = gsm8k.subset(range(400))
    router.fit_outcomes(part)
    probabilities = router.predict_proba(gsm8k.prompts[400:420])
    assert probabilities.shape == (20, 2) and np.allclose(probabilities.sum(axis=1), 1)
    routes = router.predict(gsm8k.prompts[400:420])
    assert list(routes) == [STRONG if p >= 0.3 else WEAK for p in probabilities[:, 1]]
    assert {WEAK, STRONG} == set(router.predict(gsm8k.prompts[400:1319]))  # the threshold sends some each way
    # score: the mean realized quality of the routes taken, computed here from the table itself.
    taken = router.predict(gsm8k.prompts[400:500])
    realized = [gsm8k.scores[400 + i, gsm8k.column(m)] for i, m in enumerate(taken)]
    assert router.score(gsm8k.prompts[400:500], gsm8k.scores[400:500]) == pytest.approx(np.mean(realized), abs=1e-12)

    labels = LabelRouter(features="char").fit(["lost card", "card stolen", "rate for euro", "dollar rate"],
                                              ["cards", "cards", "payments", "payments"])
    assert list(labels.classes_) == ["cards", "payments"]
    assert labels.score(["my card is lost", "euro exchange rate"], ["cards", "payments"]) == 1.0


def test_quality_router_beats_the_zero_router_on_routerbench_arc(arc):
    train, test = arc
    report = route_eval("quality", train, test)
    assert report.metrics["aiq"] > report.metrics["zero_router_aiq"] > report.metrics["random"]["aiq"]
    saving = report.metrics["cost_saving_at_95"]
    assert saving["quality"] >= 0.95 * report.metrics["single_models"]["gpt-4-1106-preview"]["quality"]
    assert saving["saving"] > 0.5
    router = QualityRouter(features="word").fit_outcomes(train)
    assert router.predict_quality(test.prompts[:5]).shape == (5, 11)
    # A cost weight trades quality for price (at prediction time): the routed cost falls as it grows.
    costs = [np.mean([test.costs[i, test.column(m)] for i, m in enumerate(
        router.set_params(cost_weight=w).predict(test.prompts))]) for w in (0.0, 100.0, 10000.0)]
    assert costs[0] > costs[1] > costs[2]


def test_cascade_scorer_beats_a_prompt_only_router_on_gsm8k(gsm8k):
    cascade = route_eval("cascade", gsm8k, cv=3)
    prompt_only = route_eval("win", gsm8k, cv=3)
    assert cascade.metrics["apgr"] > prompt_only.metrics["apgr"] > cascade.metrics["random"]["apgr"]
    assert cascade.metrics["apgr"] > 0.68
    assert cascade.metrics["kind"] == "cascade" and prompt_only.metrics["kind"] == "router"


def test_router_specs_and_optuna_search_space(gsm8k):
    router = make_router("cascade:features=word+checks,C=2")
    assert isinstance(router, CascadeScorer) and router.get_params() == {"features": "word+checks", "C": 2.0}
    for bad, message in [("forest", "unknown kind"), ("win:depth=3", "not key=value"), ("win:C=lots", "not a number"),
                         ("win:features=word+pixels", "unknown kind")]:
        with pytest.raises((RouterSpecError, ValueError), match=message):
            make_router(bad)
    part = gsm8k.subset(range(600))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda trial: route_eval(suggest_router(trial, "cascade"), part, cv=2).metrics["apgr"],
                   n_trials=3)
    best = study.best_params
    assert set(best) == {"router.features", "router.C", "router.checks"}
    assert best["router.features"] in ("word", "char", "word+char") and 0.05 <= best["router.C"] <= 50.0
    # The best value is the APGR of the router those parameters build, cross-validated again here.
    rebuilt = CascadeScorer(features=best["router.features"] + ("+checks" if best["router.checks"] else ""),
                            C=best["router.C"])
    assert study.best_value == pytest.approx(route_eval(rebuilt, part, cv=2).metrics["apgr"], abs=1e-12)
    assert study.best_value == max(trial.value for trial in study.trials)
    assert study.best_value > route_eval("zero", part, cv=2).metrics["apgr"] == pytest.approx(0.5)


# --- the zero router and choosing the default router ---------------------------------------

def signal_table(n: int = 90, responses: bool = False) -> Outcomes:
    """The strong model wins exactly on the prompts that say "hard"; both are right on the others."""
    hard = np.arange(n) % 3 == 0
    scores = np.column_stack([~hard, np.ones(n, bool)]).astype(float)
    prompts = [f"{'hard' if h else 'easy'} question number {i}" for i, h in enumerate(hard)]
    answers = [["I am not sure, maybe 7" if h else "#### 4", "#### 4"] for h in hard] if responses else None
    return Outcomes("signal", prompts, ["m0", "m1"], scores, np.tile([1.0, 10.0], (n, 1)), answers)


def test_zero_router_is_the_best_fixed_mix(arc):
    train, test = arc
    zero = ZeroRouter().fit_outcomes(train)
    means = train.scores.mean(axis=0)
    best = train.models[int(np.argmax(means))]
    assert list(zero.predict(test.prompts[:3])) == [best] * 3
    assert np.array_equal(zero.predict_quality(test.prompts[:2]), np.tile(means, (2, 1)))
    cheapest = train.models[int(np.argmin(train.costs.mean(axis=0)))]
    assert zero.set_params(cost_weight=1e9).predict(["any"])[0] == cheapest
    report = route_eval("zero", train, test)
    assert report.metrics["aiq"] == pytest.approx(report.metrics["zero_router_aiq"], abs=1e-12)
    two = route_eval("zero", table([[0, 1], [1, 1], [0, 0], [0, 1]]), cv=2)
    assert two.metrics["apgr"] == pytest.approx(0.5) and two.metrics["cpt50"] == pytest.approx(0.5)


def test_candidate_specs_follow_what_the_table_records(gsm8k, arc):
    assert sel.candidate_specs(gsm8k) == ["zero", *sel.PRE_ROUTERS, *sel.CASCADES]
    assert sel.candidate_specs(signal_table()) == ["zero", *sel.PRE_ROUTERS]  # no responses: no cascades
    assert sel.candidate_specs(arc[0]) == ["zero", *sel.MANY_MODEL_ROUTERS]
    assert sel.candidate_specs(arc[0], weak="mistralai/mixtral-8x7b-chat", strong="gpt-4-1106-preview") == \
        ["zero", *sel.PRE_ROUTERS, *sel.CASCADES]


def test_select_router_takes_the_best_inner_score_and_zero_on_a_tie():
    outcomes = signal_table()
    selection = sel.select_router(outcomes, ["zero", "win:features=word"], folds=3)
    expected = {spec: route_eval(spec, outcomes, cv=3).metrics["aiq"] for spec in ("zero", "win:features=word")}
    assert selection.scores == pytest.approx(expected, abs=1e-12)
    assert selection.chosen == "win:features=word" and expected["win:features=word"] > expected["zero"]
    # Every query gains the same from the strong model: no ranking beats the fixed mix, the tie goes to it.
    flat = table([[0, 1]] * 30)
    tie = sel.select_router(flat, ["zero", "win:features=word", "quality:features=word"], folds=3)
    assert all(score == pytest.approx(tie.scores["zero"], abs=1e-12) for score in tie.scores.values())
    assert tie.chosen == "zero" and tie.zero_router
    with pytest.raises(RoutingEvalError, match="selection metric"):
        sel.select_router(flat, ["zero"], metric="accuracy")


def test_nested_cv_chooses_inside_each_training_part_and_falls_back_to_zero():
    # Cascades cannot be trained where the weak model is always wrong: left out, the reason kept.
    flat = table([[0, 1]] * 30)
    flat = Outcomes("flat", [f"q{i}" for i in range(30)], ["m0", "m1"], flat.scores, flat.costs,
                    [["7", "4"]] * 30)
    report = sel.nested_route_eval(flat, cv=3)
    selection = report.metrics["selection"]
    assert selection["zero_router"] and selection["chosen"] == "zero" and len(selection["folds"]) == 3
    assert "cascade" in selection["folds"][0]["errors"] and selection["folds"][0]["inner_cv"]["cascade"] is None
    assert report.metrics["aiq"] == pytest.approx(report.metrics["zero_router_aiq"], abs=1e-12)
    assert report.metrics["apgr"] == pytest.approx(0.5)

    outcomes = signal_table(responses=True)
    report = sel.nested_route_eval(outcomes, cv=3, candidates=["zero", "win:features=word", "cascade:features=word"])
    folds = report.metrics["selection"]["folds"]
    assert [f["n_train"] for f in folds] == [60, 60, 60] and [f["n_test"] for f in folds] == [30, 30, 30]
    # Each fold's inner scores come from its own training rows only.
    from sklearn.model_selection import KFold
    fit_rows, _ = next(iter(KFold(3, shuffle=True, random_state=0).split(np.arange(90))))
    part = outcomes.subset(fit_rows)
    assert folds[0]["inner_cv"]["win:features=word"] == pytest.approx(
        route_eval("win:features=word", part, cv=3).metrics["aiq"], abs=1e-12)
    assert all(f["chosen"] != "zero" for f in folds)
    assert report.metrics["aiq"] > report.metrics["zero_router_aiq"]
    # "hard" names every win: as good as the oracle (1 - 1/3 / 2, a third of the queries are wins).
    assert report.metrics["apgr"] == pytest.approx(report.metrics["oracle"]["apgr"], abs=0.01)


def test_nested_against_a_test_table_is_the_chosen_spec_trained_on_all_of_train(gsm8k):
    train, test = gsm8k.subset(range(0, 900)), gsm8k.subset(range(900, 1319))
    candidates = ["zero", "win:features=word", "cascade:features=checks"]
    report = sel.nested_route_eval(train, test, candidates=candidates)
    [fold] = report.metrics["selection"]["folds"]
    assert fold["chosen"] == sel.select_router(train, candidates).chosen == report.metrics["selection"]["chosen"]
    direct = route_eval(fold["chosen"], train, test).metrics
    for key in ("apgr", "cpt50", "cpt80", "aiq", "cost_saving_at_95", "kind"):
        assert report.metrics[key] == pytest.approx(direct[key], abs=1e-12), key


def reversed_models(path, out):
    """A copy of a RouterBench table whose model column groups come in reverse order."""
    frame = pd.read_csv(path)
    models = [c.removesuffix("|model_response") for c in frame.columns if c.endswith("|model_response")]
    grouped = [c for m in reversed(models) for c in (m, f"{m}|model_response", f"{m}|total_cost")]
    frame[[c for c in frame.columns if c not in grouped] + grouped].to_csv(out, index=False)
    return out


def test_a_test_table_with_its_models_in_another_order_is_evaluated_by_model_name(arc, tmp_path):
    train, test = arc
    shuffled = load_outcomes(reversed_models(ARC_TEST, tmp_path / "reversed.csv"))
    assert shuffled.models == test.models[::-1] and len(shuffled) == len(test)
    for spec in ("quality:features=word", "zero"):
        same, other = route_eval(spec, train, test).metrics, route_eval(spec, train, shuffled).metrics
        assert other["aiq"] == pytest.approx(same["aiq"], abs=1e-12), spec
    nested = sel.nested_route_eval(train, shuffled, candidates=["quality:features=word"]).metrics
    assert nested["aiq"] == pytest.approx(route_eval("quality:features=word", train, test).metrics["aiq"], abs=1e-12)
    # The router itself reads a table by model name: its values follow the table's columns.
    router = QualityRouter(features="word").fit_outcomes(train)
    np.testing.assert_allclose(router.route_values(shuffled), router.route_values(test)[:, ::-1])
    with pytest.raises(DataError, match="not trained on"):
        router.route_values(Outcomes("renamed", test.prompts, ["a", "b"], test.scores[:, :2], test.costs[:, :2], None))
    win = WinRouter(features="word").fit_outcomes(train, weak=test.models[0], strong=test.models[1])
    with pytest.raises(DataError, match="trained with weak"):
        win.route_values(test, weak=test.models[1], strong=test.models[0])


def test_outer_fold_curves_average_by_size():
    # Two folds of 2 and 1 queries: at share 1/3 the first is a third of its way, the second at 1/3 of its only step.
    a = ev.Curve(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 1.0]), np.array([0.0, 0.5, 1.0]))
    b = ev.Curve(np.array([1.0, 4.0]), np.array([0.0, 0.0]), np.array([0.0, 1.0]))
    combined = sel.combine_curves([a, b], [2, 1], by_share=True)
    assert combined.share.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert combined.quality.tolist() == pytest.approx([0, 2 / 3 * (2 / 3), 2 / 3 * 1, 2 / 3 * 1])
    assert combined.cost.tolist() == pytest.approx([1, 2 / 3 * (5 / 3) + 1 / 3 * 2, 2 / 3 * (7 / 3) + 1 / 3 * 3,
                                                    2 / 3 * 3 + 1 / 3 * 4])
    # Many models, by cost budget: each fold at its hull's point for the budget, clipped to its range.
    x = ev.Curve(np.array([1.0, 3.0]), np.array([0.5, 0.9]))
    y = ev.Curve(np.array([2.0, 4.0]), np.array([0.6, 0.8]))
    by_cost = sel.combine_curves([x, y], [1, 1], by_share=False)
    assert by_cost.cost.tolist() == pytest.approx([1.5, 2.0, 3.0, 3.5])
    assert by_cost.quality.tolist() == pytest.approx([0.55, 0.65, 0.8, 0.85])


# --- safe files -----------------------------------------------------------------------------

class Intruder:
    ran = False

    def __setstate__(self, state):
        Intruder.ran = True


def test_saved_routers_load_without_pickle_and_refuse_foreign_types(gsm8k, tmp_path):
    scorer = CascadeScorer().fit_outcomes(gsm8k.subset(range(300)))
    path = save_router(scorer, tmp_path / "scorer.skops")
    assert zipfile.is_zipfile(path) and b"pickle" not in path.read_bytes()[:4]
    loaded = load_router(path)
    pairs = [(p, r[0]) for p, r in zip(gsm8k.prompts[300:330], gsm8k.responses[300:330])]
    assert np.array_equal(loaded.predict_proba(pairs), scorer.predict_proba(pairs))

    evil = tmp_path / "evil.skops"
    from skops import io as skops_io
    skops_io.dump({"router": Intruder()}, evil)
    with pytest.raises(RouterFileError, match="Intruder"):
        load_router(evil)
    assert not Intruder.ran
    (tmp_path / "junk.skops").write_text("not a zip")
    with pytest.raises(RouterFileError, match="not a skops file"):
        load_router(tmp_path / "junk.skops")
    with pytest.raises(RouterFileError, match="does not exist"):
        load_router(tmp_path / "missing.skops")


# --- in the programs, on the replay engine ---------------------------------------------------

def test_quality_router_routes_a_router_program_over_recorded_models(arc):
    train, test = arc
    table_ = OutcomeTable.load(ARC_TEST)
    names = {"gpt-4-1106-preview": "recorded/gpt-4-1106-preview", "zero-one-ai/Yi-34B-Chat": "recorded/yi-34b-chat",
             "mistralai/mixtral-8x7b-chat": "recorded/mixtral-8x7b-chat"}
    routes = {column: Stage(column.split("/")[-1], "prompt -> answer", lm=get_lm(entry, replay_table=table_))
              for column, entry in names.items()}
    columns = [train.column(c) for c in names]
    restricted = QualityRouter(features="word", cost_weight=200.0).fit(
        train.prompts, train.scores[:, columns], models=list(names), costs=train.costs[:, columns])
    router = Router("pick", restricted, routes, query="input.prompt")
    taken = []
    for prompt in test.prompts[:12]:
        prediction = router(prompt=prompt)
        assert prediction.answer == table_.outcome(prompt, prediction.route).response
        assert prediction.trace[routes[prediction.route].name].cost_usd > 0
        taken.append(prediction.route)
    assert taken == list(restricted.predict(test.prompts[:12]))  # the route taken is the router's choice


def test_cascade_scorer_drives_a_cascade_program_over_recorded_models(gsm8k):
    table_ = OutcomeTable.load(ROUTELLM)
    scorer = CascadeScorer().fit_outcomes(gsm8k.subset(range(600)), WEAK)
    cascade = Cascade("frugal", [
        Stage("mixtral", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=table_)),
        Stage("gpt4", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=table_)),
    ], scorer, threshold=0.6, query="input.prompt")
    tiers = []
    for row in range(600, 630):
        prompt = gsm8k.prompts[row]
        prediction = cascade(prompt=prompt)
        expected_p = scorer.predict_proba([(prompt, gsm8k.responses[row][0])])[0, 1]
        assert prediction.scores[0] == pytest.approx(expected_p, abs=1e-9)
        assert prediction.tier == ("mixtral" if expected_p >= 0.6 else "gpt4")
        tiers.append(prediction.tier)
    assert set(tiers) == {"mixtral", "gpt4"}


# --- command line ---------------------------------------------------------------------------

def test_route_eval_json_many_models(arc, tmp_path):
    train, test = arc
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(ARC_TRAIN), "--test", str(ARC_TEST), "--json",
                                      "--router", "quality", "--save", str(tmp_path / "router.skops")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["n_test"] == len(test) and payload["aiq"] > payload["zero_router_aiq"]
    saved = load_router(tmp_path / "router.skops")
    assert isinstance(saved, QualityRouter)
    # Against a test table the router is trained on all of --outcomes: the saved one is the one evaluated.
    again = ev.many_model_report("saved", test, saved.predict_quality(test.prompts), train.costs.mean(axis=0))
    for key in ("aiq", "zero_router_aiq", "cost_saving_at_95", "oracle", "random"):
        assert payload[key] == pytest.approx(again.metrics[key], abs=1e-12), key


def test_route_eval_two_models_table_and_plot(tmp_path):
    plot = tmp_path / "gsm8k.png"
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(ROUTELLM), "--cv", "2",
                                      "--router", "cascade:features=checks", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "APGR" in result.stdout and "random (10 seeds)" in result.stdout and "saved)" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "APGR" in line and "router" in line)
    assert [c for c in ("APGR", "CPT20", "CPT50", "CPT80") if c in header] == ["APGR", "CPT20", "CPT50", "CPT80"]
    assert plot.stat().st_size > 10_000
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(ROUTELLM), "--cv", "2", "--json",
                                      "--router", "win:features=word"])
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    expected = route_eval("win:features=word", load_outcomes(ROUTELLM), cv=2).metrics
    for key in ("apgr", "cpt50", "cpt80", "random", "oracle", "cost_saving_at_95"):
        assert payload[key] == pytest.approx(expected[key], abs=1e-12), key
    assert payload["n_test"] == 1319 and payload["kind"] == "router" and "selection" not in payload


def test_route_eval_default_router_is_chosen_inside_the_training_rows(tmp_path):
    path = tmp_path / "flat.csv"  # the strong model gains the same on every query: nothing to learn
    path.write_text("prompt,small,big,small|total_cost,big|total_cost\n"
                    + "".join(f"question {i},0,1,0.001,0.01\n" for i in range(24)))
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(path), "--cv", "3",
                                      "--plot", str(tmp_path / "flat.png")])
    assert result.exit_code == 0, result.output
    assert "auto: zero" in result.stdout and "the default is the zero router" in result.stdout
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(path), "--cv", "3", "--json",
                                      "--save", str(tmp_path / "zero.skops")])
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["selection"]["chosen"] == "zero" and payload["selection"]["zero_router"]
    assert payload["selection"]["candidates"] == ["zero", *sel.PRE_ROUTERS]
    assert set(payload["selection"]["folds"][0]["inner_cv"]) == {"zero", *sel.PRE_ROUTERS}
    assert payload["aiq"] == pytest.approx(payload["zero_router_aiq"], abs=1e-12)
    assert isinstance(load_router(tmp_path / "zero.skops"), ZeroRouter)


def test_route_eval_default_router_at_least_the_zero_router_on_arc(arc, tmp_path):
    result = CliRunner().invoke(app, ["route-eval", "--outcomes", str(ARC_TRAIN), "--test", str(ARC_TEST), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    selection = payload["selection"]
    assert selection["outer"] == "test table" and selection["candidates"] == ["zero", *sel.MANY_MODEL_ROUTERS]
    [fold] = selection["folds"]
    assert fold["n_train"] == len(arc[0]) and fold["chosen"] == max(fold["inner_cv"], key=fold["inner_cv"].get)
    assert payload["aiq"] >= payload["zero_router_aiq"]


def test_route_eval_bad_input_exits_with_a_message(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["route-eval", "--outcomes", str(ROUTELLM)])
    assert result.exit_code == 2 and "--test FILE or --cv K" in result.stdout
    result = runner.invoke(app, ["route-eval", "--outcomes", str(tmp_path / "none.csv"), "--cv", "3"])
    assert result.exit_code == 2 and "does not exist" in result.stdout
    result = runner.invoke(app, ["route-eval", "--outcomes", str(ARC_TRAIN), "--test", str(ROUTELLM)])
    assert result.exit_code == 2 and "different models" in result.stdout
    result = runner.invoke(app, ["route-eval", "--outcomes", str(ROUTELLM), "--cv", "3", "--router", "tree"])
    assert result.exit_code == 2 and "unknown kind 'tree'" in result.stdout
