"""Token budgets: a stage's budget, fitting sections into it, re-splitting a pipeline total."""

import math

import pytest

from stagewise.context.budget import BudgetError, FitResult, fit, reallocate, stage_budget
from stagewise.context.granularity import compress_extractive
from stagewise.context.record import Section
from tests.test_context_granularity import TEXT, quarter_chars, words

QUERY = Section("query", "query", "input", "Where is my new card and when will it arrive?", 10)
NOTES = Section("notes", "stage_output", "analyze",
                "The customer reported the card lost. A replacement was ordered. It ships by post.", 14)


def passages(content: str = TEXT) -> Section:
    return Section("passages", "retrieved", "retrieve", content, words(content))


def total(sections, count=words) -> int:
    return sum(count(s.content) for s in sections)


# --- stage_budget -------------------------------------------------------------------

def test_stage_budget_is_the_smaller_of_configured_and_what_the_window_leaves():
    assert stage_budget("answer", configured=None, context_window=8192, max_output=1024, fixed_tokens=500) == 6668
    assert stage_budget("answer", configured=2000, context_window=8192, max_output=1024, fixed_tokens=500) == 2000
    assert stage_budget("answer", configured=9000, context_window=8192, max_output=1024, fixed_tokens=500) == 6668


def test_stage_budget_names_the_stage_when_the_fixed_part_does_not_leave_room():
    with pytest.raises(BudgetError) as caught:
        stage_budget("summarize", configured=None, context_window=2048, max_output=512, fixed_tokens=1600)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.stage == "summarize" and error.budget == -64
    assert str(error) == ("stage 'summarize', budget -64 tokens: budget smaller than the fixed part of the prompt: "
                          "context window 2048 - max output 512 - fixed prompt 1600 leaves -64 tokens for context")


def test_stage_budget_refuses_a_configured_budget_of_nothing():
    with pytest.raises(BudgetError, match=r"stage 'answer', budget 0 tokens: the configured budget of 0"):
        stage_budget("answer", configured=0, context_window=8192, max_output=1024, fixed_tokens=500)


@pytest.mark.parametrize("field, kwargs", [
    ("context_window", dict(context_window=0, max_output=10, fixed_tokens=10)),
    ("max_output", dict(context_window=100, max_output=-1, fixed_tokens=10)),
    ("fixed_tokens", dict(context_window=100, max_output=10, fixed_tokens=-5)),
])
def test_stage_budget_refuses_nonsense_limits(field, kwargs):
    with pytest.raises(ValueError, match=rf"stage 'answer': {field}"):
        stage_budget("answer", configured=None, **kwargs)


# --- fit --------------------------------------------------------------------------------

def test_fit_leaves_sections_that_fit_unchanged():
    sections = [QUERY, passages(), NOTES]
    result = fit(sections, total(sections), words, stage="answer")
    assert isinstance(result, FitResult)
    assert all(a is b for a, b in zip(result.sections, sections))
    assert result.notes == []
    assert result.tokens_before == result.tokens_after == total(sections)


def test_fit_compresses_the_largest_section_first_and_keeps_order():
    sections = [QUERY, passages(), NOTES]
    budget = total(sections) - 40  # the passages alone can absorb the excess
    result = fit(sections, budget, words, stage="answer")
    query, compressed, notes = result.sections
    assert query is QUERY and notes is NOTES
    assert compressed.id == "retrieve.passages~compressed"
    assert compressed.lineage == ("retrieve.passages",)
    assert result.tokens_before == total(sections)
    assert result.tokens_after == total(result.sections) <= budget
    assert result.notes == [f"retrieve.passages: {compressed.note}"]
    assert compressed.note.startswith(f"extractive: {words(TEXT)} -> ")


def test_fit_compresses_several_sections_to_a_common_level():
    long_notes = Section("notes", "stage_output", "analyze", " ".join([NOTES.content] * 5), 70)
    sections = [QUERY, passages(), long_notes]
    budget = 60
    result = fit(sections, budget, words, stage="answer")
    assert result.sections[0] is QUERY
    assert [s.name for s in result.sections[1:]] == ["passages~compressed", "notes~compressed"]
    assert result.tokens_after <= budget
    assert [n.split(":")[0] for n in result.notes] == ["retrieve.passages", "analyze.notes"]


@pytest.mark.parametrize("budget", [80, 40, 20])
def test_fit_with_a_non_additive_counter_still_fits(budget):
    sections = [QUERY, passages(), NOTES]
    result = fit(sections, budget, quarter_chars, stage="answer")
    assert result.sections[0] is QUERY
    assert result.tokens_after == total(result.sections, quarter_chars) <= budget


def test_fit_truncates_at_a_word_boundary_when_compression_falls_short():
    def first_half(section, max_tokens):  # a compressor that misses its target
        kept = " ".join(section.content.split()[: words(section.content) // 2])
        return section.derive(name=f"{section.name}~compressed", kind="summary", content=kept,
                              tokens=words(kept), note=f"halved: {words(section.content)} -> {words(kept)} tokens")

    sections = [QUERY, passages()]
    budget = 30
    result = fit(sections, budget, words, stage="answer", compress=first_half)
    query, cut = result.sections
    half = words(TEXT) // 2
    assert query is QUERY
    assert result.tokens_after == budget
    assert cut.name == "passages~compressed"  # the intermediate is never seen: no ~truncated chain
    assert cut.lineage == ("retrieve.passages",)
    assert TEXT.replace("\n\n", " ").startswith(cut.content.replace("\n\n", " "))
    assert cut.note == f"halved: {words(TEXT)} -> {half} tokens; truncated: {half} -> 20 tokens"
    assert result.notes == [f"retrieve.passages: halved: {words(TEXT)} -> {half} tokens",
                            f"retrieve.passages: truncated: {half} -> 20 tokens"]


def test_fit_truncates_an_input_section_when_the_compressor_does_nothing():
    sections = [QUERY, passages()]
    result = fit(sections, 25, words, stage="answer", compress=lambda section, max_tokens: section)
    cut = result.sections[1]
    assert cut.name == "passages~truncated" and cut.kind == "retrieved"
    assert result.notes == [f"retrieve.passages: truncated: {words(TEXT)} -> 15 tokens"]
    assert result.tokens_after == 25


def test_fit_names_the_stage_when_protected_sections_alone_do_not_fit():
    with pytest.raises(BudgetError) as caught:
        fit([QUERY, passages()], 5, words, stage="answer")
    assert caught.value.stage == "answer"
    assert str(caught.value) == ("stage 'answer', budget 5 tokens: the protected sections alone need "
                                 f"{words(QUERY.content)} tokens: input.query ({words(QUERY.content)} tokens)")


def test_fit_protects_by_id_as_well_as_kind():
    sections = [QUERY, passages(), NOTES]
    budget = total(sections) - 10
    result = fit(sections, budget, words, stage="answer", protected=("query", "retrieve.passages"))
    assert result.sections[1] is sections[1]
    assert result.sections[2].name == "notes~compressed"
    assert result.tokens_after <= budget


def test_fit_with_the_default_compressor_matches_compress_extractive():
    sections = [QUERY, passages()]
    budget = words(QUERY.content) + 50
    result = fit(sections, budget, words, stage="answer")
    assert result.sections[1] == compress_extractive(sections[1], 50, words)


def test_fit_refuses_a_negative_budget():
    with pytest.raises(BudgetError, match=r"stage 'answer', budget -1 tokens"):
        fit([passages()], -1, words, stage="answer")


# --- reallocate --------------------------------------------------------------------------

def test_reallocate_splits_in_proportion_to_usage():
    assert reallocate(1000, {"retrieve": 100.0, "answer": 300.0}) == {"retrieve": 250, "answer": 750}


def test_reallocate_lifts_small_stages_to_the_floor_and_resplits_the_rest():
    shares = reallocate(1000, {"route": 1.0, "retrieve": 500.0, "answer": 1500.0}, floor=64)
    assert shares["route"] == 64
    assert shares == {"route": 64, "retrieve": 234, "answer": 702}
    assert sum(shares.values()) == 1000


@pytest.mark.parametrize("observed", [
    {"a": 1.0, "b": 1.0, "c": 1.0},
    {"a": 0.0, "b": 0.0},
    {"a": 3.3, "b": 0.0, "c": 7.7, "d": 123.4},
    {"a": 1e-9, "b": 1e9},
])
@pytest.mark.parametrize("total_tokens, floor", [(100, 0), (1000, 64), (257, 64), (10_000, 10)])
def test_reallocate_respects_floor_and_total(observed, total_tokens, floor):
    if total_tokens < floor * len(observed):
        with pytest.raises(ValueError):
            reallocate(total_tokens, observed, floor=floor)
        return
    shares = reallocate(total_tokens, observed, floor=floor)
    assert list(shares) == list(observed)
    assert all(share >= floor for share in shares.values())
    assert sum(shares.values()) == total_tokens


def test_reallocate_rounds_to_the_largest_remainders():
    assert reallocate(100, {"a": 1.0, "b": 1.0, "c": 1.0}, floor=0) == {"a": 34, "b": 33, "c": 33}


def test_reallocate_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match=r"total of 100 tokens cannot give each of 2 stages the floor of 64"):
        reallocate(100, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"stage 'b': observed usage"):
        reallocate(1000, {"a": 1.0, "b": -2.0})
    with pytest.raises(ValueError, match=r"stage 'a': observed usage"):
        reallocate(1000, {"a": math.nan})
    assert reallocate(0, {}) == {}
