"""The pipelines of ``benchmarks/joint_vs_alternatives.py``: plain ``dspy.Module`` programs, their data and metrics.

Each pipeline is an ordinary DSPy program (its predictors are its stages, named by attribute
path), a DSPy metric ``metric(example, prediction, trace=None)``, labeled examples, and the
candidate models: per stage for the searches that choose a model per stage, and the models
that can serve every stage for "one model everywhere".

- ``homework`` (recorded models): each request holds a science question (RouterBench's
  ARC-Challenge), a math word problem (RouteLLM's GSM8K) and a second science question; three
  predictors answer them with real API models' recorded answers, scored by the recorded
  correctness of the model that answered. Recorded answers do not depend on the prompt: demos
  and optimizers cannot change them.
- ``math_intake`` (local models, SmolLM2-135M and Gemma 3 270M): for a GSM8K word problem,
  ``question`` copies the question it asks, ``numbers`` lists its numbers, and ``answer`` reads
  the final answer off the last line of a reference solution (GPT-4's recorded one): three
  extractions whose labels come from the text, scored by token F1 and exact match. Demos teach
  these formats. (A Banking77 triage of 2-way decisions was measured first and dropped: SmolLM2
  answered "cards" to every message, with no demos and with 4, so its scores could not move.)
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dspy
import pandas as pd

from stagewise.data import OutcomeTable
from stagewise.metrics.text import _NUMBER as NUMBER
from stagewise.metrics.text import normalized_match, token_f1
from stagewise.models.catalog import default_catalog

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@dataclass
class BenchmarkPipeline:
    """One pipeline of the benchmark: its program, metric, data and candidate models."""

    name: str
    title: str
    build: Callable[[], dspy.Module]
    metric: Callable  # a DSPy metric: metric(example, prediction, trace=None) -> float
    examples: list[dspy.Example]
    stage_models: dict[str, list[str]]  # per stage: the candidates of the per-stage searches
    everywhere: list[str]  # the models that can answer every stage ("one model everywhere")
    lm_options: dict = field(default_factory=dict)  # JointOptimizer's lm_options ({"*": {...}})
    prompt_dependent: bool = True  # False: answers are recorded, demos and prompts change nothing
    notes: str = ""

    def lm_kwargs(self) -> dict:
        """Keyword arguments for ``get_lm`` (the options every model shares)."""
        return dict(self.lm_options.get("*", {}))


def answered_by(predictor: dspy.Predict) -> str:
    """The catalog name of the model a predictor calls: its own, else DSPy's configured one."""
    lm = predictor.lm or dspy.settings.lm
    spec = getattr(lm, "spec", None)
    return spec.name if spec is not None else str(getattr(lm, "model", lm))


# --- homework: three recorded tasks ------------------------------------------------------------

ARC_FILES = (DATA / "routerbench" / "arc_challenge_train.csv", DATA / "routerbench" / "arc_challenge_test.csv")
GSM8K = DATA / "routellm" / "gsm8k_responses.csv"
GPT4 = "gpt-4-1106-preview"
MIXTRAL_ARC = "mistralai/mixtral-8x7b-chat"  # recorded/mixtral-8x7b-chat
MIXTRAL_GSM8K = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # recorded/mixtral-8x7b-instruct
MAX_TOKENS = 32  # local models' output cap in math_intake


class AnswerQuestion(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Homework(dspy.Module):
    """Three questions per request: science, math, science. Each predictor answers one."""

    def __init__(self):
        super().__init__()
        self.science = dspy.Predict(AnswerQuestion)
        self.math = dspy.Predict(AnswerQuestion)
        self.science_2 = dspy.Predict(AnswerQuestion)

    def forward(self, science_question: str, math_question: str, science_question_2: str):
        science = self.science(question=science_question).answer
        math = self.math(question=math_question).answer
        science_2 = self.science_2(question=science_question_2).answer
        return dspy.Prediction(science=science, math=math, science_2=science_2,
                               answered_by={"science": answered_by(self.science), "math": answered_by(self.math),
                                            "science_2": answered_by(self.science_2)})


HOMEWORK_FIELDS = {"science": "science_question", "math": "math_question", "science_2": "science_question_2"}


class RecordedHomeworkScore:
    """The mean, over a request's three questions, of the recorded correctness of the model that answered."""

    def __init__(self, table: OutcomeTable):
        self.table = table
        self.catalog = default_catalog()

    def __call__(self, example, prediction, trace=None) -> float:
        scores = []
        for stage, field_name in HOMEWORK_FIELDS.items():
            column = self.catalog.resolve(prediction.answered_by[stage]).model
            scores.append(self.table.outcome(example[field_name], column).correct)
        return sum(scores) / len(scores)


def homework_table() -> OutcomeTable:
    """ARC-Challenge (both RouterBench files, 11 models, recorded costs) and GSM8K (RouteLLM, two
    models, priced from the catalog) in one outcome table.

    Only prompts that every model of their table answered are kept (a model's empty cell would
    score as a failure of the pipeline, not of the model). RouteLLM's Mixtral-8x7B-Instruct answers
    go in the column of RouterBench's ``mixtral-8x7b-chat``: the catalog prices both recordings as
    the same model (Together's Mixtral-8x7B-Instruct-v0.1), so Mixtral can answer every stage.
    """
    prompts, responses, scores, costs = [], [], [], []
    seen = set()
    arc_models = None
    for path in ARC_FILES:
        table = OutcomeTable.load(path)
        arc_models = table.models
        complete = table.responses.notna().all(axis=1) & table.scores.notna().all(axis=1)
        for row in complete[complete].index:
            key = " ".join(table.prompts[row].split())
            if key in seen:
                continue
            seen.add(key)
            prompts.append(table.prompts[row])
            responses.append(table.responses.loc[row].to_dict())
            scores.append(table.scores.loc[row].to_dict())
            costs.append(table.costs.loc[row].to_dict())
    gsm = OutcomeTable.load(GSM8K)
    renamed = {MIXTRAL_GSM8K: MIXTRAL_ARC, GPT4: GPT4}
    for row in range(len(gsm)):
        if gsm.responses.loc[row].isna().any() or gsm.scores.loc[row].isna().any():
            continue
        key = " ".join(gsm.prompts[row].split())
        if key in seen:
            continue
        seen.add(key)
        prompts.append(gsm.prompts[row])
        responses.append({renamed[m]: gsm.responses.at[row, m] for m in gsm.models})
        scores.append({renamed[m]: gsm.scores.at[row, m] for m in gsm.models})
        costs.append({})  # no recorded cost: priced from the catalog (tokens of the recorded prompt and answer)
    digest = hashlib.sha256()
    for path in (*ARC_FILES, GSM8K):
        digest.update(OutcomeTable.load(path).fingerprint.encode())
    frame = lambda rows: pd.DataFrame(rows, columns=arc_models)  # noqa: E731
    return OutcomeTable("homework: ARC-Challenge + GSM8K", "routerbench", digest.hexdigest(), list(arc_models),
                        prompts, frame(responses).astype(object), frame(scores).astype(float),
                        frame(costs).astype(float))


def homework(n: int, seed: int = 0) -> BenchmarkPipeline:
    """``n`` requests, each two ARC-Challenge questions and one GSM8K problem drawn without replacement."""
    table = homework_table()
    gsm_prompts = {" ".join(p.split()) for p in OutcomeTable.load(GSM8K).prompts}
    arc = [p for p in table.prompts if " ".join(p.split()) not in gsm_prompts]
    math = [p for p in table.prompts if " ".join(p.split()) in gsm_prompts]
    rng = random.Random(seed)
    rng.shuffle(arc)
    rng.shuffle(math)
    if n > min(len(arc) // 2, len(math)):
        raise ValueError(f"homework: at most {min(len(arc) // 2, len(math))} requests, asked for {n}")
    examples = [dspy.Example(science_question=arc[2 * i], math_question=math[i], science_question_2=arc[2 * i + 1])
                .with_inputs("science_question", "math_question", "science_question_2") for i in range(n)]
    science = ["recorded/gpt-4-1106-preview", "recorded/gpt-3.5-turbo-1106", "recorded/claude-instant-v1",
               "recorded/claude-v1", "recorded/claude-v2", "recorded/llama-2-70b-chat", "recorded/mixtral-8x7b-chat",
               "recorded/mistral-7b-chat", "recorded/yi-34b-chat", "recorded/wizardlm-13b", "recorded/code-llama-34b"]
    both = ["recorded/gpt-4-1106-preview", "recorded/mixtral-8x7b-chat"]
    return BenchmarkPipeline(
        name="homework", title="homework (recorded API models: ARC-Challenge, GSM8K, ARC-Challenge)",
        build=Homework, metric=RecordedHomeworkScore(table), examples=examples,
        stage_models={"science": science, "math": both, "science_2": science}, everywhere=both,
        lm_options={"*": {"replay_table": table}}, prompt_dependent=False,
        notes="recorded answers do not depend on prompts or demos: (b) = (a) and (c) = (d) are expected in quality "
              "and cost; only GPT-4 and Mixtral were recorded on both tasks, so 'one model everywhere' has two models")


# --- math intake: three extractions on the local models --------------------------------------

class CopyQuestion(dspy.Signature):
    """Copy the question this math word problem asks, word for word."""

    problem: str = dspy.InputField()
    question: str = dspy.OutputField()


class ListNumbers(dspy.Signature):
    """List every number in the problem, in order, separated by commas."""

    problem: str = dspy.InputField()
    numbers: str = dspy.OutputField()


class FinalAnswer(dspy.Signature):
    """The last line of a worked solution: give the final answer it states, the number only."""

    solution_end: str = dspy.InputField()
    answer: str = dspy.OutputField()


class MathIntake(dspy.Module):
    """What a math tutor reads first: the question asked, the quantities given, and the reference
    solution's final answer. Three predictors, each its own extraction."""

    def __init__(self):
        super().__init__()
        self.question = dspy.Predict(CopyQuestion)
        self.numbers = dspy.Predict(ListNumbers)
        self.answer = dspy.Predict(FinalAnswer)

    def forward(self, problem: str, solution_end: str):
        return dspy.Prediction(question=self.question(problem=problem).question,
                               numbers=self.numbers(problem=problem).numbers,
                               answer=self.answer(solution_end=solution_end).answer)


def intake_score(example, prediction, trace=None) -> float:
    """The mean of the three extractions' scores: token F1 for the question and the numbers, a
    normalized exact match for the answer (the number alone: "$25,000" matches "25,000")."""
    return (token_f1(str(prediction.question), example.question) + token_f1(str(prediction.numbers), example.numbers)
            + normalized_match(str(prediction.answer), example.answer)) / 3


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def math_intake(n: int, seed: int = 0) -> BenchmarkPipeline:
    """``n`` short GSM8K problems (under 200 characters) and the last line of GPT-4's recorded solution.

    Labels come from the text itself: the question is the problem's last sentence, the numbers are
    every number in the problem (stagewise's number pattern), the answer is the last number of the
    solution's last line.
    """
    table = OutcomeTable.load(GSM8K)
    rows = []
    for i, problem in enumerate(table.prompts):
        solution = table.responses.at[i, GPT4]
        if len(problem) >= 200 or not isinstance(solution, str):
            continue
        lines = [line.strip() for line in solution.strip().splitlines() if line.strip()]
        numbers = NUMBER.findall(problem)
        answers = NUMBER.findall(lines[-1]) if lines else []
        if not numbers or not answers or len(lines[-1]) > 160:
            continue
        rows.append(dspy.Example(problem=problem, solution_end=lines[-1], question=_sentences(problem)[-1],
                                 numbers=", ".join(numbers), answer=answers[-1])
                    .with_inputs("problem", "solution_end"))
    random.Random(seed).shuffle(rows)
    if n > len(rows):
        raise ValueError(f"math_intake: at most {len(rows)} problems, asked for {n}")
    local = ["smollm2-135m", "gemma3-270m"]
    return BenchmarkPipeline(
        name="math_intake", title="math intake (local models: copy the question, list the numbers, read the answer)",
        build=MathIntake, metric=intake_score, examples=rows[:n],
        stage_models={"question": local, "numbers": local, "answer": local}, everywhere=local,
        lm_options={"*": {"max_tokens": MAX_TOKENS}},
        notes=f"local models capped at {MAX_TOKENS} output tokens (the longest label, a question sentence, fits)")
