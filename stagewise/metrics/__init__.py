"""Stage-level and end-to-end metrics, and the evaluation report of a program on labeled data.

- a [`Metric`][stagewise.metrics.Metric] scores one prediction against one gold value, in [0, 1]:
[`exact_match`][stagewise.metrics.exact_match],
  [`normalized_match`][stagewise.metrics.normalized_match] (after [`normalize`][stagewise.metrics.normalize]),
  [`token_f1`][stagewise.metrics.token_f1], [`numeric_match`][stagewise.metrics.numeric_match],
  [`label_accuracy`][stagewise.metrics.label_accuracy] (with its corpus form [`macro_f1`][stagewise.metrics.macro_f1]);
  `METRICS` and [`metric_by_name`][stagewise.metrics.metric_by_name] resolve the names a config uses;
  [`LLMJudge`][stagewise.metrics.LLMJudge] scores with a model,
  [`RecordedCorrectness`][stagewise.metrics.RecordedCorrectness] with an outcome table's recorded correctness;
- [`evaluate`][stagewise.metrics.evaluate] scores a program per stage (each a
[`StageMetric`][stagewise.metrics.StageMetric]) and end to end
  ([`EndToEnd`][stagewise.metrics.EndToEnd], or any DSPy metric as a [`ProgramMetric`][stagewise.metrics.ProgramMetric])
  into an [`EvaluationReport`][stagewise.metrics.EvaluationReport];
  [`EvaluationError`][stagewise.metrics.EvaluationError] when the evaluation is set up wrongly. `stagewise.evaluate` is
  the same with DSPy metrics and `{stage: field}` maps accepted.
"""

from stagewise.metrics.report import (
    EndToEnd,
    EvaluationError,
    EvaluationReport,
    ProgramMetric,
    StageMetric,
    evaluate,
)
from stagewise.metrics.scoring import (
    METRICS,
    LLMJudge,
    Metric,
    RecordedCorrectness,
    label_accuracy,
    macro_f1,
    metric_by_name,
)
from stagewise.metrics.text import exact_match, normalize, normalized_match, numeric_match, token_f1

__all__ = [
    "METRICS", "EndToEnd", "EvaluationError", "EvaluationReport", "LLMJudge", "Metric", "ProgramMetric",
    "RecordedCorrectness", "StageMetric", "evaluate", "exact_match", "label_accuracy", "macro_f1", "metric_by_name",
    "normalize", "normalized_match", "numeric_match", "token_f1",
]
