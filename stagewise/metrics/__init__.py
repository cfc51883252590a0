"""Stage-level and end-to-end metrics, and the evaluation report of a program on labeled data.

- a :data:`Metric` scores one prediction against one gold value, in [0, 1]: :func:`exact_match`,
  :func:`normalized_match` (after :func:`normalize`), :func:`token_f1`, :func:`numeric_match`,
  :func:`label_accuracy` (with its corpus form :func:`macro_f1`); :data:`METRICS` and
  :func:`metric_by_name` resolve the names a config uses; :class:`LLMJudge` scores with a model,
  :class:`RecordedCorrectness` with an outcome table's recorded correctness;
- :func:`evaluate` scores a program per stage (each a :class:`StageMetric`) and end to end
  (:class:`EndToEnd`, or any DSPy metric as a :class:`ProgramMetric`) into an
  :class:`EvaluationReport`; :class:`EvaluationError` when the evaluation is set up wrongly.
  ``stagewise.evaluate`` is the same with DSPy metrics and ``{stage: field}`` maps accepted.
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
