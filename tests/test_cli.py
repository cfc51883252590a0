"""The `stagewise` command: catalog listing, the demo, and its errors."""

import pytest
from typer.testing import CliRunner

from stagewise.cli import app

runner = CliRunner()


def test_models_lists_the_catalog_with_prices():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output and "gpt-4o-mini" in result.output
    assert "notional" in result.output and "litellm" in result.output


def test_models_with_a_malformed_catalog_names_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nprovider = "p"\nengine = "warp"\nmodel = "m"\ntokenizer = "t"\n')
    result = runner.invoke(app, ["models", "--catalog", str(bad)])
    assert result.exit_code == 2
    assert "entry 'x'" in result.output and "engine" in result.output and "Traceback" not in result.output


def test_demo_with_an_unknown_model_is_a_clear_error():
    result = runner.invoke(app, ["demo", "--triage-model", "smollm"])
    assert result.exit_code == 2
    assert "Did you mean" in result.output and "smollm2-135m" in result.output


@pytest.mark.local_model
def test_demo_runs_both_local_models_and_reports_usage_per_stage():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert result.output.count("triage: category=") == 3
    assert "Usage per stage" in result.output and "gemma3-270m" in result.output and "smollm2-135m" in result.output
