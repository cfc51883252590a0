"""Stage-level and end-to-end evaluation of a program on labeled examples.

Each stage is scored on its own labels (a router's route against the gold route, a
specialist's answer against the gold answer), the program end to end on the final label,
with cost, tokens and latency per request from each request's trace. The report also says
which stage loses the most quality: of the requests that fail end to end, the share whose
first failing stage (in the order the stage metrics are given) is each stage.

A request that raises is kept in the report with its error and scores of 0: nothing already
evaluated is lost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from stagewise.errors import ConfigError
from stagewise.metrics.scoring import Metric, macro_f1, metric_by_name
from stagewise.redaction import redact

PASS = 0.5  # a score at or above this counts as a success when attributing failures


class EvaluationError(ConfigError):
    """The evaluation is set up wrongly (unknown stage, field or label, no examples)."""


@dataclass(frozen=True)
class StageMetric:
    """Score `stage`'s output field `output` against the examples' `label` field."""

    stage: str
    output: str
    label: str
    metric: str | Metric = "normalized_match"

    def scorer(self) -> Metric:
        """The metric: `metric` itself, or the one it names (see `metric_by_name`)."""
        return metric_by_name(self.metric) if isinstance(self.metric, str) else self.metric

    @property
    def name(self) -> str:
        """The scored field's name in reports, `"<stage>.<output>"`."""
        return f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class EndToEnd:
    """Score the program's final output field `output` against the examples' `label`.

    A metric with `score_example(example, prediction)` (such as `RecordedCorrectness`, or a
    DSPy metric wrapped in [`ProgramMetric`][stagewise.metrics.ProgramMetric]) scores the whole request instead and
    needs no label (nor an output field).
    """

    output: str | None
    label: str | None = None
    metric: str | Metric = "normalized_match"

    def score(self, example, prediction) -> float:
        """The score of one prediction (0 when it has no `output` field)."""
        metric = self.scorer()
        if hasattr(metric, "score_example"):
            return float(metric.score_example(example, prediction))
        value = prediction.get(self.output)
        return metric(str(value), example[self.label]) if value is not None else 0.0

    def scorer(self) -> Metric:
        """The metric: `metric` itself, or the one it names (see `metric_by_name`)."""
        return metric_by_name(self.metric) if isinstance(self.metric, str) else self.metric


class ProgramMetric:
    """A DSPy metric, `metric(example, prediction, trace=None) -> float | bool`, as an end-to-end scorer.

    Args:
        metric: the DSPy metric.

    Raises:
        ConfigError: `metric` is not callable.
    """

    def __init__(self, metric: Callable):
        if not callable(metric):
            raise ConfigError(f"metric: expected a DSPy metric metric(example, prediction, trace=None), "
                              f"got {type(metric).__name__}")
        self.metric = metric
        self.name = getattr(metric, "__qualname__", type(metric).__name__)

    def score_example(self, example, prediction) -> float:
        """The DSPy metric's value for one example and prediction, as a float."""
        return float(self.metric(example, prediction))

    def __repr__(self) -> str:
        return f"ProgramMetric({self.name})"


def as_end_to_end(metric: Callable | EndToEnd) -> EndToEnd:
    """An [`EndToEnd`][stagewise.metrics.EndToEnd] from a DSPy metric (or the EndToEnd itself)."""
    return metric if isinstance(metric, EndToEnd) else EndToEnd(None, None, ProgramMetric(metric))


def as_stage_metrics(spec: Any) -> list[StageMetric]:
    """Stage metrics from `{stage: field}`, `{stage: {"output", "label", "metric"}}` or a list of StageMetric.

    A field name alone means the stage's output field and the examples' label of that name,
    compared by `normalized_match`.
    """
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(m, StageMetric) for m in spec):
            raise ConfigError("stage_metrics: a list must hold StageMetric objects")
        return list(spec)
    metrics = []
    for stage, value in dict(spec).items():
        if isinstance(value, StageMetric):
            metrics.append(value)
        elif isinstance(value, str):
            metrics.append(StageMetric(stage, value, value))
        elif isinstance(value, dict) and {"output", "label"} <= set(value) <= {"output", "label", "metric"}:
            metrics.append(StageMetric(stage, value["output"], value["label"], value.get("metric", "normalized_match")))
        else:
            raise ConfigError(f"stage_metrics[{stage!r}]: expected a field name, a StageMetric or a dict with "
                              f"'output' and 'label' (and 'metric'), got {value!r}")
    return metrics


@dataclass
class EvaluationReport:
    """A program's evaluation: one row per example, `summary()` as a dict, `table()` as a rich table.

    `rows` holds each example's stage scores, end-to-end score, tokens, cost, latency and any error.
    """

    rows: pd.DataFrame  # one row per example
    stage_metrics: list[StageMetric]
    end_to_end: EndToEnd | None
    macro_f1: dict[str, float] = field(default_factory=dict)

    @property
    def quality(self) -> float:
        """End-to-end mean score (the optimization objective)."""
        return float(self.rows["end_to_end"].mean()) if self.end_to_end else float("nan")

    @property
    def cost_per_request(self) -> float:
        """Mean cost of a request, in USD."""
        return float(self.rows["cost_usd"].mean())

    def stage_scores(self) -> dict[str, float]:
        """Each stage metric's mean score, by `stage.output`."""
        return {m.name: float(self.rows[m.name].mean()) for m in self.stage_metrics}

    def loss_by_stage(self) -> dict[str, float]:
        """Share of end-to-end failures whose first failing stage is each stage."""
        if self.end_to_end is None or not self.stage_metrics:
            return {}
        failed = self.rows[self.rows["end_to_end"] < PASS]
        shares = {m.name: 0.0 for m in self.stage_metrics}
        shares["(no stage failed)"] = 0.0
        for _, row in failed.iterrows():
            first = next((m.name for m in self.stage_metrics if row[m.name] < PASS), "(no stage failed)")
            shares[first] += 1
        return {name: count / len(failed) if len(failed) else 0.0 for name, count in shares.items()}

    @property
    def examples(self) -> int:
        """How many examples were evaluated."""
        return len(self.rows)

    @property
    def errors(self) -> int:
        """How many examples ended in an error."""
        return int(self.rows["error"].notna().sum())

    @property
    def cost_per_1k_requests(self) -> float:
        """Mean cost of 1,000 requests, in USD."""
        return 1000 * self.cost_per_request

    @property
    def input_tokens_per_request(self) -> float:
        """Mean input tokens of a request, over every model call it made."""
        return float(self.rows["input_tokens"].mean())

    @property
    def output_tokens_per_request(self) -> float:
        """Mean output tokens of a request."""
        return float(self.rows["output_tokens"].mean())

    @property
    def latency_s_mean(self) -> float:
        """Mean latency of a request, in seconds."""
        return float(self.rows["latency_s"].mean())

    @property
    def latency_s_p50(self) -> float:
        """Median latency of a request, in seconds."""
        return float(statistics.median(self.rows["latency_s"]))

    def summary(self) -> dict[str, Any]:
        """The report's figures as a JSON-ready dict.

        This is what `stagewise evaluate --json` prints and an exported manifest records; each
        figure is also an attribute of the report.
        """
        return {
            "examples": self.examples,
            "errors": self.errors,
            "end_to_end": self.quality,
            "stages": self.stage_scores(),
            "macro_f1": dict(self.macro_f1),
            "loss_by_stage": self.loss_by_stage(),
            "cost_per_request_usd": self.cost_per_request,
            "cost_per_1k_requests_usd": self.cost_per_1k_requests,
            "input_tokens_per_request": self.input_tokens_per_request,
            "output_tokens_per_request": self.output_tokens_per_request,
            "latency_s_mean": self.latency_s_mean,
            "latency_s_p50": self.latency_s_p50,
        }

    def table(self):
        """The summary as a `rich` table: `print` shows it as text, a rich console renders it."""
        table = _PrintableTable(title=f"evaluation on {self.examples} examples ({self.errors} errors)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("loses (share of end-to-end failures)", justify="right")
        losses = self.loss_by_stage()
        for name, score in self.stage_scores().items():
            extra = f" (macro-F1 {self.macro_f1[name]:.3f})" if name in self.macro_f1 else ""
            table.add_row(f"stage {name}", f"{score:.3f}{extra}", f"{losses.get(name, 0):.0%}" if losses else "")
        if self.end_to_end:
            table.add_row("end to end", f"{self.quality:.3f}", "")
        table.add_row("cost per 1,000 requests", f"${self.cost_per_1k_requests:.4f}", "")
        table.add_row("tokens in / out per request",
                      f"{self.input_tokens_per_request:.0f} / {self.output_tokens_per_request:.0f}", "")
        table.add_row("latency per request (mean / median)",
                      f"{self.latency_s_mean:.2f} s / {self.latency_s_p50:.2f} s", "")
        return table


class _PrintableTable(Table):
    """A rich table whose `str` is its text rendering, so `print(report.table())` shows the table."""

    def __str__(self) -> str:
        console = Console(file=StringIO(), width=100, color_system=None)
        console.print(self)
        return console.file.getvalue().rstrip("\n")


def check_metrics(program, examples: list, stage_metrics: list[StageMetric], end_to_end: EndToEnd | None) -> None:
    """Every metric names a real stage, one of its output fields and a label the examples have."""
    if not examples:
        raise EvaluationError("no examples to evaluate (the split is empty)")
    from stagewise.programs.predictors import stages_of

    stages = stages_of(program)
    keys = set(examples[0].keys())
    for metric in stage_metrics:
        if metric.stage not in stages:
            raise EvaluationError(f"stage metric {metric.name!r}: the program has no stage {metric.stage!r} "
                                  f"(stages: {', '.join(stages)})")
        outputs = list(stages[metric.stage].signature.output_fields)
        if metric.output not in outputs:
            raise EvaluationError(f"stage metric {metric.name!r}: stage {metric.stage!r} has no output field "
                                  f"{metric.output!r} (its outputs: {outputs})")
        if metric.label not in keys:
            raise EvaluationError(f"stage metric {metric.name!r}: the examples have no label field {metric.label!r} "
                                  f"(fields: {sorted(keys)})")
        metric.scorer()
    if end_to_end is not None and not hasattr(end_to_end.scorer(), "score_example"):
        if end_to_end.output is None:
            raise EvaluationError("end-to-end metric: name the program's output field it scores")
        if end_to_end.label not in keys:
            raise EvaluationError(f"end-to-end metric: the examples have no label field {end_to_end.label!r} "
                                  f"(fields: {sorted(keys)})")

def evaluate(program, examples: list, *, stage_metrics: list[StageMetric] = (), end_to_end: EndToEnd | None = None,
             progress: bool = True, on_result: Callable[[int, dict], None] | None = None) -> EvaluationReport:
    """Run `program` on every example and score it per stage and end to end."""
    import dspy

    from stagewise.models.usage import track_usage
    from stagewise.programs.predictors import stage_outputs, stages_of

    stage_metrics = list(stage_metrics)
    check_metrics(program, examples, stage_metrics, end_to_end)
    stages = stages_of(program)
    rows: list[dict[str, Any]] = []
    iterator = range(len(examples))
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("evaluating", total=len(examples))
    try:
        for index in iterator:
            example = examples[index]
            row: dict[str, Any] = {"example": index, "error": None}
            start = time.perf_counter()
            with track_usage() as ledger, dspy.context(trace=[]):
                try:
                    prediction = program(**example.inputs())
                except Exception as exc:  # kept in the report, with zero scores
                    prediction = None
                    row["error"] = redact(f"{type(exc).__name__}: {exc}")[:500]
                answered = stage_outputs(dspy.settings.trace, stages)
            row["latency_s"] = time.perf_counter() - start
            trace = getattr(prediction, "trace", None)  # a stagewise program's own trace, else the ledger
            records = ledger.records
            row["cost_usd"] = trace.total_cost if trace else sum(r.cost_usd or 0.0 for r in records)
            row["input_tokens"] = sum(s.input_tokens for s in trace.stages) if trace else sum(
                r.input_tokens for r in records)
            row["output_tokens"] = sum(s.output_tokens for s in trace.stages) if trace else sum(
                r.output_tokens for r in records)
            for metric in stage_metrics:
                predicted = _stage_output(prediction, answered, metric)
                row[f"{metric.name}:predicted"] = predicted
                row[metric.name] = metric.scorer()(predicted, example[metric.label]) if predicted is not None else 0.0
            if end_to_end is not None:
                row["end_to_end:predicted"] = (prediction.get(end_to_end.output) if prediction is not None
                                               and end_to_end.output else None)
                row["end_to_end"] = end_to_end.score(example, prediction) if prediction is not None else 0.0
            rows.append(row)
            if on_result is not None:
                on_result(index, row)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    frame = pd.DataFrame(rows)
    f1 = {}
    for metric in stage_metrics:
        if metric.metric == "label_accuracy":
            predicted = [str(p) if p is not None else "" for p in frame[f"{metric.name}:predicted"]]
            f1[metric.name] = macro_f1(predicted, [str(e[metric.label]) for e in examples])
    return EvaluationReport(frame, stage_metrics, end_to_end, f1)


def _stage_output(prediction, answered: dict, metric: StageMetric) -> str | None:
    """A stage's output as text: a stagewise stage's context section, or a plain predictor's answer."""
    context = getattr(prediction, "context", None)
    section = context.sections.get(metric.name) if context is not None else None
    if section is not None:
        return section.content
    if metric.stage in answered:
        value = answered[metric.stage].get(metric.output)
        if value is not None:
            from stagewise.programs.stage import as_text

            return as_text(value)
    return None
