"""Dataset loading (CSV, JSONL, Parquet) with reported bad rows and fingerprints; deterministic splits."""

import json
import logging
import shutil

import pandas as pd
import pytest

from stagewise.data import (
    DataError,
    FieldMap,
    load_dataset_file,
    looks_like_hub_name,
    split,
    split_fingerprint,
)

from .conftest import DATA

BANKING77 = DATA / "banking77" / "train.csv"
TEXT_TO_LABEL = FieldMap(inputs={"text": "text"}, labels={"label": "category"})


@pytest.fixture(scope="module")
def banking_frame() -> pd.DataFrame:
    """The first 300 rows of banking77, with a reply column so a row has two stage labels."""
    frame = pd.read_csv(BANKING77, nrows=300, dtype=str, keep_default_na=False)
    # A final-answer label next to the router label, as a two-stage program would have.
    frame["reply"] = "Routed to the " + frame["category"].str.replace("_", " ") + " team."
    return frame


@pytest.fixture
def banking_csv(tmp_path, banking_frame):
    path = tmp_path / "banking.csv"
    banking_frame.to_csv(path, index=False)
    return path


def _broken_csv(tmp_path, banking_frame, name="broken.csv"):
    """banking rows with cells emptied on purpose: data rows 3, 7 and 12 (1-based)."""
    frame = banking_frame.copy()
    frame.loc[2, "text"] = ""  # row 3: empty input
    frame.loc[6, "category"] = "   "  # row 7: blank label
    frame.loc[11, ["text", "reply"]] = ""  # row 12: two bad columns in one row
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- loading


def test_csv_loads_banking_rows_as_examples(banking_csv, banking_frame):
    data = load_dataset_file(banking_csv, TEXT_TO_LABEL)
    assert len(data.examples) == 300
    assert (data.report.total_rows, data.report.kept, data.report.skipped) == (300, 300, [])
    assert data.report.summary() == "300 rows, all kept"
    first = data.examples[0]
    assert first.text == banking_frame.loc[0, "text"] == "I am still waiting on my card?"
    assert first.label == "card_arrival"
    assert set(first.inputs().keys()) == {"text"} and set(first.labels().keys()) == {"label"}
    # Only the mapped fields are carried, in file order.
    assert set(first.keys()) == {"text", "label"}
    assert [e.text for e in data.examples] == banking_frame["text"].tolist()
    assert data.source == str(banking_csv) and data.fields == TEXT_TO_LABEL


def test_csv_cells_stay_text(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("question,answer\nzip code of the office?,007\nwhat does NA stand for?,NA\n")
    data = load_dataset_file(path, FieldMap.identity(inputs=["question"], labels=["answer"]))
    assert [e.answer for e in data.examples] == ["007", "NA"]


def test_per_stage_labels_from_one_row(banking_csv):
    fields = FieldMap(inputs={"query": "text"}, labels={"route": "category", "answer": "reply"})
    data = load_dataset_file(banking_csv, fields)
    example = data.examples[0]
    assert example.query == "I am still waiting on my card?"
    assert example.route == "card_arrival"
    assert example.answer == "Routed to the card arrival team."
    assert set(example.inputs().keys()) == {"query"}
    assert set(example.labels().keys()) == {"route", "answer"}


def test_jsonl_json_and_parquet_load_the_same_examples_as_csv(tmp_path, banking_csv, banking_frame):
    expected = [e.toDict() for e in load_dataset_file(banking_csv, TEXT_TO_LABEL).examples]
    jsonl, json_array, parquet = tmp_path / "b.jsonl", tmp_path / "b.json", tmp_path / "b.parquet"
    banking_frame.to_json(jsonl, orient="records", lines=True)
    banking_frame.to_json(json_array, orient="records")
    banking_frame.to_parquet(parquet, index=False)
    for path in (jsonl, json_array, parquet):
        data = load_dataset_file(path, TEXT_TO_LABEL)
        assert [e.toDict() for e in data.examples] == expected, path.name
        assert data.report.kept == 300


def test_json_and_parquet_values_keep_their_types(tmp_path):
    frame = pd.DataFrame({"question": ["2+2?", "3+3?"], "answer": [4, 6], "exact": [True, False]})
    for path in (tmp_path / "n.jsonl", tmp_path / "n.parquet"):
        if path.suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
        data = load_dataset_file(path, FieldMap.identity(inputs=["question"], labels=["answer", "exact"]))
        assert [(e.answer, e.exact) for e in data.examples] == [(4, True), (6, False)], path.name


def test_bad_rows_are_skipped_and_reported(tmp_path, banking_frame, caplog):
    path = _broken_csv(tmp_path, banking_frame)
    fields = FieldMap(inputs={"text": "text"}, labels={"label": "category", "answer": "reply"})
    with caplog.at_level(logging.WARNING, logger="stagewise.data.loading"):
        data = load_dataset_file(path, fields)
    report = data.report
    assert (report.total_rows, report.kept, len(report.skipped)) == (300, 297, 3)
    assert [(s.row, s.column) for s in report.skipped] == [(3, "text"), (7, "category"), (12, "text")]
    assert report.skipped[0].reason == "missing value (empty cell) for field 'text'"
    assert report.skipped[1].reason == "missing value (blank string) for field 'label'"
    assert "also column 'reply': missing value (empty cell)" in report.skipped[2].reason
    assert len(data.examples) == 297
    kept_texts = {e.text for e in data.examples}
    assert banking_frame.loc[6, "text"] not in kept_texts  # the row with the blank label is gone
    summary = report.summary()
    assert summary.startswith("300 rows: 297 kept, 3 skipped")
    assert "row 3, column 'text'" in summary and "row 12, column 'text'" in summary
    # Never silently dropped: the skip is also logged, naming the file.
    assert str(path) in caplog.text and "3 skipped" in caplog.text


def test_summary_shows_the_first_five_and_counts_the_rest(tmp_path, banking_frame):
    frame = banking_frame.copy()
    frame.loc[[10, 20, 30, 40, 50, 60, 70], "category"] = ""
    path = tmp_path / "many.csv"
    frame.to_csv(path, index=False)
    summary = load_dataset_file(path, TEXT_TO_LABEL).report.summary()
    assert "7 skipped" in summary
    assert [line.split(",")[0].strip() for line in summary.splitlines()[1:6]] == [
        "row 11", "row 21", "row 31", "row 41", "row 51"]
    assert "row 61" not in summary and summary.endswith("... and 2 more")


def test_refuse_raises_with_count_and_first_examples(tmp_path, banking_frame):
    path = _broken_csv(tmp_path, banking_frame)
    with pytest.raises(DataError) as caught:
        load_dataset_file(path, TEXT_TO_LABEL, on_bad="refuse")
    message = str(caught.value)
    assert str(path) in message
    # Row 12's bad `reply` column is not mapped here, but its empty `text` is.
    assert "refusing 3 bad row(s) of 300" in message
    assert "row 3, column 'text': missing value (empty cell)" in message
    assert "row 7, column 'category'" in message and "row 12, column 'text'" in message


def test_malformed_values_are_reported(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"q{i}", "answer": float(i)} for i in range(6)]
    rows[1]["question"] = {"text": "q1"}  # an object in a column of strings
    rows[4]["answer"] = "four"  # text in a column of numbers
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fields = FieldMap.identity(inputs=["question"], labels=["answer"])
    data = load_dataset_file(path, fields)
    assert [(s.row, s.column) for s in data.report.skipped] == [(2, "question"), (5, "answer")]
    assert data.report.skipped[0].reason == (
        "malformed value {'text': 'q1'} (a mapping value in a column of text values) for field 'question'")
    assert "malformed value 'four' (a text value in a column of number values)" in data.report.skipped[1].reason
    assert [(e.question, e.answer) for e in data.examples] == [("q0", 0.0), ("q2", 2.0), ("q3", 3.0), ("q5", 5.0)]
    with pytest.raises(DataError, match=r"refusing 2 bad row\(s\) of 6"):
        load_dataset_file(path, fields, on_bad="refuse")

    parquet = tmp_path / "scores.parquet"
    pd.DataFrame({"question": ["a", "b", "c"], "answer": [1.0, float("inf"), 2.0]}).to_parquet(parquet)
    report = load_dataset_file(parquet, fields).report
    assert [(s.row, s.column, s.reason) for s in report.skipped] == [
        (2, "answer", "malformed value inf (not a finite number) for field 'answer'")]


def test_a_file_with_no_usable_row_is_an_error(tmp_path):
    path = tmp_path / "empty_labels.csv"
    path.write_text("text,category\nhello,\nthere,\n")
    with pytest.raises(DataError, match=r"has no usable rows: 2 rows: 0 kept, 2 skipped"):
        load_dataset_file(path, TEXT_TO_LABEL)


# ---------------------------------------------------------------- loading errors


def test_unknown_extension_names_file_and_supported_ones(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("text\tcategory\nhi\tgreeting\n")
    with pytest.raises(DataError) as caught:
        load_dataset_file(path, TEXT_TO_LABEL)
    assert str(path) in str(caught.value)
    assert "'.tsv'" in str(caught.value) and "supported: .csv, .json, .jsonl, .parquet" in str(caught.value)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match=f"data file '{path}' does not exist"):
        load_dataset_file(path, TEXT_TO_LABEL)
    # An owner/name-shaped path with a data-file extension is a missing file, not a hub dataset.
    with pytest.raises(DataError, match="data file 'data/train.csv' does not exist"):
        load_dataset_file("data/train.csv", TEXT_TO_LABEL)


def test_hub_names_are_told_from_file_paths():
    assert looks_like_hub_name("PolyAI/banking77")
    assert looks_like_hub_name("openai/gsm8k")
    assert not looks_like_hub_name("data/train.csv")
    assert not looks_like_hub_name("train.jsonl")
    assert not looks_like_hub_name("/abs/path")
    assert not looks_like_hub_name("a/b/c")


def test_missing_column_names_column_field_file_and_columns(banking_csv):
    fields = FieldMap(inputs={"text": "text"}, labels={"answer": "response"})
    with pytest.raises(DataError) as caught:
        load_dataset_file(banking_csv, fields)
    message = str(caught.value)
    assert "column 'response'" in message and "field 'answer'" in message
    assert str(banking_csv) in message and "['text', 'category', 'reply']" in message


def test_unreadable_and_empty_files_are_named(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,category\nhello,greeting\ntoo,many,fields\n")
    with pytest.raises(DataError, match=f"data file '{ragged}' could not be read as csv: ParserError"):
        load_dataset_file(ragged, TEXT_TO_LABEL)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,category\n")
    with pytest.raises(DataError, match=f"data file '{header_only}' has no data rows"):
        load_dataset_file(header_only, TEXT_TO_LABEL)
    broken_json = tmp_path / "broken.jsonl"
    broken_json.write_text('{"text": "hi", "category": "greeting"}\n{"text": \n')
    with pytest.raises(DataError, match=f"data file '{broken_json}' could not be read as json"):
        load_dataset_file(broken_json, TEXT_TO_LABEL)
    with pytest.raises(DataError, match="is a directory"):
        load_dataset_file(tmp_path, TEXT_TO_LABEL)


def test_argument_errors(banking_csv):
    with pytest.raises(ValueError, match="split='test' applies to hub datasets"):
        load_dataset_file(banking_csv, TEXT_TO_LABEL, split="test")
    with pytest.raises(ValueError, match="on_bad='drop'"):
        load_dataset_file(banking_csv, TEXT_TO_LABEL, on_bad="drop")


def test_field_map_contract():
    assert FieldMap.identity(inputs=["question"], labels=["answer"]) == FieldMap({"question": "question"},
                                                                                 {"answer": "answer"})
    with pytest.raises(ValueError, match=r"\['text'\] are both inputs and labels"):
        FieldMap({"text": "text"}, {"text": "category"})
    with pytest.raises(ValueError, match="'labels' is reserved by dspy.Example"):
        FieldMap({"text": "text"}, {"labels": "category"})
    with pytest.raises(ValueError, match="'my field' is not a Python identifier"):
        FieldMap({"my field": "text"})
    with pytest.raises(ValueError, match="at least one input field"):
        FieldMap({}, {"label": "category"})
    columns = {"query": "text"}
    fields = FieldMap(columns)
    columns["query"] = "changed"  # the map keeps its own copy
    assert fields.inputs == {"query": "text"}


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_for_same_bytes_and_mapping(tmp_path, banking_csv):
    first = load_dataset_file(banking_csv, TEXT_TO_LABEL).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    assert load_dataset_file(banking_csv, TEXT_TO_LABEL).fingerprint == first
    # Content, not location: the same bytes elsewhere fingerprint the same.
    moved = tmp_path / "elsewhere" / "copy.csv"
    moved.parent.mkdir()
    shutil.copy(banking_csv, moved)
    assert load_dataset_file(moved, TEXT_TO_LABEL).fingerprint == first


def test_fingerprint_changes_with_the_mapping_or_one_cell(tmp_path, banking_csv, banking_frame):
    base = load_dataset_file(banking_csv, TEXT_TO_LABEL).fingerprint
    renamed = FieldMap(inputs={"query": "text"}, labels={"label": "category"})
    other_label = FieldMap(inputs={"text": "text"}, labels={"label": "reply"})
    assert load_dataset_file(banking_csv, renamed).fingerprint != base
    assert load_dataset_file(banking_csv, other_label).fingerprint != base
    edited = banking_frame.copy()
    edited.loc[150, "text"] = edited.loc[150, "text"] + "!"
    edited_path = tmp_path / "edited.csv"
    edited.to_csv(edited_path, index=False)
    assert load_dataset_file(edited_path, TEXT_TO_LABEL).fingerprint != base
    # A file rewritten in place is read afresh (no stale cached copy), with a new fingerprint.
    edited.to_csv(banking_csv, index=False)
    reloaded = load_dataset_file(banking_csv, TEXT_TO_LABEL)
    assert reloaded.examples[150].text.endswith("!") and reloaded.fingerprint != base


# ---------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def banking_examples(tmp_path_factory, banking_frame):
    path = tmp_path_factory.mktemp("split") / "banking.csv"
    banking_frame.to_csv(path, index=False)
    return load_dataset_file(path, TEXT_TO_LABEL).examples


@pytest.fixture(scope="module")
def five_per_label(tmp_path_factory):
    """Five banking77 rows for each of its 77 labels."""
    frame = pd.read_csv(BANKING77, dtype=str, keep_default_na=False).groupby("category").head(5)
    path = tmp_path_factory.mktemp("strat") / "five.csv"
    frame.to_csv(path, index=False)
    return load_dataset_file(path, TEXT_TO_LABEL).examples


def test_split_is_deterministic_for_a_seed(banking_examples):
    original = list(banking_examples)
    first = split(banking_examples, train=0.7, dev=0.15, test=0.15, seed=13)
    again = split(banking_examples, train=0.7, dev=0.15, test=0.15, seed=13)
    assert first == again and split_fingerprint(first) == split_fingerprint(again)
    assert first.sizes() == {"train": 210, "dev": 45, "test": 45}
    assert banking_examples == original  # the input is not reordered
    together = first.train + first.dev + first.test
    assert sorted(map(id, together)) == sorted(map(id, banking_examples))  # a partition of the input
    assert first.train[:5] != banking_examples[:5]  # shuffled, not cut in file order


def test_a_different_seed_gives_different_splits(banking_examples):
    first = split(banking_examples, train=0.7, dev=0.15, test=0.15, seed=13)
    other = split(banking_examples, train=0.7, dev=0.15, test=0.15, seed=14)
    assert other.sizes() == first.sizes()
    assert [e.text for e in other.train] != [e.text for e in first.train]
    assert split_fingerprint(other) != split_fingerprint(first)


def test_zero_fraction_gives_an_empty_split(banking_examples):
    splits = split(banking_examples, train=0.9, dev=0.0, test=0.1, seed=0)
    assert splits.sizes() == {"train": 270, "dev": 0, "test": 30}


def test_stratified_split_keeps_every_label_in_train(five_per_label):
    labels = {e.label for e in five_per_label}
    assert len(labels) == 77 and len(five_per_label) == 385
    stratified = split(five_per_label, train=0.2, dev=0.4, test=0.4, seed=3, stratify_by="label")
    assert stratified.sizes() == {"train": 77, "dev": 154, "test": 154}
    for part, per_label in ((stratified.train, 1), (stratified.dev, 2), (stratified.test, 2)):
        counts = pd.Series([e.label for e in part]).value_counts()
        assert set(counts.index) == labels and set(counts) == {per_label}
    # Without stratification, a 20% train split loses whole labels (the point of stratifying).
    plain = split(five_per_label, train=0.2, dev=0.4, test=0.4, seed=3)
    assert plain.sizes() == stratified.sizes()
    assert {e.label for e in plain.train} < labels
    again = split(five_per_label, train=0.2, dev=0.4, test=0.4, seed=3, stratify_by="label")
    assert split_fingerprint(again) == split_fingerprint(stratified)


def test_stratified_sizes_match_the_plain_split_for_uneven_labels(banking_examples):
    # 153 card_arrival, 139 card_linking and 8 exchange_rate rows.
    stratified = split(banking_examples, train=0.7, dev=0.15, test=0.15, seed=5, stratify_by="label")
    assert stratified.sizes() == {"train": 210, "dev": 45, "test": 45}
    train_counts = pd.Series([e.label for e in stratified.train]).value_counts().to_dict()
    assert train_counts["exchange_rate"] >= 5  # floor(8 * 0.7)
    assert train_counts["card_arrival"] >= 107 and train_counts["card_linking"] >= 97


def test_stratify_by_a_missing_field_is_named(banking_examples):
    with pytest.raises(DataError, match=r"cannot stratify by 'route': example 0 has no such field"):
        split(banking_examples, train=0.8, dev=0.1, test=0.1, seed=0, stratify_by="route")


def test_fractions_must_sum_to_one(banking_examples):
    with pytest.raises(ValueError, match=r"train=0.8, dev=0.1, test=0.2 sum to 1.1"):
        split(banking_examples, train=0.8, dev=0.1, test=0.2, seed=0)
    with pytest.raises(ValueError, match=r"dev=-0.1 must be a number in \[0, 1\]"):
        split(banking_examples, train=1.0, dev=-0.1, test=0.1, seed=0)
    # Float noise within 1e-9 is accepted.
    assert sum(split(banking_examples, train=0.7, dev=0.2, test=0.1, seed=0).sizes().values()) == 300


def test_an_empty_split_is_an_error(banking_examples):
    few = banking_examples[:5]
    with pytest.raises(DataError) as caught:
        split(few, train=0.8, dev=0.1, test=0.1, seed=0)
    assert "split 'test' would be empty" in str(caught.value)
    assert "sizes train=4, dev=1, test=0" in str(caught.value)
    with pytest.raises(DataError, match="no examples to split"):
        split([], train=0.8, dev=0.1, test=0.1, seed=0)


def test_split_fingerprint_follows_content_and_order(banking_examples):
    splits = split(banking_examples, train=0.8, dev=0.1, test=0.1, seed=1)
    copies = type(splits)([e.copy() for e in splits.train], list(splits.dev), list(splits.test))
    assert split_fingerprint(copies) == split_fingerprint(splits)
    swapped = type(splits)(splits.train[1:] + splits.train[:1], splits.dev, splits.test)
    assert split_fingerprint(swapped) != split_fingerprint(splits)


def test_a_hub_dataset_that_cannot_be_reached_is_a_clear_error(monkeypatch, tmp_path):
    """No network here: an offline hub load names the dataset and the split, and loses nothing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"hub dataset 'PolyAI/banking77' \(split 'test'\) could not be loaded"):
        load_dataset_file("PolyAI/banking77", FieldMap(inputs={"message": "text"}), split="test")
