"""Stage-level and end-to-end metrics, and the evaluation report of a program on labeled data."""

from stagewise.metrics.report import EndToEnd, EvaluationError, EvaluationReport, StageMetric, evaluate
from stagewise.metrics.scoring import METRICS, LLMJudge, RecordedCorrectness, label_accuracy, macro_f1, metric_by_name
from stagewise.metrics.text import exact_match, normalize, normalized_match, numeric_match, token_f1

__all__ = [
    "METRICS", "EndToEnd", "EvaluationError", "EvaluationReport", "LLMJudge", "RecordedCorrectness", "StageMetric",
    "evaluate", "exact_match", "label_accuracy", "macro_f1", "metric_by_name", "normalize", "normalized_match",
    "numeric_match", "token_f1",
]
