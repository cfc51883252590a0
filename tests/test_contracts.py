"""User-written classes that follow stagewise's declared contracts work where those are accepted:
an Engine in a StagewiseLM running a stage, a Scorer in a Cascade over recorded models and in
route_eval, a Decider in a Router over recorded models and (as an OutcomeLearner) in route_eval."""

import asyncio
import copy
import json

import dspy
import numpy as np
import pytest
from dspy.lm15 import Message, Response, Usage, response_to_events
from sklearn.base import BaseEstimator

from stagewise.data import OutcomeTable
from stagewise.models import Engine
from stagewise.models.async_engine import ThreadedAsyncEngine
from stagewise.models.catalog import ModelSpec
from stagewise.models.lm import StagewiseLM, get_lm
from stagewise.programs import Cascade, Chain, Router, Stage
from stagewise.routing import (
    Decider,
    OutcomeLearner,
    RoutingEvalError,
    Scorer,
    evaluation,
    load_outcomes,
    route_eval,
)
from tests.conftest import ROUTELLM

WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


# --- an engine --------------------------------------------------------------------------------

class CapitalEngine:
    """A user's engine: answers every request with the same JSON answer, at a recorded cost."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens"})

    def __init__(self, answer: str = "Paris"):
        self.answer = answer
        self.requests = []

    def complete(self, request):
        self.requests.append(request)
        return Response(id=None, model=request.model, message=Message.assistant(json.dumps({"answer": self.answer})),
                        finish_reason="stop", usage=Usage(input_tokens=12, output_tokens=4),
                        provider_data={"stagewise": {"cost_usd": 0.002}})

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self):
        pass

    def __deepcopy__(self, memo):
        return self

    def dump_state(self):
        return {"answer": self.answer}

    @classmethod
    def load_state(cls, state):
        return cls(state["answer"])


def test_a_users_engine_runs_a_stage_and_its_calls_are_accounted():
    engine: Engine = CapitalEngine()
    spec = ModelSpec(name="capitals", provider="me", engine="litellm", model="me/capitals", tokenizer="o200k_base",
                     input_price=1.0, output_price=2.0, context_window=8192, max_output=1024)
    lm = StagewiseLM("me/capitals", spec=spec, engine=engine, async_engine=ThreadedAsyncEngine(engine), cache=False,
                     num_retries=0, temperature=0.0, max_tokens=64)
    with dspy.context(adapter=dspy.JSONAdapter()):
        prediction = Chain("qa", [Stage("answer", "query -> answer", lm=lm)])(query="Capital of France?")
    assert prediction.answer == "Paris"
    assert "Capital of France?" in engine.requests[-1].messages[-1].text
    step = prediction.trace["answer"]
    assert step.calls == 1 and step.cost_usd == pytest.approx(0.002)  # the engine's recorded cost, not the price
    [record] = lm.usage.records
    assert (record.input_tokens, record.output_tokens, record.cost_source) == (12, 4, "recorded")
    assert asyncio.run(lm.acall("Capital of Italy?")) == ['{"answer": "Paris"}']  # the async face, in a thread
    assert len(lm.usage.records) == 2 and len(engine.requests) == 2
    assert copy.deepcopy(lm).engine is engine  # copies of the LM share the engine
    assert lm.dump_state()["engine"] == {"class": "tests.test_contracts:CapitalEngine", "state": {"answer": "Paris"}}


# --- a scorer -----------------------------------------------------------------------------------

class LengthScorer(BaseEstimator):
    """A user's cascade scorer: a weak answer at least as long as the typical right one is probably right.

    A Scorer (``correct_probability``) and an OutcomeLearner (trained and evaluated by route_eval)."""

    pairwise = True
    reads_queries = True

    def __init__(self, confident: float = 0.9):
        self.confident = confident

    def fit_outcomes(self, outcomes, weak=None, strong=None):
        j = outcomes.column(weak or outcomes.by_cost()[0])
        lengths = np.array([len(row[j]) for row in outcomes.responses])
        self.threshold_ = float(np.median(lengths[outcomes.scores[:, j] >= 0.5]))
        self.seen_ = []
        return self

    def correct_probability(self, queries, answers):
        self.seen_.extend(zip(queries, answers))
        return np.array([self.confident if len(a) >= self.threshold_ else 1 - self.confident for a in answers])

    def route_values(self, outcomes, weak=None, strong=None):
        j = outcomes.column(weak)
        return 1.0 - self.correct_probability(outcomes.prompts, [row[j] for row in outcomes.responses])


@pytest.fixture(scope="module")
def gsm8k():
    return load_outcomes(ROUTELLM)


@pytest.fixture(scope="module")
def table():
    return OutcomeTable.load(ROUTELLM)


@pytest.fixture()
def recorded(table):
    """The two recorded models of the table, each a stage, by model name."""
    return {WEAK: Stage("mixtral", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=table)),
            STRONG: Stage("gpt4", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=table))}


def test_a_users_scorer_drives_a_cascade_over_recorded_models(gsm8k, recorded):
    scorer = LengthScorer().fit_outcomes(gsm8k.subset(range(600)), WEAK)
    assert isinstance(scorer, Scorer) and isinstance(scorer, OutcomeLearner)
    cascade = Cascade("frugal", [recorded[WEAK], recorded[STRONG]], scorer, threshold=0.5, query="input.prompt")
    weak = gsm8k.column(WEAK)
    tiers = []
    for row in range(600, 620):
        prompt, answer = gsm8k.prompts[row], gsm8k.responses[row][weak]
        with dspy.context(adapter=dspy.JSONAdapter()):
            prediction = cascade(prompt=prompt)
        assert scorer.seen_[-1] == (prompt, answer)  # the query and the cheap model's recorded answer, as a pair
        expected = scorer.confident if len(answer) >= scorer.threshold_ else 1 - scorer.confident
        assert prediction.scores[0] == pytest.approx(expected)
        assert prediction.tier == ("mixtral" if expected >= 0.5 else "gpt4")
        assert prediction.answer == gsm8k.responses[row][gsm8k.column(WEAK if prediction.tier == "mixtral" else STRONG)]
        tiers.append(prediction.tier)
    assert set(tiers) == {"mixtral", "gpt4"}


def test_a_users_scorer_is_evaluated_as_a_cascade(gsm8k):
    train, test = gsm8k.subset(range(600)), gsm8k.subset(range(600, len(gsm8k)))
    report = route_eval(LengthScorer(), train, test)
    fitted = LengthScorer().fit_outcomes(train, WEAK)
    need = 1.0 - fitted.correct_probability(test.prompts, [row[test.column(WEAK)] for row in test.responses])
    expected = evaluation.two_model_report("LengthScorer", test, need, weak=WEAK, strong=STRONG, cascade=True)
    assert report.metrics["kind"] == "cascade" and (report.metrics["weak"], report.metrics["strong"]) == (WEAK, STRONG)
    assert report.metrics["apgr"] == pytest.approx(expected.metrics["apgr"])
    assert np.allclose(report.curve.cost, expected.curve.cost)  # every escalation pays the weak call too


# --- a decider ----------------------------------------------------------------------------------

class LengthRouter(BaseEstimator):
    """A user's router: long prompts go to the strong model.

    A Decider (``predict``: a model name per prompt) and an OutcomeLearner."""

    pairwise = True
    reads_queries = True

    def __init__(self, share: float = 0.5):
        self.share = share

    def fit_outcomes(self, outcomes, weak=None, strong=None):
        order = outcomes.by_cost()
        self.models_ = [weak or order[0], strong or order[-1]]
        self.threshold_ = float(np.quantile([len(p) for p in outcomes.prompts], 1.0 - self.share))
        return self

    def predict(self, texts):
        return [self.models_[1] if len(t) >= self.threshold_ else self.models_[0] for t in texts]

    def route_values(self, outcomes, weak=None, strong=None):
        return np.array([len(p) for p in outcomes.prompts], dtype=float)


def test_a_users_decider_routes_over_recorded_models(gsm8k, recorded):
    decider: Decider = LengthRouter().fit_outcomes(gsm8k.subset(range(600)))
    router = Router("pick", decider, recorded, query="input.prompt")
    taken = []
    for prompt in gsm8k.prompts[600:620]:
        with dspy.context(adapter=dspy.JSONAdapter()):
            prediction = router(prompt=prompt)
        assert prediction.route == decider.predict([prompt])[0]
        assert prediction.answer == gsm8k.responses[gsm8k.prompts.index(prompt)][gsm8k.column(prediction.route)]
        assert prediction.trace[recorded[prediction.route].name].calls == 1
        taken.append(prediction.route)
    assert set(taken) == {WEAK, STRONG}


def test_a_users_decider_is_evaluated_by_route_eval(gsm8k):
    train, test = gsm8k.subset(range(600)), gsm8k.subset(range(600, len(gsm8k)))
    report = route_eval(LengthRouter(), train, test)
    lengths = np.array([len(p) for p in test.prompts], dtype=float)
    expected = evaluation.two_model_report("LengthRouter", test, lengths, weak=WEAK, strong=STRONG)
    assert report.router == "LengthRouter" and report.metrics["kind"] == "router"
    assert report.metrics["apgr"] == pytest.approx(expected.metrics["apgr"])
    folds = route_eval(LengthRouter(), gsm8k, cv=3)  # fitted afresh (sklearn's clone) on each fold
    assert 0.0 <= folds.metrics["apgr"] <= 1.5


def test_route_eval_names_the_contract_a_plain_decider_lacks(gsm8k):
    class Fixed:
        def predict(self, texts):
            return [WEAK] * len(texts)

    assert not isinstance(Fixed(), OutcomeLearner)
    with pytest.raises(RoutingEvalError, match="an OutcomeLearner: fit_outcomes, route_values"):
        route_eval(Fixed(), gsm8k, cv=3)
