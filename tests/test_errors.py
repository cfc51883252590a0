"""One error tree, and no traceback for a user's mistake."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import stagewise
from stagewise.cli import app
from stagewise.errors import ConfigError, StagewiseError

STAGEWISE = str(Path(sys.executable).with_name("stagewise"))


def _stagewise_modules():
    for info in pkgutil.walk_packages(stagewise.__path__, "stagewise."):
        yield importlib.import_module(info.name)


def test_every_exception_class_stagewise_defines_derives_from_stagewise_error():
    defined = {obj for module in _stagewise_modules() for _, obj in inspect.getmembers(module, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__.startswith("stagewise")}
    assert len(defined) >= 30  # the walk found the package's error classes, not an empty set
    assert sorted(c.__qualname__ for c in defined if not issubclass(c, StagewiseError)) == []
    names = [c.__name__ for c in defined]
    assert sorted({n for n in names if names.count(n) > 1}) == []  # no two errors share a name


def _config(folder: Path, factory_source: str) -> Path:
    (folder / "rows.csv").write_text("text,label\n" + "".join(f"message {i},{'ab'[i % 2]}\n" for i in range(12)))
    (folder / "factory42.py").write_text(factory_source)
    config = folder / "study.toml"
    config.write_text("""
[program]
factory = "factory42:build"

[data]
path = "rows.csv"
inputs = { message = "text" }
labels = { label = "label" }

[metrics]
end_to_end = { output = "label", label = "label", metric = "label_accuracy" }

[search]
trials = 1

[search.stages.classify]
models = ["smollm2-135m"]
""")
    return config


def test_a_factory_that_returns_42_is_one_line_and_exit_code_2(tmp_path):
    config = _config(tmp_path, "def build():\n    return 42\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("STAGEWISE_DEBUG", None)
    result = subprocess.run([STAGEWISE, "optimize", str(config), "--out", str(tmp_path / "out")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: config ") and str(config) in lines[0]
    assert ("[program] factory 'factory42:build' returned builtins.int (42), not a program: expected a DSPy "
            "program (a dspy.Module, whose predictors are its stages) or a stagewise program") in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_config_naming_a_stage_the_plain_program_lacks_lists_its_stages(tmp_path):
    config = _config(tmp_path, "import dspy\n\n\nclass Classify(dspy.Module):\n"
                               "    def __init__(self):\n        super().__init__()\n"
                               "        self.label = dspy.ChainOfThought('message -> label')\n\n"
                               "    def forward(self, message):\n        return self.label(message=message)\n\n\n"
                               "def build():\n    return Classify()\n")
    result = CliRunner().invoke(app, ["optimize", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "the program has no stage 'classify' (stages: label.predict)" in result.output


def test_debug_shows_the_traceback(tmp_path):
    config = _config(tmp_path, "def build():\n    return 42\n")
    result = CliRunner().invoke(app, ["--debug", "optimize", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)


@pytest.mark.parametrize("args, message", [
    (["optimize", "missing.toml"], "missing.toml"),
    (["evaluate", "no-such-dir", "--data", "x.csv"], "no-such-dir"),
    (["diff", "no-such-run", "--store", "memory://"], "no-such-run"),
    (["serve", "no-such-dir", "--no-auth", "--fallback", "broken"], "--fallback 'broken': expected STAGE=MODEL"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output and "Traceback" not in result.output
