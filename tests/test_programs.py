"""The orchestration programs end to end: on the real local models, and on the replay engine."""

import json
from collections import Counter
from typing import Literal

import dspy
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from stagewise.context.budget import BudgetError
from stagewise.context.record import MissingSectionError
from stagewise.data import OutcomeTable
from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import get_lm
from stagewise.models.tokens import count_tokens
from stagewise.models.usage import track_usage
from stagewise.programs import (
    Cascade,
    Chain,
    DisagreementReport,
    DocumentIndex,
    FanOut,
    Hierarchy,
    LLMAggregate,
    MajorityVote,
    MergeProfile,
    PlanError,
    Retrieve,
    Router,
    Specialist,
    Stage,
    StageConfigError,
    UnknownRouteError,
    WeightedVote,
)
from stagewise.signatures import Aggregate, Plan, QueryAnalysis, Review, SpecialistAnswer, Synthesize

from .conftest import DATA, ROUTELLM


@pytest.fixture(autouse=True)
def _json_adapter():
    with dspy.context(adapter=dspy.JSONAdapter()):
        yield


@pytest.fixture(scope="module")
def small():
    return get_lm("smollm2-135m", cache=False, max_tokens=96)


@pytest.fixture(scope="module")
def banking_index():
    """One document per Banking77 intent: the first 40 customer queries of that intent."""
    frame = pd.read_csv(DATA / "banking77" / "train.csv")
    groups = frame.groupby("category")["text"].apply(lambda texts: " ".join(texts.head(40)))
    return DocumentIndex(list(groups.values), ids=list(groups.index))


@pytest.fixture(scope="module")
def routellm():
    return OutcomeTable.load(ROUTELLM)


class Sentiment(dspy.Signature):
    """Is the customer happy, neutral or unhappy?"""

    ticket: str = dspy.InputField()
    sentiment: Literal["happy", "neutral", "unhappy"] = dspy.OutputField()


class Topic(dspy.Signature):
    """What is the ticket about?"""

    ticket: str = dspy.InputField()
    topic: Literal["card", "transfer", "account", "other"] = dspy.OutputField()


class SureSentiment(dspy.Signature):
    """Is the customer happy, neutral or unhappy, and how sure are you (0 to 1)?"""

    ticket: str = dspy.InputField()
    sentiment: Literal["happy", "neutral", "unhappy"] = dspy.OutputField()
    confidence: float = dspy.OutputField()


class Priority(dspy.Signature):
    """How urgent is the ticket, from 1 (can wait) to 3 (blocked now)?"""

    ticket: str = dspy.InputField()
    priority: int = dspy.OutputField()


TICKET = "My card was blocked at the airport and I cannot pay for my flight, please fix this now!"


# --- errors that name the stage -------------------------------------------------------------

def test_a_stage_asking_for_a_section_nobody_produced_names_the_stage(small):
    chain = Chain("c", [Stage("answer", SpecialistAnswer, inputs={"context": "retrieve.*"}, lm=small)])
    with pytest.raises(MissingSectionError, match=r"stage 'answer' needs section 'retrieve\.\*'"):
        chain(query="Where is my card?")


def test_a_route_label_with_no_route_names_the_router(small):
    class Fixed:
        def predict(self, texts):
            return ["mortgages"] * len(texts)

    router = Router("triage", Fixed(), {"cards": Stage("cards", SpecialistAnswer, lm=small)})
    with pytest.raises(UnknownRouteError, match=r"router 'triage'.*'mortgages'.*routes: cards"):
        router(query="hi", context="none")


def test_a_budget_smaller_than_the_fixed_prompt_names_the_stage(tmp_path):
    catalog_file = tmp_path / "models.toml"
    catalog_file.write_text('[models.tiny-window]\nprovider = "local"\nengine = "llama_cpp"\n'
                            'model = "smollm2-135m-instruct"\nparameters_b = 0.135\ncontext_window = 300\n'
                            'max_output = 64\ntokenizer = "llama.cpp"\n')
    lm = get_lm("tiny-window", catalog=ModelCatalog.load(catalog_file))
    stage = Stage("review", Review, lm=lm)
    with pytest.raises(BudgetError, match="review"):
        stage(query="q", context_summary="c", output="o")


def test_program_assembly_errors():
    with pytest.raises(StageConfigError, match="two stages are named 'x'"):
        Chain("c", [Stage("x", SpecialistAnswer), Stage("x", Synthesize)])
    with pytest.raises(StageConfigError, match="no stage named 'nope'"):
        Chain("c", [Stage("x", SpecialistAnswer)]).set_models({"nope": "smollm2-135m"})
    with pytest.raises(StageConfigError, match="'colour' is not an input field"):
        Stage("x", SpecialistAnswer, inputs={"colour": "input.query"})


# --- each pattern, end to end on the real local model ---------------------------------------

def test_four_stage_chain_completes_because_of_compression(tmp_path, banking_index):
    """Retrieved context is larger than the review model's window: it is compressed, with notes."""
    catalog_file = tmp_path / "models.toml"
    catalog_file.write_text('[models.smollm2-1k]\nprovider = "local"\nengine = "llama_cpp"\n'
                            'model = "smollm2-135m-instruct"\nparameters_b = 0.135\ncontext_window = 1024\n'
                            'max_output = 192\ntokenizer = "llama.cpp"\ncontext_format = "plain"\n')
    review_lm = get_lm("smollm2-1k", catalog=ModelCatalog.load(catalog_file), cache=False)
    chain = Chain("support", [
        Stage("analyze", QueryAnalysis),
        Retrieve("retrieve", banking_index, k=3),
        Stage("generate", SpecialistAnswer, inputs={"context": "retrieve.*"}, budget=700),
        Stage("review", Review, inputs={"context_summary": "retrieve.*", "output": "generate.answer"}),
    ])
    chain.set_models({"analyze": "smollm2-135m", "generate": "smollm2-135m", "review": review_lm})
    retrieved_tokens = None
    prediction = chain(query="I ordered a new card two weeks ago and it still has not arrived. What can I do?")
    trace = prediction.trace
    assert prediction.verdict in ("accept", "revise", "reject") and isinstance(prediction.issues, list)
    retrieved_tokens = sum(prediction.context[f"retrieve.passage_{i}"].tokens for i in (1, 2, 3))
    assert retrieved_tokens > 1024  # more than the review model's whole window
    review = trace["review"]
    assert review.tokens_saved > 0 and review.notes
    # The review got its own fitted copies of the passages; notes say what was done, with token counts.
    assert [s for s in review.received if s.startswith("review~budget.retrieve.passage_")]
    assert all("->" in note and "tokens" in note for note in review.notes)
    assert [s.stage for s in trace.stages] == ["analyze", "retrieve", "generate", "review"]
    assert trace["review"].model == "smollm2-1k" and trace["review"].input_tokens <= 1024
    assert trace["generate"].calls == 1 and trace["generate"].cost_usd > 0
    # Lineage: the review's verdict goes back to the retrieved passages and the request input.
    ancestry = {s.id for s in trace.lineage("review.verdict")}
    assert "input.query" in ancestry and "retrieve.passage_1" in ancestry and "generate.answer" in ancestry
    assert f"{review.tokens_saved} tokens saved" in str(trace)


def test_fanout_merges_a_multi_aspect_profile(small):
    fanout = FanOut("ticket", {
        "sentiment": Stage("sentiment", Sentiment), "topic": Stage("topic", Topic),
        "priority": Stage("priority", Priority),
    }, MergeProfile())
    fanout.set_models({"sentiment": small, "topic": small, "priority": small})
    prediction = fanout(ticket=TICKET)
    assert prediction.sentiment in ("happy", "neutral", "unhappy")
    assert prediction.topic in ("card", "transfer", "account", "other")
    assert isinstance(prediction.priority, int)
    assert set(prediction.profile) == {"sentiment", "topic", "priority"}
    assert {s.stage for s in prediction.trace.stages} >= {"sentiment", "topic", "priority", "ticket"}


def test_fanout_votes_across_models_and_reports_disagreement():
    branches = {name: Stage(name, Sentiment) for name in ("smollm", "gemma", "smollm_again")}
    vote = FanOut("vote", branches, DisagreementReport("sentiment"))
    vote.set_models({"smollm": "smollm2-135m", "gemma": "gemma3-270m", "smollm_again": "smollm2-135m"})
    prediction = vote(ticket=TICKET)
    answers = {branch: prediction.context[f"{branch}.sentiment"].content for branch in branches}
    assert set(answers.values()) <= {"happy", "neutral", "unhappy"}
    # The same model on the same context gives the same answer: the two SmolLM branches agree,
    # so theirs is the majority and only Gemma can dissent.
    assert answers["smollm"] == answers["smollm_again"]
    assert prediction.sentiment == answers["smollm"]
    assert prediction.votes == dict(Counter(answers.values()))
    assert prediction.dissenters == [b for b in branches if answers[b] != answers["smollm"]]
    assert prediction.agreement == (3 - len(prediction.dissenters)) / 3
    majority = FanOut("vote2", {n: Stage(f"{n}2", Sentiment) for n in ("a", "b")}, MajorityVote("sentiment"))
    majority.set_models({"a2": "smollm2-135m", "b2": "smollm2-135m"})
    assert majority(ticket=TICKET).agreement == 1.0


def _scripted(fields):
    return dspy.utils.DummyLM([fields] * 4, adapter=dspy.JSONAdapter())


def test_weighted_vote_lets_confidence_outweigh_the_head_count():
    """Orchestration, with scripted branches: one sure branch outweighs two unsure ones."""
    answers = {"a": ("happy", 0.9), "b": ("unhappy", 0.5), "c": ("unhappy", 0.3)}

    def fanout(aggregator, scripted=answers):
        branches = {name: Stage(name, SureSentiment, lm=_scripted({"sentiment": value, "confidence": weight}))
                    for name, (value, weight) in scripted.items()}
        return FanOut("vote", branches, aggregator)

    weighted = fanout(WeightedVote("sentiment"))(ticket=TICKET)
    assert weighted.sentiment == "happy" and weighted.weights == pytest.approx({"happy": 0.9, "unhappy": 0.8})
    assert fanout(MajorityVote("sentiment"))(ticket=TICKET).sentiment == "unhappy"  # by head count
    tie = fanout(WeightedVote("sentiment"), {"a": ("neutral", 0.4), "b": ("happy", 0.4)})(ticket=TICKET)
    assert tie.sentiment == "neutral"  # equal weights: the earlier branch
    with pytest.raises(StageConfigError, match="produce no field 'mood'"):
        fanout(WeightedVote("mood"))(ticket=TICKET)


def test_weighted_vote_over_two_local_models():
    branches = {"smollm": Stage("smollm", SureSentiment), "gemma": Stage("gemma", SureSentiment)}
    vote = FanOut("vote", branches, WeightedVote("sentiment"))
    vote.set_models({"smollm": get_lm("smollm2-135m", cache=False, max_tokens=128),
                     "gemma": get_lm("gemma3-270m", cache=False, max_tokens=128)})
    prediction = vote(ticket=TICKET)
    expected: dict[str, float] = {}
    for branch in branches:  # recomputed from what each branch answered
        value = prediction.context[f"{branch}.sentiment"].content
        expected[value] = expected.get(value, 0.0) + float(prediction.context[f"{branch}.confidence"].content)
    assert prediction.weights == pytest.approx(expected)
    best = max(expected.values())
    assert prediction.sentiment == next(v for v in expected if expected[v] == best)  # ties: the earlier branch
    assert {s.stage for s in prediction.trace.stages} == {"smollm", "gemma", "vote"}


def test_llm_aggregate_reads_every_candidate_and_writes_the_answer(routellm):
    """Two recorded models answer (GPT-4 says $18, Mixtral $20); SmolLM2 reads both and writes the answer."""
    prompt = routellm.prompts[168]
    fanout = FanOut("both", {
        "gpt4": Stage("gpt4", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm)),
        "mixtral": Stage("mixtral", "prompt -> answer",
                         lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)),
    }, LLMAggregate(Stage("aggregate", Aggregate, inputs={"query": "input.prompt"})))
    assert set(fanout.stages()) == {"gpt4", "mixtral", "aggregate"}
    # the aggregator's stage is a stage of the program like any other
    fanout.set_models({"aggregate": get_lm("smollm2-135m", cache=False, max_tokens=48)})
    with track_usage() as ledger:
        prediction = fanout(prompt=prompt)
    recorded = [routellm.outcome(prompt, column).response
                for column in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")]
    candidates = prediction.context["both.candidates"]
    assert recorded[0] in candidates.content and recorded[1] in candidates.content
    assert candidates.content.index(recorded[0]) < candidates.content.index(recorded[1])  # in branch order
    assert candidates.lineage == ("gpt4.answer", "mixtral.answer")
    aggregate = prediction.trace["aggregate"]
    assert aggregate.model == "smollm2-135m" and aggregate.calls == 1
    assert set(aggregate.received) == {"input.prompt", "both.candidates"}
    assert prediction.answer == prediction.context["aggregate.answer"].content  # the aggregator's answer
    assert prediction.context["both.answer"].content == prediction.answer
    assert sorted(r.model for r in ledger.records) == ["recorded/gpt-4-1106-preview",
                                                       "recorded/mixtral-8x7b-instruct", "smollm2-135m"]


def test_llm_router_sends_the_query_to_a_route(small):
    class Decide(dspy.Signature):
        """Pick the team that should handle the customer's query."""

        query: str = dspy.InputField()
        routes: str = dspy.InputField()
        route: Literal["cards", "transfers"] = dspy.OutputField()
        confidence: float = dspy.OutputField()

    router = Router("router", Stage("decide", Decide), {
        "cards": Stage("cards", SpecialistAnswer, inputs={"context": "input.context"}),
        "transfers": Stage("transfers", SpecialistAnswer, inputs={"context": "input.context"}),
    }, descriptions={"cards": "card delivery, PINs, blocked cards", "transfers": "sending and receiving money"})
    router.set_models({"decide": small, "cards": small, "transfers": small})
    prediction = router(query="My card is blocked.", context="Blocked cards can be unblocked in the app.")
    assert prediction.route in ("cards", "transfers") and isinstance(prediction.confidence, float)
    assert isinstance(prediction.answer, str)
    assert prediction.trace[prediction.route].calls == 1


def test_cascade_with_an_llm_verifier(small):
    from stagewise.signatures import Verify

    cascade = Cascade("cascade", [Stage("cheap", "query -> answer"), Stage("strong", "query -> answer")],
                      Stage("verify", Verify), threshold=0.5)
    cascade.set_models({"cheap": small, "strong": "gemma3-270m", "verify": small})
    prediction = cascade(query="What is 2 + 2?")
    assert (prediction.tier in ("cheap", "strong")
            and prediction.escalations == ("cheap", "strong").index(prediction.tier))
    assert isinstance(prediction.answer, str) and prediction.trace["verify"].calls >= 1


def test_hierarchy_plans_delegates_and_synthesizes(small):
    specialists = {
        "cards": Specialist(Stage("cards_expert", SpecialistAnswer), "card delivery, activation and PINs",
                            ["New cards arrive within 5 working days. Activate a card in the app under Cards."]),
        "transfers": Specialist(Stage("transfers_expert", SpecialistAnswer), "sending and receiving money",
                                ["Transfers inside the EU take one working day."]),
    }
    hierarchy = Hierarchy("desk", Stage("plan", Plan), specialists, Stage("synthesize", Synthesize), max_subtasks=2)
    hierarchy.set_models({"plan": small, "cards_expert": small, "transfers_expert": small, "synthesize": small})
    prediction = hierarchy(query="When will my new card arrive and how do I activate it?")
    assert isinstance(prediction.answer, str)
    trace = prediction.trace
    planned = [task["specialist"] for task in json.loads(prediction.context["desk.results"].content)]
    assert 1 <= len(planned) <= 2
    experts = [f"{name}_expert" for name in planned]
    assert [s.stage for s in trace.stages] == ["plan", *experts, "desk", "synthesize"]
    # The planner never saw the specialists' documents; each specialist saw its sub-task and its own documents.
    assert trace["plan"].received == ("input.query", "desk.specialists", "desk.constraints")
    for name in planned:
        assert trace[f"{name}_expert"].received == ("input.query", f"{name}-docs.context")


def test_hierarchy_plan_validation_policies():
    """Orchestration of invalid plans, with the planner's answers scripted."""
    from stagewise.signatures import SubTask

    bad = {"subtasks": [SubTask(specialist="astrology", task="x").model_dump()]}
    good = {"subtasks": [SubTask(specialist="cards", task="When does a card arrive?").model_dump()]}
    specialists = {"cards": Specialist(Stage("cards_expert", "query -> answer"), "cards")}

    def build(policy, answers):
        scripted = dspy.utils.DummyLM(answers, adapter=dspy.JSONAdapter())
        plan = Stage("plan", Plan, lm=scripted)
        h = Hierarchy("desk", plan, specialists, Stage("synthesize", "query, results -> answer"),
                      policy=policy)
        # A planner that ignores the schema can name anyone: drop the typed plan to test validation.
        plan.step.predictors()[0].signature = Plan
        h.set_models({"cards_expert": dspy.utils.DummyLM([{"answer": "in 5 days"}], adapter=dspy.JSONAdapter()),
                      "synthesize": dspy.utils.DummyLM([{"answer": "5 days"}], adapter=dspy.JSONAdapter())})
        return h

    with pytest.raises(PlanError, match=r"planner stage 'plan'.*unknown specialist"):
        build("error", [bad])(query="card?")
    prediction = build("replan", [bad, good])(query="card?")
    assert prediction.answer == "5 days"
    assert any("plan rejected" in note for s in prediction.trace.stages for note in s.notes)
    with pytest.raises(PlanError, match="the plan is empty"):
        build("error", [{"subtasks": []}])(query="card?")


# --- on the replay engine: a router and a cascade over recorded models ----------------------

def test_trained_router_over_recorded_models(routellm):
    strong_col, weak_col = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    train = range(300)
    labels = ["strong" if routellm.scores.at[i, strong_col] > routellm.scores.at[i, weak_col] else "weak"
              for i in train]
    classifier = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200, class_weight="balanced"))
    classifier.fit([routellm.prompts[i] for i in train], labels)
    router = Router("router", classifier, {
        "strong": Stage("strong", "prompt -> answer",
                        lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm)),
        "weak": Stage("weak", "prompt -> answer",
                      lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)),
    }, query="input.prompt")
    prompts = [routellm.prompts[row] for row in range(300, 320)]
    expected_routes = list(classifier.predict(prompts))
    expected_confidence = classifier.predict_proba(prompts).max(axis=1)
    assert set(expected_routes) == {"strong", "weak"}  # both routes are exercised
    routes = []
    for prompt, route, confidence in zip(prompts, expected_routes, expected_confidence):
        prediction = router(prompt=prompt)
        assert prediction.route == route and prediction.confidence == pytest.approx(confidence)
        column = strong_col if route == "strong" else weak_col
        assert prediction.answer == routellm.outcome(prompt, column).response
        # RouteLLM records no costs: the call is priced from the catalog, on the recorded texts' tokens.
        spec = router.routes[route].lm.spec
        outcome = routellm.outcome(prompt, column)
        assert prediction.trace[route].cost_usd == pytest.approx(spec.cost(
            count_tokens(outcome.prompt, spec.tokenizer).tokens, count_tokens(outcome.response, spec.tokenizer).tokens))
        assert [s.stage for s in prediction.trace.stages] == ["router", route]  # the other route never ran
        routes.append(prediction.route)
    assert routes == expected_routes


def test_use_classifier_swaps_the_llm_decision_for_a_trained_one_and_back(routellm, small):
    class Decide(dspy.Signature):
        """Does this math word problem need a strong model?"""

        prompt: str = dspy.InputField()
        routes: str = dspy.InputField()
        route: Literal["strong", "weak"] = dspy.OutputField()

    strong_col, weak_col = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    labels = ["strong" if routellm.scores.at[i, strong_col] > routellm.scores.at[i, weak_col] else "weak"
              for i in range(300)]
    classifier = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200, class_weight="balanced"))
    classifier.fit(routellm.prompts[:300], labels)
    router = Router("pick", Stage("decide", Decide), {
        "strong": Stage("strong", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm)),
        "weak": Stage("weak", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)),
    }, query="input.prompt")
    router.set_models({"decide": small})
    prompt = routellm.prompts[302]
    assert router.use_classifier(classifier) is router and router.stand_in == "decide"
    with track_usage() as ledger:
        trained = router(prompt=prompt)
    [route] = classifier.predict([prompt])
    assert trained.route == route and trained.confidence == pytest.approx(classifier.predict_proba([prompt]).max())
    assert trained.context["decide.route"].content == route  # under the stage's name: its metrics score it
    decision = trained.trace["decide"]
    assert decision.model is None and decision.cost_usd == 0 and "instead of the LLM stage" in decision.notes[0]
    assert [r.model for r in ledger.records] == [trained.trace[route].model]  # no LLM call for the decision

    assert router.use_classifier(None).stand_in is None  # the LLM stage decides again
    with track_usage() as ledger:
        llm = router(prompt=prompt)
    assert llm.trace["decide"].model == "smollm2-135m" and llm.trace["decide"].calls == 1
    assert llm.route == llm.context["decide.route"].content and llm.route in ("strong", "weak")
    assert [r.model for r in ledger.records] == ["smollm2-135m", llm.trace[llm.route].model]
    with pytest.raises(StageConfigError, match="needs predict"):
        router.use_classifier(object())
    with pytest.raises(StageConfigError, match="no decision stage to return to"):
        Router("fixed", classifier, dict(router.routes), query="input.prompt").use_classifier(None)


def test_cascade_over_recorded_models_with_a_trained_scorer(routellm):
    weak_col = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    train = range(400)
    texts = [f"{routellm.prompts[i]}\n{routellm.responses.at[i, weak_col]}" for i in train]
    correct = [int(routellm.scores.at[i, weak_col]) for i in train]
    scorer = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200)).fit(texts, correct)
    cascade = Cascade("cascade", [
        Stage("mixtral", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)),
        Stage("gpt4", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm)),
    ], scorer, threshold=0.8, query="input.prompt")
    tiers = []
    for row in range(400, 415):
        prompt = routellm.prompts[row]
        # The scorer reads the query and the cheap model's answer, joined by a blank line.
        score = scorer.predict_proba([f"{prompt}\n\n{routellm.responses.at[row, weak_col]}"])[0][1]
        tier, column = ("mixtral", weak_col) if score >= 0.8 else ("gpt4", "gpt-4-1106-preview")
        prediction = cascade(prompt=prompt)
        assert prediction.tier == tier
        assert prediction.scores == ([pytest.approx(score)] if tier == "mixtral" else [pytest.approx(score), None])
        assert prediction.answer == routellm.outcome(prompt, column).response
        assert prediction.trace["mixtral"].calls == 1
        assert ("gpt4" in {s.stage for s in prediction.trace.stages}) == (tier == "gpt4")
        tiers.append(tier)
    assert set(tiers) == {"mixtral", "gpt4"}  # both outcomes are exercised


# --- nesting, configuration ---------------------------------------------------------------

def test_programs_nest_a_route_can_be_a_chain_and_a_branch_a_cascade(routellm, tmp_path):
    def strong(name):
        return Stage(name, "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm))

    def weak(name):
        return Stage(name, "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm))

    class Always:
        def __init__(self, label):
            self.label = label

        def predict(self, texts):
            return [self.label] * len(texts)

        def predict_proba(self, texts):
            return [[0.9, 0.1]] * len(texts)  # "probably wrong": always escalate

    cascade_branch = Cascade("escalate", [weak("first"), strong("second")], Always("x"), query="input.prompt")
    fanout = FanOut("both", {"direct": strong("direct"), "cascade": cascade_branch}, MajorityVote("answer"))
    router = Router("top", Always("deep"), {"deep": Chain("deep", [fanout]), "shallow": weak("shallow")},
                    query="input.prompt")
    assert set(router.stages()) == {"first", "second", "direct", "shallow"}
    prompt = routellm.prompts[10]
    prediction = router(prompt=prompt)
    expected = routellm.outcome(prompt, "gpt-4-1106-preview").response
    assert prediction.route == "deep" and prediction.answer == expected and prediction.agreement == 1.0
    ran = [s.stage for s in prediction.trace.stages]
    assert {"top", "direct", "first", "second", "escalate", "both"} <= set(ran) and "shallow" not in ran

    # Models and budgets by stage name, from a file: no code change.
    config = tmp_path / "pipeline.toml"
    config.write_text('[models]\nshallow = "smollm2-135m"\n\n[budgets]\ndirect = 300\n')
    router.set_models(config).set_budgets(config)
    assert router.stages()["shallow"].lm.model == "local/smollm2-135m"
    assert router.stages()["direct"].budget == 300
    with pytest.raises(StageConfigError, match="no \\[models\\] table"):
        router.set_models(_write(tmp_path / "empty.toml", ""))


def _write(path, text):
    path.write_text(text)
    return path


def test_budgets_are_reallocated_from_observed_usage(small):
    chain = Chain("c", [Stage("short", "query -> answer"), Stage("long", SpecialistAnswer,
                                                                   inputs={"context": "input.context"})])
    chain.set_models({"short": small, "long": small})
    traces = [chain(query="Hi?", context="The bank opens at nine. " * 30).trace for _ in range(2)]
    budgets = chain.rebudget(2000, traces)
    assert sum(budgets.values()) == 2000 and budgets["long"] > budgets["short"]
    assert chain.stages()["long"].budget == budgets["long"]


def test_over_budget_context_is_summarized_by_a_cheap_model(small):
    text = ("The branch at Market Street opens at nine and closes at five. It has two cash machines. "
            "Card replacements are handled at the desk on the first floor. ") * 8
    stage = Stage("answer", SpecialistAnswer, inputs={"context": "input.context"}, budget=120, summarizer=small,
                  lm=small)
    prediction = stage(query="When does the branch open?", context=text)
    entry = prediction.trace["answer"]
    assert any("model summary" in note for note in entry.notes) and entry.tokens_saved > 0
    assert entry.calls == 2  # the summary (under "answer:compress") and the answer itself
    summary = prediction.context["answer~budget.input.context"]
    assert summary.lineage == ("input.context",) and summary.tokens <= 120
