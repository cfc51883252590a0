"""`stagewise --help` and every command's: flags shown as flags, arguments as in a usage line
(`CONFIG`), one description of the study storage URLs, and the environment variables that
change what a command does named where they matter."""

import re

import pytest
from typer.testing import CliRunner

from stagewise.cli import STORAGE_HELP, app

runner = CliRunner()
COMMANDS = ["models", "demo", "worker", "optimize", "evaluate", "compare", "route-eval", "serve", "diff", "replay"]


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"},  # a wide terminal: one line an option
                           prog_name="stagewise")
    assert result.exit_code == 0, result.output
    return result.output


def _option_line(output: str, option: str) -> str:
    [line] = [line for line in output.splitlines() if re.search(rf"│\s+(\*\s+)?{re.escape(option)}\s", line)]
    return line


def _text(output: str) -> str:
    """The help as running text: panel borders and line breaks gone."""
    return " ".join(output.replace("│", " ").split())


def test_every_command_is_listed_and_has_help():
    listed = _help()
    assert [c for c in COMMANDS if re.search(rf"│ {re.escape(c)}\s", listed) is None] == []
    for command in COMMANDS:
        _help(command)


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_no_option_shows_a_bool_type(command):
    output = _help(*command)
    assert "<bool>" not in output
    assert re.fullmatch(r"│\s+--help\s+Show this message and exit\.\s+│", _option_line(output, "--help").strip())


@pytest.mark.parametrize("command, flag", [([], "--debug"), (["serve"], "--no-auth"), (["evaluate"], "--json"),
                                           (["route-eval"], "--json")])
def test_flags_show_as_flags_and_options_with_values_keep_their_type(command, flag):
    output = _help(*command)
    line = _option_line(output, flag)
    assert re.search(rf"{flag}\s+[A-Z]", line), line  # straight to its help text: no type, no metavar
    if command == ["serve"]:
        assert re.search(r"--port\s+<int>", _option_line(output, "--port"))


@pytest.mark.parametrize("command, usage", [
    ("optimize", "stagewise optimize [OPTIONS] CONFIG"), ("worker", "stagewise worker [OPTIONS] CONFIG"),
    ("evaluate", "stagewise evaluate [OPTIONS] DIRECTORY"), ("serve", "stagewise serve [OPTIONS] DIRECTORY"),
    ("diff", "stagewise diff [OPTIONS] RUN_ID"), ("replay", "stagewise replay [OPTIONS] RUN_ID"),
    ("compare", "stagewise compare [OPTIONS]"),
])
def test_usage_lines_name_arguments_in_capitals(command, usage):
    output = _help(command)
    [line] = [line.strip() for line in output.splitlines() if "Usage:" in line]
    assert line == f"Usage: {usage}"
    assert "{" not in output


def test_a_missing_argument_is_named_as_in_the_usage_line():
    result = runner.invoke(app, ["optimize"], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "Missing argument 'CONFIG'" in result.output


def test_optimize_and_worker_describe_the_storage_urls_alike():
    kinds = ["sqlite:///", "postgresql://", "journal:///", "redis://"]
    assert all(kind in STORAGE_HELP for kind in kinds)
    for command in ("optimize", "worker"):
        assert STORAGE_HELP in _text(_help(command)), command


@pytest.mark.parametrize("command, variables", [
    ("optimize", ["MLFLOW_TRACKING_URI", "STAGEWISE_CATALOG"]),
    ("worker", ["MLFLOW_TRACKING_URI", "STAGEWISE_CATALOG"]),
    ("compare", ["MLFLOW_TRACKING_URI"]),
    ("models", ["STAGEWISE_CATALOG"]),
    ("diff", ["STAGEWISE_RUNS"]),
])
def test_the_environment_variables_that_matter_are_named(command, variables):
    text = _text(_help(command))
    assert [v for v in variables if f"${v}" not in text] == []


def test_square_brackets_in_help_are_shown_not_read_as_markup():
    """`--tokens` showed "TOML file of tenants:  with token" and `--redact` "a TOML file with a  table":
    rich read ``[tenants.NAME]`` and ``[privacy]`` as markup. Every help text is plain text, however often
    the help is shown."""
    for _ in range(2):
        serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "400"}).output
        assert "TOML file of tenants: [tenants.NAME] with token" in serve
        assert "a TOML file with a [privacy] table" in serve
        replay = runner.invoke(app, ["replay", "--help"], env={"COLUMNS": "400"}).output
        assert "[ROUTER=]LABEL" in replay and "\\[" not in serve + replay
