"""Token budgets: how much context a stage may receive, fitting sections into it, re-splitting.

A stage's budget covers the content of its context sections only. The rest of the
prompt (instructions, demos, field names, and each format's few tokens of framing per
section) is the caller's `fixed_tokens`; the model's reply is `max_output`. Nothing
is ever cut silently: every compression or truncation [`fit`][stagewise.context.fit] does is a note on
the section and in `FitResult.notes`, and what cannot be made to fit is a
a [`TokenBudgetError`][stagewise.context.TokenBudgetError] naming the stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from stagewise.context.granularity import Count, compress_extractive, truncate
from stagewise.context.record import Section
from stagewise.errors import BudgetError, ConfigError


class TokenBudgetError(BudgetError, ValueError):
    """A stage's context cannot be made to fit its token budget."""

    def __init__(self, stage: str, budget: int, problem: str):
        self.stage, self.budget = stage, budget
        super().__init__(f"stage {stage!r}, budget {budget} tokens: {problem}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class FitResult:
    """The sections as they fit the budget (input order), what was done, totals before and after."""

    sections: list[Section]
    notes: list[str]
    tokens_before: int
    tokens_after: int


def stage_budget(stage: str, *, configured: int | None, context_window: int, max_output: int,
                 fixed_tokens: int) -> int:
    """Tokens available to `stage`'s context sections.

    `min(configured, context_window - max_output - fixed_tokens)`, where no configured
    budget means the whole window. A result <= 0 is a TokenBudgetError naming the stage.
    """
    if context_window <= 0:
        raise ConfigError(f"stage {stage!r}: context_window must be positive, got {context_window}")
    for field_name, value in (("max_output", max_output), ("fixed_tokens", fixed_tokens)):
        if value < 0:
            raise ConfigError(f"stage {stage!r}: {field_name} must not be negative, got {value}")
    room = context_window - max_output - fixed_tokens
    budget = min(context_window if configured is None else configured, room)
    if room <= 0:
        raise TokenBudgetError(stage, budget, (
            f"budget smaller than the fixed part of the prompt: context window {context_window} "
            f"- max output {max_output} - fixed prompt {fixed_tokens} leaves {room} tokens for context"))
    if budget <= 0:
        raise TokenBudgetError(stage, budget,
                               f"the configured budget of {configured} tokens leaves no room for context")
    return budget


def fit(sections: Sequence[Section], budget: int, count: Count, *, stage: str,
        compress: Callable[[Section, int], Section] | None = None,
        protected: Sequence[str] = ("query",)) -> FitResult:
    """`sections` made to fit `budget` tokens (counted with `count`) for `stage`.

    If they fit, they are returned unchanged. Otherwise the largest non-protected
    sections are compressed first (`compress(section, max_tokens)`, by default
    [`compress_extractive`][stagewise.context.compress_extractive]), each down to a common level chosen so that together
    they fit, until the total fits. If compression leaves too much (compressors may
    miss their target), the largest remaining non-protected section is truncated at a
    word boundary, noted `"truncated: a -> b tokens"`. A section is protected when its
    kind or its id is in `protected`; protected sections are never changed, and if
    they alone exceed the budget the result is a TokenBudgetError naming the stage.

    The sections' order is kept. A section compressed and then truncated keeps the
    compressed name and its lineage to the input section, with both steps in its note.
    """
    if budget < 0:
        raise TokenBudgetError(stage, budget, "the budget is negative")
    compress = compress or (lambda section, max_tokens: compress_extractive(section, max_tokens, count))
    current = list(sections)
    tokens = [count(s.content) for s in current]
    before = sum(tokens)
    if before <= budget:
        return FitResult(current, [], before, before)

    is_protected = [s.kind in protected or s.id in protected for s in current]
    protected_total = sum(t for t, p in zip(tokens, is_protected) if p)
    if protected_total > budget:
        listed = ", ".join(f"{s.id} ({t} tokens)" for s, t, p in zip(current, tokens, is_protected) if p)
        raise TokenBudgetError(stage, budget, f"the protected sections alone need {protected_total} tokens: {listed}")
    notes: list[str] = []

    # Compress largest first, each to the level at which the not-yet-compressed sections
    # would fit together; recomputed after every step because compressors undershoot.
    untouched = [i for i in range(len(current)) if not is_protected[i]]
    while sum(tokens) > budget and untouched:
        compressed_total = sum(tokens[i] for i in range(len(current)) if not is_protected[i] and i not in untouched)
        level = _water_level([tokens[i] for i in untouched], budget - protected_total - compressed_total)
        largest = max(untouched, key=lambda i: tokens[i])
        untouched.remove(largest)
        if tokens[largest] <= level:
            break  # the rest already fit at this level: what is over is the compressors' overshoot
        reduced = compress(current[largest], level)
        if reduced is not current[largest]:
            after = count(reduced.content)
            what = reduced.note or f"compressed: {tokens[largest]} -> {after} tokens"
            notes.append(f"{sections[largest].id}: {what}")
            current[largest], tokens[largest] = reduced, after

    # Truncate what compression left over, largest first, never a protected section.
    exhausted: set[int] = set()
    while sum(tokens) > budget:
        candidates = [i for i in range(len(current)) if not is_protected[i] and i not in exhausted and tokens[i] > 0]
        if not candidates:
            raise TokenBudgetError(stage, budget, f"{sum(tokens)} tokens remain after compressing and truncating every "
                                             "non-protected section")
        largest = max(candidates, key=lambda i: tokens[i])
        target = max(0, tokens[largest] - (sum(tokens) - budget))
        cut = truncate(current[largest], target, count)
        after = count(cut.content)
        if after >= tokens[largest]:
            exhausted.add(largest)
            continue
        notes.append(f"{sections[largest].id}: {cut.note}")
        if current[largest] is not sections[largest]:
            # Already a product of this fit (compressed): the caller never sees that
            # intermediate, so the cut keeps its name and its lineage to the input.
            earlier = current[largest]
            cut = replace(cut, name=earlier.name, lineage=earlier.lineage,
                          note="; ".join(n for n in (earlier.note, cut.note) if n))
        current[largest], tokens[largest] = cut, after
    return FitResult(current, notes, before, sum(tokens))


def reallocate(total: int, observed: dict[str, float], *, floor: int = 64) -> dict[str, int]:
    """`total` tokens re-split across stages in proportion to their `observed` usage.

    Each stage gets at least `floor`: stages whose proportional share is under it get
    exactly `floor` and the rest is re-split among the others in proportion. Shares
    are rounded down and the leftover tokens go to the largest remainders, so the
    result sums to exactly `total` (never more). Stages with no observed usage get the
    floor (all zero: an even split). A ValueError if `total < floor * len(observed)`
    or a usage is negative or not a number.
    """
    if floor < 0:
        raise ConfigError(f"floor must not be negative, got {floor}")
    for stage, usage in observed.items():
        if not math.isfinite(usage) or usage < 0:
            raise ConfigError(f"stage {stage!r}: observed usage must be a finite number >= 0, got {usage}")
    if total < floor * len(observed):
        raise ConfigError(f"a total of {total} tokens cannot give each of {len(observed)} stages "
                         f"the floor of {floor} (needs {floor * len(observed)})")
    if not observed:
        return {}

    shares: dict[str, float] = {}
    free = list(observed)
    while free:
        left = total - floor * (len(observed) - len(free))
        weight = sum(observed[s] for s in free)
        proposal = {s: (left * observed[s] / weight if weight else left / len(free)) for s in free}
        under = [s for s in free if proposal[s] < floor]
        if not under:
            shares.update(proposal)
            break
        for s in under:
            shares[s] = float(floor)
            free.remove(s)

    result = {s: math.floor(shares[s]) for s in observed}
    leftover = total - sum(result.values())
    by_remainder = sorted(observed, key=lambda s: shares[s] - result[s], reverse=True)
    for s in by_remainder[:leftover]:
        result[s] += 1
    return result


def _water_level(sizes: list[int], available: int) -> int:
    """The largest level L with sum(min(size, L)) <= available (0 if none)."""
    if available <= 0 or not sizes:
        return 0
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(size, mid) for size in sizes) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo
