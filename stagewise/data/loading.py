"""Loading a dataset file into DSPy examples, with every dropped row accounted for.

A [`FieldMap`][stagewise.data.FieldMap] says which dataset column feeds which program field: input fields,
and label fields that may belong to different stages (a router's label and the final
answer can sit in the same row). [`load_dataset_file`][stagewise.data.load_dataset_file] reads a local CSV, JSON Lines
(`.jsonl`/`.json`) or Parquet file with the `datasets` library, or a hub dataset
given as `owner/name`, and returns [`LoadedData`][stagewise.data.LoadedData]: the examples, a
[`LoadReport`][stagewise.data.LoadReport] of the rows that could not be used and why, and a fingerprint of the
data and the mapping to record with every run.

A row is bad when one of its mapped cells is missing (None, NaN, an empty or blank
string, an empty list or mapping) or malformed (a non-finite number, or a value whose kind
-- text, number, boolean, list, mapping -- is not the kind most of its column holds, like
a JSON object in a column of strings). Bad rows are skipped and reported, or refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dspy

from stagewise.errors import ConfigError, DataError

log = logging.getLogger(__name__)

OnBad = Literal["skip", "refuse"]

# Extension -> the `datasets` packaged builder that reads it.
LOADERS: dict[str, str] = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Suffixes that mark a name as a file path, not a hub dataset, when no such file exists.
_FILE_SUFFIXES = set(LOADERS) | {".tsv", ".txt", ".xlsx", ".xls", ".arrow", ".gz", ".zip", ".bz2", ".xz"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Bumped when the way a file is read changes (CSV cells as text, what counts as bad), so
# that fingerprints recorded under the old reading do not match data read the new way.
_READER_VERSION = "stagewise.data.loading/1"
_EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class FieldMap:
    """Program field -> dataset column, for the input fields and the label fields.

    `labels` may name one label per stage, e.g. `{"route": "category", "answer": "reply"}`.
    Field names must be Python identifiers that a `dspy.Example` can carry as attributes;
    one column may feed several fields. The dicts are copied, so later changes to the
    caller's dicts do not change the map.
    """

    inputs: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", dict(self.inputs))
        object.__setattr__(self, "labels", dict(self.labels))
        if not self.inputs:
            raise ConfigError("a FieldMap needs at least one input field")
        for kind, mapping in (("input", self.inputs), ("label", self.labels)):
            for name, column in mapping.items():
                _check_field_name(name, kind)
                if not isinstance(column, str) or not column:
                    raise ConfigError(f"{kind} field {name!r} maps to column {column!r}; "
                                      "a column name is a non-empty string")
        both = sorted(set(self.inputs) & set(self.labels))
        if both:
            raise ConfigError(f"field(s) {both} are both inputs and labels; a field is one or the other")

    @classmethod
    def identity(cls, inputs: Iterable[str], labels: Iterable[str] = ()) -> FieldMap:
        """Each field reads the column of the same name."""
        return cls({name: name for name in inputs}, {name: name for name in labels})

    def fields(self) -> dict[str, str]:
        """Every field, inputs first, with its column."""
        return {**self.inputs, **self.labels}

    def columns(self) -> list[str]:
        """The distinct mapped columns, in field order."""
        return list(dict.fromkeys(self.fields().values()))

    def as_dict(self) -> dict[str, dict[str, str]]:
        """A plain, order-independent form, to record and to fingerprint."""
        return {"inputs": dict(sorted(self.inputs.items())), "labels": dict(sorted(self.labels.items()))}


def _check_field_name(name: object, kind: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{kind} field name {name!r} is not a Python identifier (DSPy fields are)")
    # Example hides `dspy_*` keys and serves its own attributes (inputs, labels, keys, copy...)
    # before its fields, so such a name would be silently unreadable as `example.<name>`.
    if name.startswith(("_", "dspy_")) or name in dir(dspy.Example):
        raise ConfigError(f"{kind} field name {name!r} is reserved by dspy.Example; rename the field")


@dataclass(frozen=True)
class SkippedRow:
    """A row of a data file that was not loaded, and why."""

    row: int  # 1-based record number in the file (a CSV header is not counted); for hub data, in the split
    column: str  # the first bad mapped column of the row
    reason: str  # what is wrong with it, and with any other bad column of the row


@dataclass(frozen=True)
class LoadReport:
    """How many rows were read, kept and skipped, and why each skipped row was."""

    total_rows: int
    kept: int
    skipped: list[SkippedRow]

    def summary(self) -> str:
        """The counts, then the first five skipped rows with their column and reason."""
        if not self.skipped:
            return f"{self.total_rows} rows, all kept"
        lines = [f"{self.total_rows} rows: {self.kept} kept, {len(self.skipped)} skipped "
                 "(missing or malformed value in a mapped column)"]
        lines += [f"  row {s.row}, column {s.column!r}: {s.reason}" for s in self.skipped[:_EXAMPLES_SHOWN]]
        if len(self.skipped) > _EXAMPLES_SHOWN:
            lines.append(f"  ... and {len(self.skipped) - _EXAMPLES_SHOWN} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedData:
    """The examples of a data file, with what was skipped (`report`) and the data's fingerprint."""

    examples: list[dspy.Example]  # the kept rows in file order, inputs marked with `with_inputs`
    report: LoadReport
    fingerprint: str  # sha256 hex of the data and the field mapping
    source: str  # the file path or hub name as given
    fields: FieldMap


def load_dataset_file(
    source: str | Path,
    fields: FieldMap,
    *,
    on_bad: OnBad = "skip",
    split: str | None = None,
) -> LoadedData:
    """Load `source` into examples carrying the mapped fields.

    `source` is a local `.csv`, `.jsonl`/`.json` or `.parquet` file, or, when no
    such path exists and it reads `owner/name`, a hub dataset (`split` defaults to
    `"train"`; a local file is one split, so `split` is refused for it). CSV cells are
    read as text (`"007"` stays `"007"`, `"NA"` stays `"NA"`; only an empty cell is
    missing); JSON and Parquet values keep their types. Values are not stripped or changed.

    Rows with a missing or malformed mapped value are skipped and listed in the report
    (`on_bad="skip"`, also logged as a warning) or make the load fail (`"refuse"`).
    Raises [`DataError`][stagewise.DataError] for a missing file, an unsupported extension, an unreadable
    file, a mapped column the data lacks, refused bad rows, or no usable row at all.
    """
    if on_bad not in ("skip", "refuse"):
        raise ConfigError(f"on_bad={on_bad!r}; expected 'skip' or 'refuse'")
    if not isinstance(fields, FieldMap):
        raise TypeError(f"fields must be a FieldMap, not {type(fields).__name__}")
    path = Path(source)
    if path.is_dir():
        raise DataError(f"data source {str(path)!r} is a directory; pass one data file")
    if path.is_file():
        if split is not None:
            raise ConfigError(f"split={split!r} applies to hub datasets; {str(path)!r} is a local file "
                             "(one split): pass split=None and split the examples instead")
        columns, fingerprint_of_data = _read_local(path, fields)
        # A CSV reader turns only an empty cell into None (see _read_local).
        null = "empty cell" if path.suffix.lower() == ".csv" else "null"
    elif isinstance(source, str) and looks_like_hub_name(source):
        columns, fingerprint_of_data = _read_hub(source, split or "train", fields)
        null = "null"
    else:
        raise DataError(f"data file {str(path)!r} does not exist")
    where = str(source)
    report, rows = _check_rows(columns, fields, null)
    if report.skipped:
        if on_bad == "refuse":
            raise DataError(f"{where}: refusing {len(report.skipped)} bad row(s) of {report.total_rows} "
                            f"(on_bad='refuse'):\n{report.summary()}")
        log.warning("%s: %s", where, report.summary())
    if not rows:
        raise DataError(f"{where} has no usable rows: {report.summary()}")
    examples = [_example(columns, index, fields) for index in rows]
    fingerprint = _fingerprint(fingerprint_of_data, fields)
    return LoadedData(examples, report, fingerprint, where, fields)


def looks_like_hub_name(source: str) -> bool:
    """`owner/name` with no data-file extension: a hub dataset, not a (missing) local file."""
    return bool(_HUB_NAME.match(source)) and Path(source).suffix.lower() not in _FILE_SUFFIXES


def _read_local(path: Path, fields: FieldMap) -> tuple[dict[str, list[Any]], str]:
    """The mapped columns of a local file, and the sha256 of its bytes and format."""
    import datasets  # heavy: imported when data is loaded, not with the package

    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"data file {str(path)!r} has extension {path.suffix or '(none)'!r}; "
                        f"supported: {', '.join(sorted(LOADERS))}")
    options: dict[str, Any] = {}
    if loader == "csv":
        # Every column as text, and only an empty cell as missing: pandas would otherwise
        # turn "007" into 7 and the word "NA" or "null" into a missing value.
        header = _csv_header(path)
        options = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                   "keep_default_na": False, "na_values": [""]}
    try:
        # A private, throw-away cache: nothing accumulates in the user's cache, and a file
        # rewritten in place can never be served from a stale cached copy.
        with tempfile.TemporaryDirectory(prefix="stagewise-data-") as cache, _quiet_datasets():
            dataset = datasets.load_dataset(loader, data_files=str(path), split="train",
                                            cache_dir=cache, keep_in_memory=True, **options)
            columns = _mapped_columns(dataset, fields, repr(str(path)))
    except (datasets.exceptions.DatasetsError, ValueError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, DataError):
            raise
        cause = exc.__cause__ or exc
        if "corresponds to no data" in str(cause):  # how `datasets` says the file had zero rows
            raise DataError(f"data file {str(path)!r} has no data rows") from None
        raise DataError(f"data file {str(path)!r} could not be read as {loader}: "
                        f"{type(cause).__name__}: {str(cause).strip()}") from exc
    digest = hashlib.sha256(f"{loader}\0".encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return columns, digest.hexdigest()


@contextmanager
def _quiet_datasets():
    """No progress bar while reading one local file (it would flash "Generating train split" on stderr)."""
    import datasets

    was_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _csv_header(path: Path) -> list[str]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {str(path)!r} is not UTF-8 text: {exc}") from None
    if not header:
        raise DataError(f"data file {str(path)!r} is empty (no header row)")
    # pandas names a column with an empty header (a saved DataFrame index) "Unnamed: <position>".
    header = [name or f"Unnamed: {position}" for position, name in enumerate(header)]
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise DataError(f"data file {str(path)!r} repeats column(s) {duplicates} in its header; "
                        "a column must be named once to be mapped")
    return header


def _read_hub(name: str, split: str, fields: FieldMap) -> tuple[dict[str, list[Any]], str]:
    """The mapped columns of a hub dataset split, and its `datasets` fingerprint."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as exc:
        raise DataError(f"hub dataset {name!r} (split {split!r}) could not be loaded: "
                        f"{type(exc).__name__}: {exc}") from exc
    columns = _mapped_columns(dataset, fields, f"hub dataset {name!r} (split {split!r})")
    # The dataset's own fingerprint identifies its content and processing; the name and
    # split are added because the fingerprint of a freshly downloaded split is per split.
    return columns, hashlib.sha256(f"hub\0{name}\0{split}\0{dataset._fingerprint}".encode()).hexdigest()


def _mapped_columns(dataset, fields: FieldMap, where: str) -> dict[str, list[Any]]:
    available = list(dataset.column_names)
    for name, column in fields.fields().items():
        if column not in available:
            kind = "input" if name in fields.inputs else "label"
            raise DataError(f"{kind} column {column!r} (mapped to field {name!r}) is not in {where}; "
                            f"its columns are {available}")
    return dataset.select_columns(fields.columns()).to_dict()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _missing(value: Any, null: str = "null") -> str | None:
    """Why `value` counts as missing, or None when it is present; `null` names what None was in the file."""
    if value is None:
        return f"missing value ({null})"
    if isinstance(value, float) and math.isnan(value):
        return "missing value (NaN)"
    if isinstance(value, str) and not value.strip():
        return "missing value (empty string)" if not value else "missing value (blank string)"
    if isinstance(value, (list, tuple, dict)) and not value:
        return f"missing value (empty {_kind(value)})"
    return None


def _check_rows(columns: dict[str, list[Any]], fields: FieldMap, null: str) -> tuple[LoadReport, list[int]]:
    """The report of bad rows, and the indices of the rows kept."""
    total = len(next(iter(columns.values())))
    # The kind a column is meant to hold is the kind most of its present values have.
    expected = {}
    for column, values in columns.items():
        kinds = Counter(_kind(v) for v in values if _missing(v) is None)
        expected[column] = kinds.most_common(1)[0][0] if kinds else None
    field_of = {}
    for name, column in fields.fields().items():
        field_of.setdefault(column, name)

    skipped, kept = [], []
    for index in range(total):
        problems = []
        for column, values in columns.items():
            reason = _problem(values[index], expected[column], null)
            if reason:
                problems.append((column, f"{reason} for field {field_of[column]!r}"))
        if not problems:
            kept.append(index)
            continue
        (column, reason), others = problems[0], problems[1:]
        if others:
            reason += "; also " + "; ".join(f"column {c!r}: {r}" for c, r in others)
        skipped.append(SkippedRow(index + 1, column, reason))
    return LoadReport(total, len(kept), skipped), kept


def _problem(value: Any, expected_kind: str | None, null: str) -> str | None:
    missing = _missing(value, null)
    if missing:
        return missing
    if isinstance(value, float) and math.isinf(value):
        return f"malformed value {value!r} (not a finite number)"
    kind = _kind(value)
    if kind != expected_kind:
        return f"malformed value {_snippet(value)} (a {kind} value in a column of {expected_kind} values)"
    return None


def _snippet(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _example(columns: dict[str, list[Any]], index: int, fields: FieldMap) -> dspy.Example:
    values = {name: columns[column][index] for name, column in fields.fields().items()}
    return dspy.Example(**values).with_inputs(*fields.inputs)


def _fingerprint(data_digest: str, fields: FieldMap) -> str:
    payload = json.dumps({"reader": _READER_VERSION, "data": data_digest, "fields": fields.as_dict()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
