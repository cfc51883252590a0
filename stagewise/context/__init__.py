"""The context that flows between stages: canonical form, format and granularity transforms, token budgets, lineage.

- ``record``: :class:`Section` and :class:`Context`, named and typed, with lineage;
- ``format``: render sections as XML, Markdown or plain text (and parse them back);
- ``granularity``: compress (extractive or by a model), expand, filter, merge;
- ``budget``: per-stage token budgets, fitting sections into them, re-splitting a total.
"""

from stagewise.context.budget import FitResult, TokenBudgetError, fit, reallocate, stage_budget
from stagewise.context.format import parse, render
from stagewise.context.granularity import compress_extractive, compress_with_model, expand, filter_sections, merge
from stagewise.context.record import Context, MissingSectionError, Section

__all__ = [
    "Context", "FitResult", "MissingSectionError", "Section", "TokenBudgetError", "compress_extractive",
    "compress_with_model", "expand", "filter_sections", "fit", "merge", "parse", "reallocate", "render",
    "stage_budget",
]
