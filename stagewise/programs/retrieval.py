"""A retrieval stage backed by a real local index (TF-IDF, scikit-learn) over a document collection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from stagewise.context.record import Section
from stagewise.errors import ConfigError
from stagewise.programs.run import Run, StageRun, stepping
from stagewise.programs.stage import Pipeline, StageConfigError, default_count


class DocumentIndex:
    """TF-IDF index (word uni- and bigrams, sublinear tf, English stop words) over a list of documents.

    Args:
        documents: the documents to index.
        ids: an id per document (default: its position, `"0"`, `"1"`, ...).

    Raises:
        ConfigError: `documents` is empty.
    """

    def __init__(self, documents: Sequence[str], *, ids: Sequence[str] | None = None):
        if not documents:
            raise ConfigError("a document index needs at least one document")
        self.documents = list(documents)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.documents))]
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
        self.matrix = self.vectorizer.fit_transform(self.documents)

    def search(self, query: str, k: int = 3) -> list[tuple[str, str, float]]:
        """The `k` best (id, document, score) for `query`, best first."""
        scores = (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()
        best = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[i], self.documents[i], float(scores[i])) for i in best]


class Retrieve(Pipeline):
    """Adds the `k` best passages for the query section as `retrieved` sections.

    The sections are `<name>.passage_1` ... `<name>.passage_k`, each derived from the query.
    The outputs are `{"passages": [...]}`.

    Args:
        name: the stage's name (its sections, trace entry and step key).
        index: the index to search.
        query: the section whose content is the search query.
        k: how many passages to add.

    Raises:
        StageConfigError: `k` is less than 1.
    """

    def __init__(self, name: str, index: DocumentIndex, *, query: str = "input.query", k: int = 3):
        super().__init__()
        if k < 1:
            raise StageConfigError(f"retrieval stage {name!r}: k must be at least 1, got {k}")
        self.name, self.index, self.query, self.k = name, index, query, k

    def execute(self, run: Run) -> dict[str, Any]:
        """Search the index for the query section and add the passages to `run`'s context."""
        [query] = run.context.select([self.query], stage=self.name)
        with stepping(run, self, "retrieve", [query.id]) as step:
            if step.restored is not None:  # resumed or replayed: the stored passages (maybe edited), restored
                step.outputs, step.decision = step.restored, {"restored": True}
                return step.outputs
            passages = []
            for rank, (doc_id, text, score) in enumerate(self.index.search(query.content, self.k), 1):
                step.added.append(run.context.add(Section(
                    name=f"passage_{rank}", kind="retrieved", source=self.name, content=text,
                    tokens=default_count(text), lineage=(query.id,), note=f"document {doc_id}, score {score:.3f}")))
                step.decision.setdefault("documents", []).append({"id": doc_id, "score": round(score, 4)})
                passages.append(text)
            run.log(StageRun(self.name, None, [query.id], [s.id for s in step.added]))
            step.outputs = {"passages": passages}
        return step.outputs
