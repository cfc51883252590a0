"""What the `stagewise` command's tables show: every column the README promises, and `-` for an absent value."""

import pytest
from typer.testing import CliRunner

from stagewise import cli
from stagewise.cli.options import console
from stagewise.models.catalog import ModelCatalog

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch):
    """Rows on one line each, whatever the terminal running the tests."""
    monkeypatch.setattr(console, "width", 400)  # the console every command prints its tables to


def _table(output: str) -> tuple[list[str], list[list[str]]]:
    """A rich table's header and body rows, as lists of cells."""
    header, rows = None, []
    for line in output.splitlines():
        if line.startswith("┃"):
            header = [cell.strip() for cell in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return header, rows


def test_models_shows_each_models_tokenizer_from_its_catalog_entry(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text('[models.my-vllm]\nprovider = "openai-compatible"\nengine = "litellm"\n'
                    'model = "openai/Qwen2.5-7B-Instruct"\napi_base = "http://127.0.0.1:8000/v1"\n'
                    'input_price = 0.1\noutput_price = 0.3\ncontext_window = 32768\nmax_output = 4096\n'
                    'tokenizer = "p50k_base"\n')
    result = runner.invoke(cli.app, ["models", "--catalog", str(user)])
    assert result.exit_code == 0, result.output
    header, body = _table(result.output)
    rows = {cells[0]: cells for cells in body}
    assert "tokenizer" in header
    column = header.index("tokenizer")
    specs = {spec.name: spec for spec in ModelCatalog.load(user)}
    assert set(rows) == set(specs)
    assert {name: cells[column] for name, cells in rows.items()} == {name: s.tokenizer for name, s in specs.items()}
    assert rows["my-vllm"][column] == "p50k_base" and rows["smollm2-135m"][column] == "llama.cpp"


def test_compare_shows_a_dash_where_a_trained_router_left_its_decision_stage_without_a_model(tmp_path, monkeypatch):
    from stagewise.optimize.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker("banking", uri=uri)
    with tracker.study("banking", {"trials": 2}):
        # What the study logs: a trained classifier stands in for the decision stage "route",
        # which then has no model, optimizer or demos (stagewise.optimize.space.TrialChoice.params).
        tracker.trial(0, {"support.decision": "llm", "route.model": "smollm2-135m", "cards.model": "gemma3-270m"},
                      {"quality": 0.5, "cost_per_1k_requests": 0.02}, "complete")
        tracker.trial(1, {"support.decision": "trained", "support.features": "char", "cards.model": "smollm2-135m"},
                      {"quality": 0.75, "cost_per_1k_requests": 0.01}, "complete")
    result = runner.invoke(cli.app, ["compare", "--experiment", "banking"])
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower()
    header, rows = _table(result.output)
    assert header[5:] == ["support.decision", "cards.model", "route.model"]  # as optimize's front: decisions first
    trials = {cells[1]: dict(zip(header, cells)) for cells in rows}
    assert trials["1"]["support.decision"] == "trained" and trials["1"]["route.model"] == "-"
    assert trials["0"]["support.decision"] == "llm" and trials["0"]["route.model"] == "smollm2-135m"
    assert [trials[t]["quality"] for t in ("1", "0")] == ["0.750", "0.500"]
