"""Metrics, and stage-level evaluation of programs (replay engine and the local model)."""

from typing import Literal

import dspy
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from stagewise.data import OutcomeTable
from stagewise.metrics import (
    EndToEnd,
    EvaluationError,
    LLMJudge,
    RecordedCorrectness,
    StageMetric,
    evaluate,
    exact_match,
    label_accuracy,
    macro_f1,
    metric_by_name,
    normalized_match,
    numeric_match,
    token_f1,
)
from stagewise.metrics.report import PASS
from stagewise.models.lm import get_lm
from stagewise.programs import Router, Stage

from .conftest import ROUTELLM


@pytest.mark.parametrize("metric, predicted, gold, expected", [
    (exact_match, "Paris", "Paris", 1.0),
    (exact_match, "paris", "Paris", 0.0),
    (normalized_match, "The  Paris!", "paris", 1.0),
    (token_f1, "the cat sat", "a cat sat down", 2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3)),
    (token_f1, "", "", 1.0),
    (token_f1, "dog", "cat", 0.0),
    (numeric_match, "so she makes $18 a day", "#### 18", 1.0),
    (numeric_match, "It takes 2.5 bolts", "3", 0.0),
    (numeric_match, "1,200.50 dollars", "1200.5", 1.0),
    (numeric_match, "no idea", "42", 0.0),
    (label_accuracy, "Card_Arrival ", "card_arrival", 1.0),
])
def test_answer_metrics(metric, predicted, gold, expected):
    assert metric(predicted, gold) == pytest.approx(expected)


def test_metric_errors_and_corpus_f1():
    with pytest.raises(ValueError, match="contains no number"):
        numeric_match("12", "unknown")
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metric_by_name("bleu")
    # Two classes: a is 2/3 right on recall, b perfect on precision.
    assert macro_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.fixture(scope="module")
def routellm():
    return OutcomeTable.load(ROUTELLM)


@pytest.fixture(scope="module")
def routed(routellm):
    """A trained router over two recorded models, and labeled examples with the best route."""
    strong, weak = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"

    def best(i):
        return "strong" if routellm.scores.at[i, strong] > routellm.scores.at[i, weak] else "weak"

    classifier = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=200, class_weight="balanced"))
    classifier.fit([routellm.prompts[i] for i in range(300)], [best(i) for i in range(300)])

    class Decide(dspy.Signature):
        """Route the prompt."""

        prompt: str = dspy.InputField()
        route: Literal["strong", "weak"] = dspy.OutputField()

    router = Router("router", classifier, {
        "strong": Stage("strong", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm)),
        "weak": Stage("weak", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)),
    }, query="input.prompt")
    examples = [dspy.Example(prompt=routellm.prompts[i], route=best(i)).with_inputs("prompt") for i in range(300, 340)]
    return router, examples


def test_end_to_end_recorded_correctness_with_cost_per_request(routed, routellm):
    router, examples = routed
    report = evaluate(router, examples, end_to_end=EndToEnd("answer", metric=RecordedCorrectness(routellm)),
                      progress=False)
    rows = report.rows
    assert len(rows) == 40 and rows["error"].isna().all()
    # Recompute by hand: the recorded score of the model each request was routed to.
    expected = []
    for example, (_, row) in zip(examples, rows.iterrows()):
        answer = row["end_to_end:predicted"]
        column = next(c for c in routellm.models if routellm.outcome(example.prompt, c).response == answer)
        expected.append(routellm.outcome(example.prompt, column).correct)
    assert report.quality == pytest.approx(sum(expected) / len(expected))
    assert report.cost_per_request > 0
    summary = report.summary()
    assert summary["cost_per_1k_requests_usd"] == pytest.approx(1000 * summary["cost_per_request_usd"])


def test_evaluation_setup_errors(routed):
    router, examples = routed
    with pytest.raises(EvaluationError, match="no stage 'planner'"):
        evaluate(router, examples, stage_metrics=[StageMetric("planner", "route", "route")], progress=False)
    with pytest.raises(EvaluationError,
                       match=r"stage 'strong' has no output field 'route' \(its outputs: \['answer'\]\)"):
        evaluate(router, examples, stage_metrics=[StageMetric("strong", "route", "route")], progress=False)
    with pytest.raises(EvaluationError, match="no label field 'gold'"):
        evaluate(router, examples, stage_metrics=[StageMetric("strong", "answer", "gold")], progress=False)
    with pytest.raises(EvaluationError, match="split is empty"):
        evaluate(router, [], progress=False)


def test_failed_requests_stay_in_the_report(routellm):
    stage = Stage("answer", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm))
    examples = [dspy.Example(prompt=routellm.prompts[0], answer="x").with_inputs("prompt"),
                dspy.Example(prompt="a prompt nobody recorded", answer="y").with_inputs("prompt")]
    report = evaluate(stage, examples, stage_metrics=[StageMetric("answer", "answer", "answer")], progress=False)
    assert len(report.rows) == 2
    assert report.rows["error"].isna().tolist() == [True, False]
    assert "prompt not in outcome table" in report.rows["error"].iloc[1]
    assert report.rows["answer.answer"].iloc[1] == 0.0



def test_a_printed_report_table_is_the_table_as_text(routellm, capsys):
    """`print(report.table())`, as a notebook or script does, shows the table, not a rich object's repr."""
    stage = Stage("answer", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=routellm))
    examples = [dspy.Example(prompt=routellm.prompts[0], answer="x").with_inputs("prompt")]
    report = evaluate(stage, examples, stage_metrics=[StageMetric("answer", "answer", "answer")], progress=False)
    print(report.table())
    printed = capsys.readouterr().out
    assert "evaluation on 1 examples (0 errors)" in printed and "cost per 1,000 requests" in printed, printed
    assert "object at 0x" not in printed

class Intent(dspy.Signature):
    """Which intent does the banking customer's message express?"""

    message: str = dspy.InputField()
    intent: Literal["card_arrival", "lost_or_stolen_card", "exchange_rate"] = dspy.OutputField()


class Reply(dspy.Signature):
    """Answer the customer in one short sentence."""

    message: str = dspy.InputField()
    intent: str = dspy.InputField()
    reply: str = dspy.OutputField()


def test_stage_level_report_on_the_local_model_shows_where_quality_is_lost():
    from stagewise.programs import Chain

    chain = Chain("support", [Stage("classify", Intent), Stage("reply", Reply, inputs={"intent": "classify.intent"})])
    chain.set_models({"classify": get_lm("smollm2-135m", cache=False, max_tokens=64),
                      "reply": get_lm("smollm2-135m", cache=False, max_tokens=64)})
    examples = [
        dspy.Example(message="My card still has not arrived after two weeks", intent="card_arrival",
                     reply="It should arrive soon.").with_inputs("message"),
        dspy.Example(message="Someone stole my card yesterday", intent="lost_or_stolen_card",
                     reply="We have blocked your card.").with_inputs("message"),
        dspy.Example(message="What exchange rate do you use for dollars?", intent="exchange_rate",
                     reply="We use the daily rate.").with_inputs("message"),
    ]
    with dspy.context(adapter=dspy.JSONAdapter()):
        report = evaluate(chain, examples,
                          stage_metrics=[StageMetric("classify", "intent", "intent", "label_accuracy")],
                          end_to_end=EndToEnd("reply", "reply", "token_f1"), progress=False)
    summary, rows = report.summary(), report.rows
    # Recomputed by hand from what each request produced.
    intents = [r["classify.intent:predicted"] for _, r in rows.iterrows()]
    replies = [r["end_to_end:predicted"] for _, r in rows.iterrows()]
    stage_scores = [float(str(p).strip().lower() == e.intent) for p, e in zip(intents, examples)]
    end_scores = [token_f1(str(p), e.reply) for p, e in zip(replies, examples)]
    assert rows["classify.intent"].tolist() == stage_scores and rows["end_to_end"].tolist() == pytest.approx(end_scores)
    assert summary["stages"] == {"classify.intent": pytest.approx(sum(stage_scores) / 3)}
    assert summary["end_to_end"] == pytest.approx(sum(end_scores) / 3)
    assert summary["macro_f1"] == {"classify.intent": pytest.approx(macro_f1([str(p) for p in intents],
                                                                             [e.intent for e in examples]))}
    # Each end-to-end failure is blamed on its first failing stage, else on no stage.
    failed = [(s, e) for s, e in zip(stage_scores, end_scores) if e < PASS]
    blamed = {"classify.intent": sum(1 for s, _ in failed if s < PASS)}
    blamed["(no stage failed)"] = len(failed) - blamed["classify.intent"]
    assert summary["loss_by_stage"] == {k: pytest.approx(v / len(failed) if failed else 0.0) for k, v in blamed.items()}
    assert summary["cost_per_request_usd"] == pytest.approx(rows["cost_usd"].mean()) and rows["cost_usd"].min() > 0
    assert rows["input_tokens"].min() > 0


def test_llm_judge_scores_with_a_real_local_model():
    """The judge's score is the number the model wrote (clipped), from a prompt with all three texts,
    accounted under stage ``judge``. SmolLM2 is too small to judge well: its verdict is not checked."""
    import json

    from stagewise.models.usage import track_usage

    lm = get_lm("smollm2-135m", cache=False, max_tokens=96)
    with track_usage() as ledger:
        score = LLMJudge(lm)("Paris, France", "Paris", question="What is the capital of France?")
    [call] = lm.history
    prompt = call["messages"][-1]["content"]
    assert "What is the capital of France?" in prompt and "Paris, France" in prompt
    assert score == min(1.0, max(0.0, float(json.loads(call["outputs"][0])["score"])))
    assert [(r.stage, r.model) for r in ledger.records] == [("judge", "smollm2-135m")]


@pytest.mark.parametrize("written, expected", [(0.75, 0.75), (1.7, 1.0), (-0.3, 0.0)])
def test_llm_judge_clips_the_models_score(written, expected):
    scripted = dspy.utils.DummyLM([{"score": written}], adapter=dspy.JSONAdapter())
    assert LLMJudge(scripted)("Berlin", "Paris", question="What is the capital of France?") == expected
