"""Every `>>>` example in the stagewise package's docstrings runs as printed (stdlib doctest).

The examples are found with `doctest.DocTestFinder` in every module of the package, so a new one is
run as soon as it is written and none can drift from the code. They run from the repository root
(examples read `data/` and `examples/` paths) on recorded models, pure functions or construction only:
no local model is loaded, nothing reaches the network.
"""

import doctest
import importlib
import pkgutil

import dspy
import pytest

import stagewise

from .conftest import ROOT

MODULES = sorted(info.name for info in pkgutil.walk_packages(stagewise.__path__, "stagewise."))
FINDER = doctest.DocTestFinder(exclude_empty=True)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def examples_of(name: str) -> list[doctest.DocTest]:
    """The docstring examples of module `name` (its own objects only, not those it imports)."""
    module = importlib.import_module(name)
    return [test for test in FINDER.find(module, name) if test.examples]


EXAMPLES = [test for name in ["stagewise", *MODULES] for test in examples_of(name)]


def test_the_main_entry_points_have_examples():
    names = {test.name for test in EXAMPLES}
    for wanted in ("stagewise.load", "stagewise.errors.StagewiseError", "stagewise.data.splits.split",
                   "stagewise.optimize.optimizers.register_optimizer", "stagewise.evaluate", "stagewise.export",
                   "stagewise.runtime.runs.run"):
        assert wanted in names, f"no docstring example for {wanted}"


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda test: test.name)
def test_every_docstring_example_runs_as_printed(test, monkeypatch):
    monkeypatch.chdir(ROOT)
    adapter, lm = dspy.settings.adapter, dspy.settings.lm
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    try:
        runner.run(test, out=(report := []).append, clear_globs=True)
    finally:
        dspy.configure(adapter=adapter, lm=lm)
    assert runner.failures == 0, "".join(report)
