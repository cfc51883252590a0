"""What the `stagewise` command's tables show: every column the README promises, and `-` for an absent value."""

import pytest
from typer.testing import CliRunner

from stagewise import cli
from stagewise.models.catalog import ModelCatalog

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch):
    """Rows on one line each, whatever the terminal running the tests."""
    monkeypatch.setattr(cli.console, "width", 400)


def _rows(output: str) -> dict[str, list[str]]:
    """A rich table's body as {first cell: cells}."""
    rows = {}
    for line in output.splitlines():
        if line.startswith(("│", "┃")):
            cells = [cell.strip() for cell in line.strip("│┃").split("│" if line.startswith("│") else "┃")]
            rows[cells[0]] = cells
    return rows


def test_models_shows_each_models_tokenizer_from_its_catalog_entry(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text('[models.my-vllm]\nprovider = "openai-compatible"\nengine = "litellm"\n'
                    'model = "openai/Qwen2.5-7B-Instruct"\napi_base = "http://127.0.0.1:8000/v1"\n'
                    'input_price = 0.1\noutput_price = 0.3\ncontext_window = 32768\nmax_output = 4096\n'
                    'tokenizer = "p50k_base"\n')
    result = runner.invoke(cli.app, ["models", "--catalog", str(user)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    header = rows.pop("name")
    assert "tokenizer" in header
    column = header.index("tokenizer")
    specs = {spec.name: spec for spec in ModelCatalog.load(user)}
    assert set(rows) == set(specs)
    assert {name: cells[column] for name, cells in rows.items()} == {name: s.tokenizer for name, s in specs.items()}
    assert rows["my-vllm"][column] == "p50k_base" and rows["smollm2-135m"][column] == "llama.cpp"
