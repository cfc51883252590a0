"""Metrics by name, the recorded-correctness metric for replayed models, and an LLM judge.

A metric scores one prediction against one gold value: `metric(predicted, gold) -> float`
in [0, 1]. [`metric_by_name`][stagewise.metrics.metric_by_name] resolves the names a config uses. Label metrics
(`label_accuracy`) also have a corpus form, [`macro_f1`][stagewise.metrics.macro_f1], reported beside the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import dspy
from sklearn.metrics import f1_score

from stagewise.errors import ConfigError, DataError
from stagewise.metrics.text import exact_match, normalize, normalized_match, numeric_match, token_f1

Metric = Callable[[str, str], float]


def label_accuracy(predicted: str, gold: str) -> float:
    """A predicted label equals the gold label (case and spacing do not matter)."""
    return float(normalize(predicted) == normalize(gold))


def macro_f1(predicted: list[str], gold: list[str]) -> float:
    """Macro-averaged F1 over the gold labels (scikit-learn), on normalized labels."""
    if len(predicted) != len(gold):
        raise DataError(f"macro_f1: {len(predicted)} predictions for {len(gold)} gold labels")
    if not gold:
        return float("nan")
    return float(f1_score([normalize(g) for g in gold], [normalize(p) for p in predicted],
                          average="macro", labels=sorted({normalize(g) for g in gold}), zero_division=0))


METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "normalized_match": normalized_match,
    "token_f1": token_f1,
    "numeric_match": numeric_match,
    "label_accuracy": label_accuracy,
}


def metric_by_name(name: str) -> Metric:
    """The metric a config names (a key of `METRICS`); a ConfigError lists the names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}, recorded_correctness, "
                         "llm_judge") from None


class JudgeAnswer(dspy.Signature):
    """Grade the answer against the reference answer for the question. Score 1 when it says
    the same thing as the reference (wording may differ), 0 when it is wrong or missing the
    point, in between when it is partly right."""  # noqa: D205, D209 (the model's instruction, as written)

    question: str = dspy.InputField()
    reference: str = dspy.InputField()
    answer: str = dspy.InputField()
    score: float = dspy.OutputField(desc="between 0 and 1")


class LLMJudge:
    """A metric scored by a model: `LLMJudge(lm)(predicted, gold, question=...)`.

    The judge's calls are accounted like any other (stage `judge`); its score is clipped
    to [0, 1].

    Args:
        lm: the judging model.
    """

    def __init__(self, lm: dspy.BaseLM):
        self.lm = lm
        self.grade = dspy.Predict(JudgeAnswer)
        self.grade.lm = lm

    def __call__(self, predicted: str, gold: str, *, question: str = "") -> float:
        """The judge's grade of `predicted` against `gold` (for `question`), clipped to [0, 1]."""
        from stagewise.models.usage import stage_scope

        with stage_scope("judge"), dspy.context(adapter=dspy.JSONAdapter()):
            score = self.grade(question=question, reference=str(gold), answer=str(predicted)).score
        return min(1.0, max(0.0, float(score)))


class RecordedCorrectness:
    """The correctness an outcome table recorded for the model that answered.

    For a replayed stage, the recorded score of (prompt, model) is the ground truth the
    field's references use (RouterBench, RouteLLM). `metric(prompt, model)` takes the
    prompt and the catalog name of the replayed model; as an end-to-end metric,
    `score_example(example, prediction)` reads the prompt from the example and the model
    from the last stage of the prediction's trace that called a model.

    Args:
        table (OutcomeTable): the outcome table that recorded the scores.
        prompt: the example's input field that holds the table's prompt.
    """

    def __init__(self, table, *, prompt: str = "prompt"):
        self.table, self.prompt = table, prompt

    def score_example(self, example, prediction) -> float:
        """The recorded score of the example's prompt for the model of the trace's last calling stage.

        Raises:
            ConfigError: No stage of the request called a model.
        """
        answered = [s for s in prediction.trace.stages if s.calls and s.model]
        if not answered:
            raise ConfigError("recorded_correctness: no stage of this request called a model")
        return self(example[self.prompt], answered[-1].model)

    def __call__(self, prompt: str, model: str) -> float:
        """The recorded score of `prompt` for the replayed catalog model `model`.

        Raises:
            ConfigError: `model` is not a replayed model.
        """
        from stagewise.models.catalog import default_catalog

        spec = default_catalog().resolve(model)
        if spec.engine != "replay":
            raise ConfigError(f"recorded_correctness: model {model!r} is not a replayed model; "
                             "use a metric that compares with a gold label")
        return self.table.outcome(prompt, spec.model).correct
