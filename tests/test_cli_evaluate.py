"""`stagewise evaluate --data FILE`: the file needs the label columns, and its help and the README say so."""

import re
import sys

from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.optimize.config import load_config
from stagewise.optimize.export import export

from .conftest import ROOT
from .documentation import doc_text

BANKING = ROOT / "examples" / "banking"
runner = CliRunner()


def _exported_banking_program(directory):
    """An export as `stagewise optimize` writes it: with the study's column maps and metrics (`evaluation`)."""
    config = load_config(BANKING / "study.toml")
    sys.path.insert(0, str(BANKING))
    try:
        program = config.build().set_models({"route": "smollm2-135m", "cards": "smollm2-135m",
                                             "payments": "smollm2-135m"})
        return export(program, directory, factory=config.factory, factory_path=str(BANKING),
                      extra={"evaluation": config.evaluation()})
    finally:
        sys.path.remove(str(BANKING))


def test_a_data_file_without_a_label_column_is_one_line_naming_the_column_and_the_file(tmp_path):
    best = _exported_banking_program(tmp_path / "best")
    data = tmp_path / "new_messages.csv"
    data.write_text("text,area\nMy card has not arrived yet,cards\n")  # the study's labels: area and intent
    result = runner.invoke(app, ["evaluate", str(best), "--data", str(data), "--trust-code"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: label column 'intent' (mapped to field 'intent') is not in ")
    assert repr(str(data)) in line and "'text', 'area'" in line


def test_the_help_and_the_readme_say_the_file_needs_the_label_columns():
    result = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "the file needs the input columns and every label column the metrics score against" in result.output
    readme = " ".join(doc_text().split())
    said = readme.split("`evaluate --data FILE` reads the file with the column maps", 1)[1].split(";", 1)[0]
    assert "needs the input columns and every label column" in said
    example = re.search(r"for the banking example ((?:`\w+`(?:, | and )?)+)", said).group(1)
    evaluation = load_config(BANKING / "study.toml").evaluation()
    assert re.findall(r"`(\w+)`", example) == [*evaluation["inputs"].values(), *evaluation["labels"].values()]
