"""Per-example answer metrics: exact, normalized, token F1 and numeric match.

Each takes `(predicted, gold)` strings and returns a score in [0, 1]. Normalization follows
SQuAD's evaluation script: lower case, no punctuation, no articles (a, an, the), single spaces.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from stagewise.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# The last number in a text: GSM8K answers end in "#### 18"; "$1,200.50" is 1200.5.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(predicted: str, gold: str) -> float:
    """1.0 when the two strings are equal apart from surrounding whitespace."""
    return float(str(predicted).strip() == str(gold).strip())


def normalized_match(predicted: str, gold: str) -> float:
    """1.0 when the two strings are equal after [`normalize`][stagewise.metrics.normalize]."""
    return float(normalize(predicted) == normalize(gold))


def token_f1(predicted: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalization (SQuAD's F1)."""
    pred_tokens, gold_tokens = normalize(predicted).split(), normalize(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def last_number(text: str) -> float | None:
    """The last number in `text` (`"$1,200.50"` is 1200.5), or None."""
    matches = _NUMBER.findall(str(text))
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(predicted: str, gold: str, *, tolerance: float = 1e-6) -> float:
    """1.0 when the last number in `predicted` equals the last number in `gold`."""
    want, got = last_number(gold), last_number(predicted)
    if want is None:
        raise DataError(f"numeric_match: the gold answer {str(gold)[:60]!r} contains no number")
    return float(got is not None and abs(got - want) <= tolerance * max(1.0, abs(want)))
