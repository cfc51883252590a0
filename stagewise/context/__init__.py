"""The context that flows between stages: canonical form, format and granularity transforms, token budgets, lineage.

- ``record``: :class:`Section` (of a :data:`SectionKind`) and :class:`Context`, named and typed,
  with lineage; :class:`MissingSectionError` when a stage asks for a section no stage produced;
- ``format``: :func:`render` sections in a :data:`ContextFormat` (XML, Markdown or plain text:
  :data:`FORMATS`) and :func:`parse` them back;
- ``granularity``: :func:`compress_extractive`, :func:`compress_with_model`, :func:`truncate`,
  :func:`expand` (back to the full section), :func:`filter_sections`, :func:`merge`;
- ``budget``: per-stage token budgets (:func:`stage_budget`), fitting sections into them
  (:func:`fit`, a :class:`FitResult`, or a :class:`TokenBudgetError`), re-splitting a total
  (:func:`reallocate`).
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
