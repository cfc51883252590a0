"""Bounded work per input (issue 14, item 2): the answer checks run in time linear in their text, every
feature extractor reads at most MAX_TEXT_CHARS characters of a query or response, and arithmetic() survives
any nesting, so one adversarial query or model answer cannot stall a server. The equation finder must find
exactly what the cubic regex it replaced found."""

import math
import re
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewise.errors import DataError
from stagewise.routing import AnswerChecks, CascadeScorer, LabelRouter, TextFeatures, load_outcomes
from stagewise.routing.features import (
    _FINAL,
    MAX_TEXT_CHARS,
    EmbeddingsUnavailableError,
    SentenceEmbeddings,
    answer_checks,
    arithmetic,
    find_equations,
)
from tests.conftest import ROUTELLM

# The patterns find_equations and _FINAL replaced: the reference on short texts (on long ones they backtrack
# cubically and quadratically: "1+" * 400 took 0.5 s, "1+" * 1600 30 s).
OLD_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
OLD_EQUATION = re.compile(rf"((?:{OLD_NUMBER}|\()[\d\s.,+\-*/x×÷()]*[+\-*/x×÷][\d\s.,+\-*/x×÷()]*?)"
                          rf"\s*=\s*\$?\s*({OLD_NUMBER}(?:\s*/\s*{OLD_NUMBER})?)")
OLD_FINAL = re.compile(rf"####\s*\$?\s*({OLD_NUMBER})|answer is:?\s*\$?\s*({OLD_NUMBER})|\\boxed\{{\s*({OLD_NUMBER})")

# Pieces that answers are made of, and that the old patterns backtracked on.
PIECES = ["1", "12", "3.5", "1,000", "+", "-", "*", "/", "x", "×", "÷", "(", ")", " ", "  ", "\n", "=", " = ", "$",
          ".", ",", "####", "answer is", "answer is: ", "\\boxed{", "<<", ">>", "1+", "=2", "a", "but "]
pieces = st.sampled_from(PIECES)
short_texts = st.lists(pieces, max_size=20).map("".join)
# A prefix, one piece sequence repeated up to 5,000 times, a suffix: "1+1+1...", "#### " + spaces, "(((...".
repeated_texts = st.builds(lambda head, unit, n, tail: head + unit * n + tail,
                           short_texts, st.lists(pieces, min_size=1, max_size=4).map("".join),
                           st.integers(1, 5_000), short_texts)
bounded = settings(max_examples=150, deadline=timedelta(seconds=2), database=None)


@settings(max_examples=2_000, deadline=None, database=None)
@given(short_texts)
def test_equations_and_final_answers_are_those_the_old_patterns_found(text):
    assert find_equations(text) == OLD_EQUATION.findall(text)
    assert _FINAL.findall(text) == OLD_FINAL.findall(text)


@bounded
@given(repeated_texts)
def test_answer_checks_finish_in_bounded_time(text):
    values = answer_checks(text)
    assert len(values) == 8 and all(math.isfinite(v) for v in values)
    assert values[1] <= values[0]  # wrong statements are among the checked ones


@bounded
@given(st.integers(0, 200_000), st.sampled_from(["(", "-", "1+", "2*(", "--("]))
def test_arithmetic_survives_any_nesting(depth, opening):
    closing = ")" * opening.count("(")
    value = arithmetic(opening * depth + "1" + closing * depth)
    assert value is None or math.isfinite(value)


def test_arithmetic_of_long_and_deep_expressions():
    assert arithmetic("(" * 100_000 + "1" + ")" * 100_000) is None  # deeper than Python's parser goes
    assert arithmetic("-" * 100_000 + "1") is None and arithmetic("+".join(["1"] * 5_000)) is None  # too long
    assert arithmetic("+".join(["1"] * 500)) == 500  # 999 characters, 499 levels deep: evaluated
    assert arithmetic("-" * 999 + "1") == -1 and arithmetic("(" * 150 + "2*3" + ")" * 150) == 6
    assert arithmetic("1\x00+1") is None


# (text, its answer checks: checked, wrong, any wrong, no final, several finals, fractional, hedges, length/1000)
LONG_SUM = "1+" * 499 + "1"  # 999 characters
ADVERSARIAL = [
    ("1+" * 5_000, [0, 0, 0, 1, 0, 0, 0, 10.0]),
    ("1+" * 5_000 + "=2", [0, 0, 0, 1, 0, 0, 0, 10.002]),  # its left side is too long to evaluate
    (LONG_SUM + " = 500 #### 500", [1, 0, 0, 0, 0, 0, 0, 1.014]),
    (LONG_SUM + " = 501 #### 501", [1, 1, 1, 0, 0, 0, 0, 1.014]),
    ("1+1=2 " * 2_000, [2_000, 0, 0, 1, 0, 0, 0, 12.0]),
    ("2 + 2 = 5. " * 3_000, [MAX_TEXT_CHARS // 11, MAX_TEXT_CHARS // 11, 1, 1, 0, 0, 0, 33.0]),  # read up to the cap
    ("(" * 100_000 + "1" + ")" * 100_000, [0, 0, 0, 1, 0, 0, 0, 200.001]),
    ("-" * 100_000 + "1", [0, 0, 0, 1, 0, 0, 0, 100.001]),
    ("#### " + " " * 10_000 + "$ 7", [0, 0, 0, 0, 0, 0, 0, 10.008]),
    ("answer is " * 1_000 + "3.5", [0, 0, 0, 0, 0, 1, 0, 10.003]),
    ("<<" + "1+" * 5_000 + "=2", [0, 0, 0, 1, 0, 0, 0, 10.004]),
    ("1=" * 5_000, [0, 0, 0, 1, 0, 0, 0, 10.0]),
    ("#### " + "9" * 400, [0, 0, 0, 0, 0, 0, 0, 0.405]),  # a whole number, too large for a float
    ("but " * 6_000, [0, 0, 0, 1, 0, 0, MAX_TEXT_CHARS // 4, 24.0]),
]
TEXTS = [text for text, _ in ADVERSARIAL]


@pytest.mark.parametrize(("text", "expected"), ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_answer_checks_of_adversarial_texts(text, expected):
    assert answer_checks(text) == pytest.approx(expected)


@pytest.fixture(scope="module")
def gsm8k_pairs():
    outcomes = load_outcomes(ROUTELLM).subset(range(300))
    weak = outcomes.column(outcomes.by_cost()[0])
    return [(p, r[weak]) for p, r in zip(outcomes.prompts, outcomes.responses)], outcomes.scores[:, weak]


def test_every_extractor_reads_adversarial_texts(gsm8k_pairs):
    pairs, correct = gsm8k_pairs
    checks = AnswerChecks().fit([r for _, r in pairs])
    expected = (np.array([e for _, e in ADVERSARIAL]) - checks.mean_) / checks.scale_
    np.testing.assert_allclose(checks.transform(TEXTS), expected)

    adversarial_pairs = [(text, text) for text in TEXTS]
    features = TextFeatures("word+char+checks").fit(pairs)
    matrix = features.transform(adversarial_pairs)
    assert matrix.shape == (len(TEXTS), features.transform(pairs[:1]).shape[1]) and np.isfinite(matrix.data).all()
    # the TF-IDF parts read each query and response up to the cap
    cut = [(q[:MAX_TEXT_CHARS], r[:MAX_TEXT_CHARS]) for q, r in adversarial_pairs]
    words = TextFeatures("word+char").fit(pairs)
    assert (words.transform(adversarial_pairs) != words.transform(cut)).nnz == 0

    scorer = CascadeScorer().fit(pairs, correct)
    for X in (adversarial_pairs, [(pairs[0][0], text) for text in TEXTS]):
        probabilities = scorer.predict_proba(X)
        assert probabilities.shape == (len(TEXTS), 2) and np.allclose(probabilities.sum(axis=1), 1.0)
        assert set(scorer.predict(X)) <= {0, 1}

    # a label router with checks reads raw queries with them
    labels = ["sum" if "+" in q or "total" in q else "other" for q, _ in pairs]
    router = LabelRouter(features="word+char+checks").fit([q for q, _ in pairs], labels)
    assert set(router.predict(TEXTS)) <= {"sum", "other"}


def test_sentence_embeddings_read_up_to_the_cap():
    try:
        encoder = SentenceEmbeddings().fit(TEXTS[:1])
    except EmbeddingsUnavailableError:
        pytest.skip("the embeddings extra is not installed")
    vectors = encoder.transform([TEXTS[0], "1+" * 5_000 + "x" * 40_000])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_bad_input_raises_data_errors():
    features = TextFeatures("word+checks").fit(["2 + 2 = 4", "name a prime"])
    for bad in ("one string", None, 5):
        with pytest.raises(DataError, match="list of texts or of"):
            features.transform(bad)
    with pytest.raises(DataError, match=r"row 1: expected a \(query, response\) pair"):
        features.transform([("q", "r"), ("only a query",)])
    scorer = CascadeScorer(features="checks").fit([("q", "1 + 1 = 2"), ("q", "1 + 1 = 3")], [1, 0])
    with pytest.raises(DataError, match="row 0"):
        scorer.predict_proba(["not a pair"])
    with pytest.raises(DataError, match="not one string"):
        scorer.predict("not pairs")
    with pytest.raises(DataError, match="answer checks read a string, not NoneType"):
        answer_checks(None)
    with pytest.raises(DataError, match="arithmetic reads a string, not int"):
        arithmetic(5)
