"""Outcomes for routing: per prompt, each model's score and cost, as arrays.

Routers train on and are evaluated against an [`OutcomeTable`][stagewise.data.outcomes.OutcomeTable]
(RouterBench, RouteLLM or a plain score table). Routing needs every model scored on every
prompt, so rows with a missing score are skipped and counted. A call's cost is the one the
table records; where it records none (RouteLLM tables, empty cost cells) the call is priced
from the catalog: the prompt's tokens as input and the recorded response's as output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from stagewise.data.outcomes import OutcomeTable, OutcomeTableError, TableFormat
from stagewise.models.catalog import ModelCatalog, UnknownModelError, default_catalog
from stagewise.models.tokens import count_tokens


@dataclass(frozen=True)
class Outcomes:
    """Scores and costs of `models` (columns) on `prompts` (rows)."""

    source: str
    prompts: list[str]
    models: list[str]
    scores: np.ndarray  # (n, m), 1.0 correct .. 0.0 wrong
    costs: np.ndarray  # (n, m), USD per call
    responses: list[list[str]] | None  # [row][model]; None for a plain table
    cost_sources: dict[str, str] = field(default_factory=dict)  # model -> "recorded" | "catalog <entry>" | mixed
    skipped: int = 0  # rows dropped for a missing score
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows) -> Outcomes:
        """The outcomes of `rows` (positions) only."""
        rows = np.asarray(rows)
        responses = None if self.responses is None else [self.responses[i] for i in rows]
        return replace(self, prompts=[self.prompts[i] for i in rows], scores=self.scores[rows],
                       costs=self.costs[rows], responses=responses)

    def column(self, model: str) -> int:
        """The column of `model`.

        Raises:
            OutcomeTableError: `model` is not in the table.
        """
        try:
            return self.models.index(model)
        except ValueError:
            raise OutcomeTableError(f"model {model!r} is not in {self.source!r} (models: {self.models})") from None

    def by_cost(self) -> list[str]:
        """Models from the cheapest to the most expensive (mean cost per call)."""
        return [self.models[j] for j in np.argsort(self.costs.mean(axis=0), kind="stable")]

    def select(self, models: list[str]) -> Outcomes:
        """The same rows with only `models`' columns, in that order.

        Raises:
            OutcomeTableError: a model of `models` is not in the table.
        """
        columns = [self.column(m) for m in models]
        responses = None if self.responses is None else [[row[j] for j in columns] for row in self.responses]
        return replace(self, models=list(models), scores=self.scores[:, columns], costs=self.costs[:, columns],
                       responses=responses,
                       cost_sources={m: self.cost_sources[m] for m in models if m in self.cost_sources})

    def aligned(self, models: list[str], what: str) -> Outcomes:
        """These outcomes with their columns in the order of `models`, the models a router was trained on.

        Evaluation reads a router's per-model values by column position, so a test table whose
        columns come in another order is put in the training table's order first.

        Raises:
            OutcomeTableError: the table has other models than `models` (`what` names where they come from).
        """
        if sorted(models) != sorted(self.models):
            missing, extra = sorted(set(models) - set(self.models)), sorted(set(self.models) - set(models))
            raise OutcomeTableError(
                f"{self.source!r} has different models than {what}: "
                + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                        f"extra {extra}" if extra else "") if p)
            )
        return self.select(models)

    def report(self) -> str:
        """A one-line summary: source, prompts, models, skipped rows and cost sources."""
        sources = sorted(set(self.cost_sources.values()))
        return (f"{self.source}: {len(self)} prompts x {len(self.models)} models"
                + (f", {self.skipped} rows skipped (a missing score)" if self.skipped else "")
                + f"; costs {', '.join(sources)}")


def load_outcomes(path: str | Path, *, format: TableFormat | None = None,
                  catalog: ModelCatalog | None = None) -> Outcomes:
    """The recorded outcomes in the outcome table at `path`.

    See [`outcomes_from_table`][stagewise.routing.outcomes_from_table].
    """
    return outcomes_from_table(OutcomeTable.load(path, format), catalog)


def outcomes_from_table(table: OutcomeTable, catalog: ModelCatalog | None = None) -> Outcomes:
    """An outcome table as routing evaluation reads it.

    It keeps the prompts every model has a score for, and each model's score, answer and cost there
    (the recorded cost, else the catalog's price of its tokens).
    """
    catalog = catalog or default_catalog()
    scores = table.scores.to_numpy(dtype=float)
    for j, model in enumerate(table.models):
        if np.isnan(scores[:, j]).all():
            raise OutcomeTableError(f"outcome table {table.source!r}: model {model!r} has no scores (every cell empty)")
    keep = ~np.isnan(scores).any(axis=1)
    if not keep.any():
        raise OutcomeTableError(f"outcome table {table.source!r}: no row has a score for every model")
    rows = np.flatnonzero(keep)
    prompts = [table.prompts[i] for i in rows]
    responses = None
    if table.format != "plain":
        responses = [[_text(table.responses.at[i, m]) for m in table.models] for i in rows]
    costs = np.full((len(rows), len(table.models)), np.nan)
    if table.costs is not None:
        costs[:] = table.costs.to_numpy(dtype=float)[rows]
    sources = {}
    for j, model in enumerate(table.models):
        missing = np.isnan(costs[:, j])
        if not missing.any():
            sources[model] = "recorded"
            continue
        spec = catalog.by_recorded_name(model)
        if spec is None:
            try:
                spec = catalog.resolve(model)
            except UnknownModelError:
                raise OutcomeTableError(
                    f"outcome table {table.source!r}: model {model!r} has calls with no recorded cost and no catalog "
                    f"price; add a '{model}|total_cost' column or a catalog entry whose model is {model!r}"
                ) from None
        for i in np.flatnonzero(missing):
            response = responses[i][j] if responses is not None else ""
            costs[i, j] = spec.cost(count_tokens(prompts[i], spec.tokenizer).tokens,
                                    count_tokens(response, spec.tokenizer).tokens)
        sources[model] = f"catalog {spec.name}" if missing.all() else f"recorded + catalog {spec.name}"
    return Outcomes(table.source, prompts, list(table.models), scores[rows], costs, responses, sources,
                    skipped=int((~keep).sum()), fingerprint=table.fingerprint)


def _text(value) -> str:
    return value if isinstance(value, str) else ""
