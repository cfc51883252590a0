"""Granularity transforms on real text: budgets respected, order kept, lineage and notes set."""

import csv
import math
import re

import pytest

from stagewise.context.format import parse, render
from stagewise.context.granularity import (
    compress_extractive,
    compress_with_model,
    cut_at_word,
    expand,
    filter_sections,
    is_reduced,
    merge,
    split_sentences,
    truncate,
)
from stagewise.context.record import Context, MissingSectionError, Section
from tests.conftest import DATA


def words(text: str) -> int:
    return len(text.split())


def quarter_chars(text: str) -> int:
    """A counter that is not additive over sentences (joining changes the count)."""
    return math.ceil(len(text) / 4)


TEXT = """\
A replacement card is sent by post as soon as the old card is reported lost or stolen. \
The new card usually arrives within five working days in the United Kingdom. \
Cards sent abroad can take up to three weeks to arrive. \
You can track the delivery of your card in the app under the card section.

If your card has not arrived after the expected delivery time, contact support from the app. \
Support can cancel the card in transit and send a new one free of charge. \
The cafeteria on the third floor serves tomato soup on Tuesdays. \
A card that arrives damaged can be replaced the same way as a lost card.

Once the card arrives, activate it in the app before the first payment. \
Activation links the new card to your account and disables the old card for good. \
Your PIN stays the same after the card is replaced."""

OFF_TOPIC = "The cafeteria on the third floor serves tomato soup on Tuesdays."


def passages(content: str = TEXT) -> Section:
    return Section("passages", "retrieved", "retrieve", content, words(content))


def assert_sentence_subsequence(original: str, compressed: str) -> None:
    """Every sentence of ``compressed`` is a sentence of ``original``, in the original order."""
    originals = iter(s for _, s in split_sentences(original))
    for sentence in (s for _, s in split_sentences(compressed)):
        assert any(sentence == candidate for candidate in originals), \
            f"{sentence!r} is not a later sentence of the original"


def banking77_rows(n: int) -> str:
    path = DATA / "banking77" / "train.csv"
    with path.open(newline="") as f:
        rows = [row["text"].strip() for _, row in zip(range(n), csv.DictReader(f))]
    return "\n".join(rows)


# --- sentences and word cuts ------------------------------------------------------

def test_split_sentences_keeps_line_breaks_as_separators():
    text = 'First one. "Quoted second!" Third?\nNew line without stop\n\n  Indented paragraph… end'
    assert split_sentences(text) == [
        ("", "First one."), (" ", '"Quoted second!"'), (" ", "Third?"),
        ("\n", "New line without stop"), ("\n", "Indented paragraph…"), (" ", "end"),
    ]


def test_cut_at_word_is_the_longest_fitting_prefix_at_a_word_end():
    text = "alpha  beta\tgamma\ndelta epsilon"
    assert cut_at_word(text, 3, words) == "alpha  beta\tgamma"
    assert cut_at_word(text, 0, words) == ""
    assert cut_at_word(text, 99, words) == text
    assert cut_at_word("incomprehensibilities", 2, quarter_chars) == ""


# --- compress_extractive ----------------------------------------------------------

@pytest.mark.parametrize("count", [words, quarter_chars])
@pytest.mark.parametrize("max_tokens", [5, 30, 60, 100])
def test_compress_extractive_respects_the_budget_and_keeps_order(count, max_tokens):
    original = passages()
    compressed = compress_extractive(original, max_tokens, count)
    assert count(compressed.content) <= max_tokens
    assert compressed.tokens == count(compressed.content)
    assert compressed.content
    if max_tokens >= 30:  # whole sentences fit (at 5 tokens the best sentence is cut instead)
        assert_sentence_subsequence(TEXT, compressed.content)
    else:
        assert any(s.startswith(compressed.content) for _, s in split_sentences(TEXT))


def test_compress_extractive_names_lineage_and_note():
    original = passages()
    compressed = compress_extractive(original, 60, words)
    assert compressed.name == "passages~compressed"
    assert compressed.id == "retrieve.passages~compressed"
    assert compressed.kind == "summary"
    assert compressed.source == "retrieve"
    assert compressed.lineage == ("retrieve.passages",)
    assert compressed.note == f"extractive: {words(TEXT)} -> {words(compressed.content)} tokens"
    assert is_reduced(compressed) and not is_reduced(original)
    assert original.content == TEXT  # inputs are never changed


def test_compress_extractive_drops_the_off_topic_sentence_first():
    budget = words(TEXT) - words(OFF_TOPIC)
    compressed = compress_extractive(passages(), budget, words)
    assert OFF_TOPIC not in compressed.content
    assert len(split_sentences(compressed.content)) == len(split_sentences(TEXT)) - 1
    # The paragraph breaks of the original survive between kept sentences.
    assert "\nOnce the card arrives" in compressed.content


def test_compress_extractive_cuts_one_oversized_sentence_at_a_word_boundary():
    sentence = ("Activation links the new card to your account and disables the old card for good "
                "so that nobody who finds the old card can use it")
    compressed = compress_extractive(passages(sentence), 7, words)
    assert compressed.content == "Activation links the new card to your"
    assert compressed.note == f"extractive: {words(sentence)} -> 7 tokens"


def test_compress_extractive_returns_a_section_within_budget_unchanged():
    original = passages()
    assert compress_extractive(original, words(TEXT), words) is original


def test_compress_extractive_to_zero_and_negative_budgets():
    assert compress_extractive(passages(), 0, words).content == ""
    with pytest.raises(ValueError, match=r"retrieve\.passages.*-1 tokens"):
        compress_extractive(passages(), -1, words)


def test_compress_extractive_on_banking77_rows():
    text = banking77_rows(200)
    original = passages(text)
    compressed = compress_extractive(original, 100, words)
    assert 80 <= words(compressed.content) <= 100  # short rows: the budget is nearly filled
    assert_sentence_subsequence(text, compressed.content)
    # Rows were separated by line breaks and still are; sentences within a row by spaces.
    rows = text.split("\n")
    assert compressed.content.count("\n") >= 5
    assert all(any(line.split(". ")[0] in row for row in rows) for line in compressed.content.split("\n"))


def test_compress_extractive_without_content_words_keeps_text_order():
    text = "It is. It was. So it is."
    compressed = compress_extractive(passages(text), 5, words)
    assert compressed.content == "It is. It was."


# --- compress_with_model ------------------------------------------------------------

def leading_sentences(text: str, max_tokens: int) -> str:
    """A summarizer standing in for an LLM stage: the opening sentences within budget."""
    out = []
    for _, sentence in split_sentences(text):
        if words(" ".join([*out, sentence])) > max_tokens:
            break
        out.append(sentence)
    return " ".join(out)


def test_compress_with_model_uses_the_summary():
    calls = []

    def summarize(text, max_tokens):
        calls.append((text, max_tokens))
        return "  " + leading_sentences(text, max_tokens) + "\n"

    summarized = compress_with_model(passages(), 40, summarize, words)
    assert calls == [(TEXT, 40)]
    assert summarized.content == leading_sentences(TEXT, 40)
    assert summarized.name == "passages~summarized"
    assert summarized.kind == "summary"
    assert summarized.lineage == ("retrieve.passages",)
    assert summarized.note == f"model summary: {words(TEXT)} -> {words(summarized.content)} tokens"
    assert summarized.tokens == words(summarized.content) <= 40


def test_compress_with_model_falls_back_to_extractive_when_over_budget():
    def verbose(text, max_tokens):  # ignores its budget, as small models do
        return leading_sentences(text, 2 * max_tokens)

    summarized = compress_with_model(passages(), 30, verbose, words)
    first = words(leading_sentences(TEXT, 60))
    assert words(summarized.content) <= 30
    assert summarized.note == (f"model summary: {words(TEXT)} -> {first} tokens; "
                               f"extractive: {first} -> {words(summarized.content)} tokens")
    assert summarized.lineage == ("retrieve.passages",)


def test_compress_with_model_skips_the_model_within_budget_and_refuses_empty_summaries():
    def never(text, max_tokens):
        raise AssertionError("the model must not be called")

    original = passages()
    assert compress_with_model(original, words(TEXT), never, words) is original
    with pytest.raises(ValueError, match=r"empty summary for section 'retrieve\.passages'"):
        compress_with_model(original, 10, lambda text, n: "  \n", words)


# --- truncate and expand --------------------------------------------------------------

def test_truncate_keeps_kind_and_notes_the_cut():
    cut = truncate(passages(), 12, words)
    assert cut.name == "passages~truncated"
    assert cut.kind == "retrieved"
    assert TEXT.startswith(cut.content) and words(cut.content) == 12
    assert cut.note == f"truncated: {words(TEXT)} -> 12 tokens"
    assert cut.lineage == ("retrieve.passages",)


def test_expand_returns_the_original_through_a_chain_of_reductions():
    context = Context()
    original = context.add(passages())
    compressed = context.add(compress_extractive(original, 60, words))
    cut = context.add(truncate(compressed, 20, words))
    assert cut.id == "retrieve.passages~compressed~truncated"
    assert expand(cut, context) is original
    assert expand(compressed, context) is original
    assert expand(original, context) is original


def test_expand_leaves_a_stage_written_summary_alone():
    context = Context()
    source = context.add(passages())
    summary = context.add(Section("summary", "summary", "summarize", "short", 1, lineage=(source.id,)))
    assert expand(summary, context) is summary


def test_expand_names_a_missing_original():
    compressed = compress_extractive(passages(), 20, words)
    with pytest.raises(LookupError, match=r"'retrieve\.passages~compressed'.*'retrieve\.passages'"):
        expand(compressed, Context())


# --- filter and merge ----------------------------------------------------------------

def filled_context() -> Context:
    context = Context()
    context.add(Section("query", "query", "input", "Where is my card?", 4))
    context.add(passages())
    context.add(Section("entities", "stage_output", "analyze", "card, delivery", 2))
    context.add(Section("scores", "stage_output", "retrieve", "0.9 0.4", 2))
    return context


def test_filter_sections_keeps_only_what_the_stage_needs_in_its_order():
    context = filled_context()
    chosen = filter_sections(context, ["retrieve.*", "input.query"], stage="answer")
    assert [s.id for s in chosen] == ["retrieve.passages", "retrieve.scores", "input.query"]
    assert filter_sections(context, (), stage="answer") == []


def test_filter_sections_names_the_stage_when_a_need_is_missing():
    with pytest.raises(MissingSectionError, match=r"stage 'answer' needs section 'rerank\.top'"):
        filter_sections(filled_context(), ["input.query", "rerank.top"], stage="answer")


@pytest.mark.parametrize("fmt", ["xml", "markdown", "plain"])
def test_merge_renders_parallel_outputs_into_one_block(fmt):
    branches = [Section("entities", "stage_output", "analyze", "card, delivery", 2),
                Section("sentiment", "stage_output", "classify", "worried: card late", 3)]
    merged = merge(branches, name="analysis", source="join", count=words, fmt=fmt)
    assert merged.id == "join.analysis"
    assert merged.kind == "stage_output"
    assert merged.lineage == ("analyze.entities", "classify.sentiment")
    assert merged.content == render(branches, fmt)
    assert merged.tokens == words(merged.content)
    assert parse(merged.content, fmt) == [(b.id, b.kind, b.content) for b in branches]
    assert merged.note == f"merged 2 sections ({fmt})"


def test_merge_defaults_to_markdown_and_refuses_nothing():
    branch = Section("entities", "stage_output", "analyze", "card", 1)
    assert merge([branch], name="m", source="join", count=words).content.startswith("### analyze.entities")
    with pytest.raises(ValueError, match=r"join\.m: no sections"):
        merge([], name="m", source="join", count=words)


def test_reduced_names_are_valid_labels_in_every_format():
    compressed = compress_extractive(passages(), 20, words)
    for fmt in ("xml", "markdown", "plain"):
        assert parse(render([compressed], fmt), fmt) == [(compressed.id, "summary", compressed.content)]
    assert re.match(r"retrieve\.passages~compressed \(summary\): ", render([compressed], "plain"))
