"""The context that flows between stages: canonical form, format and granularity transforms, token budgets, lineage.

- `record`: [`Section`][stagewise.context.Section] (of a [`SectionKind`][stagewise.context.SectionKind]) and
[`Context`][stagewise.context.Context], named and typed,
  with lineage; [`MissingSectionError`][stagewise.context.MissingSectionError] when a stage asks for a section no stage
  produced;
- `format`: [`render`][stagewise.context.render] sections in a [`ContextFormat`][stagewise.context.ContextFormat] (XML,
Markdown or plain text:
  `FORMATS`) and [`parse`][stagewise.context.parse] them back;
- `granularity`: [`compress_extractive`][stagewise.context.compress_extractive],
[`compress_with_model`][stagewise.context.compress_with_model], [`truncate`][stagewise.context.truncate],
  [`expand`][stagewise.context.expand] (back to the full section),
  [`filter_sections`][stagewise.context.filter_sections], [`merge`][stagewise.context.merge];
- `budget`: per-stage token budgets ([`stage_budget`][stagewise.context.stage_budget]), fitting sections into them
  ([`fit`][stagewise.context.fit], a [`FitResult`][stagewise.context.FitResult], or a
  [`TokenBudgetError`][stagewise.context.TokenBudgetError]), re-splitting a total
  ([`reallocate`][stagewise.context.reallocate]).
"""

from stagewise.context.budget import FitResult, TokenBudgetError, fit, reallocate, stage_budget
from stagewise.context.format import FORMATS, ContextFormat, parse, render
from stagewise.context.granularity import (
    compress_extractive,
    compress_with_model,
    expand,
    filter_sections,
    merge,
    truncate,
)
from stagewise.context.record import Context, MissingSectionError, Section, SectionKind

__all__ = [
    "FORMATS", "Context", "ContextFormat", "FitResult", "MissingSectionError", "Section", "SectionKind",
    "TokenBudgetError", "compress_extractive", "compress_with_model", "expand", "filter_sections", "fit", "merge",
    "parse", "reallocate", "render", "stage_budget", "truncate",
]
