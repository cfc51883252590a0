"""Dataset loading and splitting: files or hub datasets to DSPy examples, with reported skips and fingerprints.

Recorded outcomes of real models (RouterBench, RouteLLM or plain score tables) load as an
[`OutcomeTable`][stagewise.data.OutcomeTable] (`stagewise.data.outcomes`).
"""

from stagewise.data.loading import (
    DataError,
    FieldMap,
    LoadedData,
    LoadReport,
    SkippedRow,
    load_dataset_file,
    looks_like_hub_name,
)
from stagewise.data.outcomes import NotRecordedError, OutcomeTable, OutcomeTableError
from stagewise.data.splits import Splits, split, split_fingerprint

__all__ = [
    "DataError",
    "FieldMap",
    "LoadReport",
    "LoadedData",
    "NotRecordedError",
    "OutcomeTable",
    "OutcomeTableError",
    "SkippedRow",
    "Splits",
    "load_dataset_file",
    "looks_like_hub_name",
    "split",
    "split_fingerprint",
]
