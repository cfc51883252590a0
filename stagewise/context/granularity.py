"""Granularity transforms: compress a section, truncate it, expand it back, filter, merge.

Token counting is passed in (`count: Callable[[str], int]`, usually the receiving
model's tokenizer) so the context layer never depends on the models package. Every
transform returns a new [`Section`][stagewise.context.Section] and leaves its inputs untouched; the record is
append-only, so the full text stays available to [`expand`][stagewise.context.expand].

Naming convention of reduced sections: a shortened version of section `<name>` is
named `<name>~<how>` with the same source, where `<how>` is `compressed`
(extractive), `summarized` (a model summary) or `truncated` (a cut prefix). Its
lineage is the one section it was made from and its note says what was done
(`"extractive: 812 -> 240 tokens"`). Reducing a reduced section appends another
suffix (`passages~compressed~truncated`), so ids never collide along a chain; the
same transform applied twice to the same section at different budgets gives the same
id, so a caller keeping both must rename one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np

from stagewise.context.format import ContextFormat, render
from stagewise.context.record import Context, Section

Count = Callable[[str], int]

COMPRESSED, SUMMARIZED, TRUNCATED = "compressed", "summarized", "truncated"
REDUCTIONS = (COMPRESSED, SUMMARIZED, TRUNCATED)

# A sentence ends at . ! ? or … (optionally followed by a closing quote or bracket) and
# whitespace, or at a line break. A heuristic: "e.g. this" splits too, which only costs
# a slightly finer grain.
_BOUNDARY = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))[ \t]+|[ \t]*\n\s*")


def is_reduced(section: Section) -> bool:
    """Whether `section` is a compressed, summarized or truncated version of another."""
    return "~" in section.name and section.name.rsplit("~", 1)[1] in REDUCTIONS and len(section.lineage) == 1


def compress_extractive(section: Section, max_tokens: int, count: Count) -> Section:
    """The section cut to at most `max_tokens` by keeping its most central sentences.

    Sentences are scored by TF-IDF centrality (mean cosine similarity to the other
    sentences: the ones that say what the rest says) and taken best first while the
    text stays within budget, then emitted in their original order. If no sentence fits
    on its own, the best one is cut at a word boundary. Returns a new section
    `<name>~compressed` of kind `"summary"`; a section already within budget is
    returned unchanged.
    """
    _check_budget(section, max_tokens)
    before = count(section.content)
    if before <= max_tokens:
        return section
    content = _extract(section.content, max_tokens, count)
    after = count(content)
    return section.derive(name=f"{section.name}~{COMPRESSED}", kind="summary", content=content,
                          tokens=after, note=f"extractive: {before} -> {after} tokens")


def compress_with_model(section: Section, max_tokens: int, summarize: Callable[[str, int], str],
                        count: Count) -> Section:
    """The section summarized by a model to at most `max_tokens`.

    `summarize(text, max_tokens)` is the caller's LLM stage. A summary still over
    budget is compressed extractively. Returns a new section `<name>~summarized` of
    kind `"summary"` (note `"model summary: a -> b tokens"`, plus the extractive
    step if one was needed); a section already within budget is returned unchanged,
    without calling the model. An empty summary of a non-empty text is an error.
    """
    _check_budget(section, max_tokens)
    before = count(section.content)
    if before <= max_tokens:
        return section
    summary = summarize(section.content, max_tokens)
    if not isinstance(summary, str):
        raise TypeError(f"summarizer returned {type(summary).__name__} for section {section.id!r}, expected str")
    summary = summary.strip()
    if not summary:
        raise ValueError(f"summarizer returned an empty summary for section {section.id!r} ({before} tokens)")
    after = count(summary)
    note = f"model summary: {before} -> {after} tokens"
    if after > max_tokens:
        content = _extract(summary, max_tokens, count)
        final = count(content)
        note += f"; extractive: {after} -> {final} tokens"
        summary, after = content, final
    return section.derive(name=f"{section.name}~{SUMMARIZED}", kind="summary", content=summary,
                          tokens=after, note=note)


def truncate(section: Section, max_tokens: int, count: Count) -> Section:
    """The section cut at a word boundary to at most `max_tokens` (kind unchanged).

    Returns a new section `<name>~truncated` noted `"truncated: a -> b tokens"`; a
    section already within budget is returned unchanged.
    """
    _check_budget(section, max_tokens)
    before = count(section.content)
    if before <= max_tokens:
        return section
    content = cut_at_word(section.content, max_tokens, count)
    after = count(content)
    return section.derive(name=f"{section.name}~{TRUNCATED}", content=content, tokens=after,
                          note=f"truncated: {before} -> {after} tokens")


def expand(section: Section, context: Context) -> Section:
    """The full section `section` was reduced from (itself if it is not a reduced version).

    Follows the lineage of compressed, summarized and truncated versions back to the
    first ancestor that is none of these. That ancestor must be in `context`.
    """
    current = section
    while is_reduced(current):
        (parent,) = current.lineage
        if parent not in context:
            raise LookupError(f"cannot expand section {section.id!r}: the section it was reduced from, "
                              f"{parent!r}, is not in the context")
        current = context[parent]
    return current


def filter_sections(context: Context, needs: Iterable[str], *, stage: str) -> list[Section]:
    """Only the sections `stage` declares it needs (ids or `source.*` patterns), in order.

    A need that matches nothing raises MissingSectionError naming the stage.
    """
    return context.select(list(needs), stage=stage)


def merge(sections: list[Section], *, name: str, source: str, count: Count, fmt: ContextFormat = "markdown") -> Section:
    """Parallel outputs as one `stage_output` section whose body renders them in `fmt`.

    The lineage is every input id, so the merged block traces back to each branch.
    """
    if not sections:
        raise ValueError(f"merge into {source}.{name}: no sections to merge")
    content = render(sections, fmt)
    return Section(name=name, kind="stage_output", source=source, content=content, tokens=count(content),
                   lineage=tuple(s.id for s in sections), note=f"merged {len(sections)} sections ({fmt})")


def cut_at_word(text: str, max_tokens: int, count: Count) -> str:
    """The longest prefix of `text` ending at a word end whose count is <= `max_tokens`.

    Empty if not even the first word fits. Binary search over word ends, so a long text
    costs O(log words) counts.
    """
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    lo, hi = 0, len(ends)  # invariant: a prefix of `lo` words fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:ends[mid - 1]]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:ends[lo - 1]] if lo else ""


def split_sentences(text: str) -> list[tuple[str, str]]:
    r"""The sentences of `text`, as `(separator_before, sentence)` pairs.

    The separator is `"\n"` if a line break preceded the sentence in `text`, else `" "` (`""` for
    the first).
    """
    out: list[tuple[str, str]] = []
    start, separator = 0, ""
    for boundary in [*_BOUNDARY.finditer(text), None]:
        end = boundary.start() if boundary else len(text)
        sentence = text[start:end].strip()
        if sentence:
            out.append(("" if not out else separator, sentence))
            separator = " "
        if boundary:
            start = boundary.end()
            if "\n" in boundary.group():
                separator = "\n"
    return out


def _check_budget(section: Section, max_tokens: int) -> None:
    if max_tokens < 0:
        raise ValueError(f"cannot reduce section {section.id!r} to {max_tokens} tokens: the budget is negative")


def _extract(text: str, max_tokens: int, count: Count) -> str:
    """The best sentences of `text` in original order within `max_tokens`."""
    sentences = split_sentences(text)
    if not sentences:
        return ""
    scores = _centrality([s for _, s in sentences])
    # Best first; ties go to the earlier sentence (openings tend to carry the topic).
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    total = 0
    for i in ranked:
        tokens = count(sentences[i][1])
        if total + tokens <= max_tokens:
            kept.append(i)
            total += tokens
    # Per-sentence counts approximate the joined text's count (a tokenizer may merge
    # across the separators): check the real text, dropping the weakest until it fits.
    while kept and count(_join(sentences, kept)) > max_tokens:
        kept.pop()
    if not kept:
        return cut_at_word(sentences[ranked[0]][1], max_tokens, count)
    return _join(sentences, kept)


def _join(sentences: list[tuple[str, str]], kept: list[int]) -> str:
    parts = []
    for i in sorted(kept):
        if parts:
            parts.append(sentences[i][0] or " ")
        parts.append(sentences[i][1])
    return "".join(parts)


def _centrality(sentences: list[str]) -> list[float]:
    """Each sentence's mean TF-IDF cosine similarity to the others."""
    if len(sentences) == 1:
        return [1.0]
    # Imported here: scikit-learn takes a second to import and only compression needs it.
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectors = TfidfVectorizer(stop_words="english").fit_transform(sentences)
    except ValueError:  # no sentence has a content word: nothing to rank by, keep text order
        return [0.0] * len(sentences)
    # Rows are L2-normalized, so sum_j cos(i, j) = v_i . sum_j v_j: O(non-zeros), no n x n matrix.
    column_sums = np.asarray(vectors.sum(axis=0)).ravel()
    totals = np.asarray(vectors @ column_sums).ravel()
    self_similarity = np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel()
    return ((totals - self_similarity) / (len(sentences) - 1)).tolist()
