"""Outcome tables: recorded outcomes of real models (RouterBench, RouteLLM or a plain score table).

An [`OutcomeTable`][stagewise.data.OutcomeTable] holds, for each prompt and model, the model's recorded response,
whether it was correct, and (when recorded) what the call cost. Three formats load:

- RouterBench wide CSV: `prompt` (a Python list literal of turns), then per model
  `<model>` (score 0..1), `<model>|model_response` and `<model>|total_cost` (USD).
- RouteLLM CSV: `prompt`, per model `<model>` (True/False) and `<model>_response`.
- A plain table: `prompt`, per model a score column `<model>` (a number or True/False)
  and optionally `<model>|total_cost` or `<model>_cost` (USD); no responses, so it
  trains and evaluates routers but cannot be replayed.

Routers train on these tables (`stagewise.routing.outcomes`), and the replay engine
(`ReplayEngine`) answers with their recorded responses.
"""

from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from stagewise.errors import DataError, ModelError

__all__ = [
    "NotRecordedError", "Outcome", "OutcomeTable", "OutcomeTableError", "SkippedOutcomeRow", "TableFormat",
    "detect_format", "prompt_key",
]

TableFormat = Literal["routerbench", "routellm", "plain"]
"""The formats an outcome table file can have."""


class NotRecordedError(ModelError, LookupError):
    """The table records no outcome for a prompt and model: a replay request it cannot answer.

    The prompt or the model is unknown, or the cell is empty.
    """


class OutcomeTableError(DataError):
    """An outcome table file cannot be read; the message names the file and the column."""


@dataclass(frozen=True)
class Outcome:
    """One model's recorded outcome on one prompt."""

    prompt: str
    model: str
    response: str
    correct: float  # the recorded score: 1.0 correct, 0.0 wrong, in between for partial credit
    cost_usd: float | None  # the recorded cost of the call, when the table has one


@dataclass(frozen=True)
class SkippedOutcomeRow:
    """A row of a table file left out when loading, and why."""

    row: int  # 1-based data row number in the file (header excluded)
    reason: str


def prompt_key(text: str) -> str:
    """Prompts match whatever their whitespace."""
    return " ".join(text.split())


def _turns(text: object) -> str:
    """RouterBench stores prompts and responses as Python list literals of turns."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            turns = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return text
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            return "\n\n".join(turns)
    return text


def _empty(value: object) -> bool:
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()))


@dataclass
class OutcomeTable:
    """Recorded outcomes: one row per prompt, one response, score and cost per model."""

    source: str
    format: TableFormat
    fingerprint: str
    models: list[str]
    prompts: list[str]
    responses: pd.DataFrame  # index: row position; columns: models
    scores: pd.DataFrame
    costs: pd.DataFrame | None
    skipped: list[SkippedOutcomeRow] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {prompt_key(p): i for i, p in enumerate(self.prompts)}

    @classmethod
    def load(cls, path: str | Path, format: TableFormat | None = None) -> OutcomeTable:
        """The table in the CSV file at `path`, in `format` (detected from the columns when None)."""
        path = Path(path)
        try:
            data = path.read_bytes()
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            raise OutcomeTableError(f"outcome table {str(path)!r} does not exist") from None
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise OutcomeTableError(f"outcome table {str(path)!r} is not a readable CSV: {exc}") from None
        if "prompt" not in frame.columns:
            raise OutcomeTableError(f"outcome table {str(path)!r} has no 'prompt' column "
                                    f"(columns: {list(frame.columns)[:8]})")
        format = format or detect_format(frame.columns, path)
        if format == "routerbench":
            models = [c.removesuffix("|model_response") for c in frame.columns if c.endswith("|model_response")]
            response_cols = {m: f"{m}|model_response" for m in models}
            cost_cols = {m: f"{m}|total_cost" for m in models}
        elif format == "routellm":
            models = [c.removesuffix("_response") for c in frame.columns
                      if c.endswith("_response") and c.removesuffix("_response") in frame.columns]
            response_cols = {m: f"{m}_response" for m in models}
            cost_cols = None
        else:
            models = _plain_models(frame, path)
            response_cols = {}
            cost_cols = {m: next((c for c in (f"{m}|total_cost", f"{m}_cost") if c in frame.columns), "")
                         for m in models}
        missing = [m for m in models if m not in frame.columns]
        if missing:
            raise OutcomeTableError(f"outcome table {str(path)!r}: score column(s) {missing} "
                                    "missing for their responses")

        kept, prompts, skipped, seen = [], [], [], set()
        for position, raw in enumerate(frame["prompt"].tolist()):
            prompt = _turns(raw)
            if _empty(prompt):
                skipped.append(SkippedOutcomeRow(position + 1, "empty prompt"))
                continue
            key = prompt_key(prompt)
            if key in seen:
                skipped.append(SkippedOutcomeRow(position + 1, "duplicate prompt (the first occurrence is kept)"))
                continue
            seen.add(key)
            kept.append(position)
            prompts.append(prompt)
        rows = frame.iloc[kept].reset_index(drop=True)
        responses = pd.DataFrame({m: rows[response_cols[m]].map(_turns) if m in response_cols else pd.Series(
            [None] * len(rows), dtype=object) for m in models})
        scores = pd.DataFrame({m: rows[m].map(lambda v, m=m: _score(v, path, m)) for m in models})
        costs = None
        if cost_cols is not None:
            costs = pd.DataFrame({m: pd.to_numeric(rows[cost_cols[m]], errors="coerce") if cost_cols[m] in rows
                                  else pd.Series(float("nan"), index=rows.index) for m in models})
        return cls(str(path), format, hashlib.sha256(data).hexdigest(), models, prompts, responses, scores, costs,
                   skipped)

    def __len__(self) -> int:
        return len(self.prompts)

    def find(self, text: str) -> int | None:
        """The row of the prompt `text` (whatever its whitespace), or None."""
        return self._index.get(prompt_key(text))

    def outcome(self, prompt: str, model: str) -> Outcome:
        """The recorded outcome of `model` on `prompt`; a clear error when there is none."""
        if model not in self.models:
            raise NotRecordedError(f"model {model!r} is not in outcome table {self.source!r} (models: {self.models})")
        row = self.find(prompt)
        if row is None:
            raise NotRecordedError(f"prompt not in outcome table {self.source!r}: {_snippet(prompt)}")
        response, score = self.responses.at[row, model], self.scores.at[row, model]
        if _empty(response) or pd.isna(score):
            missing = "response" if _empty(response) else "score"
            raise NotRecordedError(f"outcome table {self.source!r} has an empty cell for model {model!r} "
                              f"(no recorded {missing}) at prompt {_snippet(prompt)}")
        cost = None if self.costs is None else self.costs.at[row, model]
        return Outcome(self.prompts[row], model, response, float(score),
                       None if cost is None or pd.isna(cost) else float(cost))

    def report(self) -> str:
        """What was loaded and what was skipped, and why."""
        lines = [f"{self.source}: {len(self)} prompts x {len(self.models)} models ({self.format})"]
        empty = int((self.responses.isna() | self.scores.isna()).sum().sum())
        if empty:
            lines.append(f"  {empty} empty cells (no recorded response or score); replaying them is an error")
        for skip in self.skipped[:5]:
            lines.append(f"  skipped row {skip.row}: {skip.reason}")
        if len(self.skipped) > 5:
            lines.append(f"  ... and {len(self.skipped) - 5} more skipped rows")
        return "\n".join(lines)


def detect_format(columns, path: Path) -> TableFormat:
    """The format a table's `columns` say it has: RouterBench, RouteLLM, or else a plain table."""
    if any(c.endswith("|model_response") for c in columns):
        return "routerbench"
    if any(c.endswith("_response") and c.removesuffix("_response") in columns for c in columns):
        return "routellm"
    return "plain"


_COST_SUFFIXES = ("|total_cost", "_cost")


def _plain_models(frame: pd.DataFrame, path: Path) -> list[str]:
    """A plain table's model columns.

    Every column of scores (numbers or True/False), and every column with a cost column beside it
    (an empty one is then a model with no scores).
    """
    models = []
    for column in frame.columns:
        if column == "prompt" or column.endswith(_COST_SUFFIXES):
            continue
        values = frame[column].dropna().str.strip()
        priced = any(f"{column}{suffix}" in frame.columns for suffix in _COST_SUFFIXES)
        if (priced and not len(values)) or (len(values) and (
                values.str.lower().isin(["true", "false"]) | pd.to_numeric(values, errors="coerce").notna()).all()):
            models.append(column)
    if not models:
        raise OutcomeTableError(
            f"outcome table {str(path)!r} has no model columns: expected RouterBench (<model>|model_response), "
            f"RouteLLM (<model> and <model>_response) or plain score columns (<model> with numbers or True/False); "
            f"columns: {list(frame.columns)[:8]}"
        )
    return models


def _score(value: object, path: Path, model: str) -> float:
    if _empty(value):
        return float("nan")
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return 1.0 if text.lower() == "true" else 0.0
    try:
        return float(text)
    except ValueError:
        raise OutcomeTableError(f"outcome table {str(path)!r}, column {model!r}: "
                                f"score {text!r} is not a number or True/False") from None


def _snippet(text: str, width: int = 80) -> str:
    flat = prompt_key(text)
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")
