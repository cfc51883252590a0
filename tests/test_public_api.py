"""The public API is by package: each package's ``__all__`` names what users import, every one of
those names exists and is documented, and README.md's code imports nothing else."""

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys

import pytest

from .conftest import ROOT
from .documentation import doc_text, fenced_blocks

PACKAGES = [
    "stagewise", "stagewise.programs", "stagewise.runtime", "stagewise.optimize", "stagewise.routing",
    "stagewise.models", "stagewise.data", "stagewise.metrics", "stagewise.context", "stagewise.signatures",
    "stagewise.cli",
]
# Packages whose docstring names every entry of their __all__ (the others' docstrings are only checked
# for being there).
LISTED = ["stagewise", "stagewise.programs", "stagewise.runtime", "stagewise.metrics", "stagewise.context",
          "stagewise.signatures"]


def _public(package: str) -> list[str]:
    module = importlib.import_module(package)
    if package == "stagewise.cli" and not hasattr(module, "__all__"):
        pytest.skip("stagewise.cli has no __all__")
    assert isinstance(module.__all__, list | tuple), f"{package}.__all__ must be a list"
    return list(module.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_exists_once_and_the_package_says_what_it_is(package):
    names = _public(package)
    module = importlib.import_module(package)
    assert len(names) == len(set(names)), f"{package}.__all__ repeats {sorted(n for n in names if names.count(n) > 1)}"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{package}.__all__ names what it does not have: {missing}"
    assert (module.__doc__ or "").strip(), f"{package} has no docstring"


def _undocumented(obj, name: str) -> bool:
    """A class or function without a docstring; a dataclass's generated signature is not one."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj)):
        return False  # constants and type aliases
    doc = inspect.getdoc(obj)
    return not doc or (inspect.isclass(obj) and doc.startswith(f"{name}("))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_class_and_function_has_a_docstring(package):
    module = importlib.import_module(package)
    undocumented = [name for name in _public(package) if _undocumented(getattr(module, name), name)]
    assert undocumented == [], f"{package}: no docstring for {undocumented}"


@pytest.mark.parametrize("package", LISTED)
def test_the_package_docstring_lists_its_public_names(package):
    module = importlib.import_module(package)
    doc = module.__doc__ or ""
    unlisted = [name for name in _public(package) if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", doc)]
    assert unlisted == [], f"{package}'s docstring does not name {unlisted}"


def test_the_top_level_api():
    import stagewise

    assert {"load", "export", "evaluate", "JointOptimizer", "StagewiseError"} <= set(stagewise.__all__)
    assert {"ConfigError", "DataError", "ModelError", "ProgramError", "BudgetError", "StoreError",
            "ExportError"} <= set(stagewise.__all__)
    assert set(stagewise.__all__) <= set(dir(stagewise))


def test_import_stagewise_and_its_runtime_stay_light():
    """``import stagewise`` loads no DSPy; ``stagewise.runtime`` loads no web framework, breaker or retry
    library until a name that needs one is used."""
    heavy = ["dspy", "fastapi", "uvicorn", "pybreaker", "tenacity"]
    code = (f"import json, sys, stagewise; top = [m for m in {heavy} if m in sys.modules]; "
            f"import stagewise.runtime; runtime = [m for m in {heavy} if m in sys.modules]; "
            "print(json.dumps([top, runtime]))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert json.loads(shown) == [[], ["dspy"]]


def test_the_documentations_python_imports_only_public_names():
    """In the README and on every page of docs/, each ``from stagewise... import X`` names a package whose
    ``__all__`` holds X; each ``import stagewise...`` names a package."""
    blocks = fenced_blocks(doc_text())
    assert blocks
    problems = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "stagewise":
                if node.module not in PACKAGES:
                    problems.append(f"from {node.module} import ...: not a package")
                    continue
                public = set(importlib.import_module(node.module).__all__)
                problems += [f"from {node.module} import {alias.name}: not in its __all__"
                             for alias in node.names if alias.name not in public]
            elif isinstance(node, ast.Import):
                problems += [f"import {alias.name}: not a package" for alias in node.names
                             if alias.name.split(".")[0] == "stagewise" and alias.name not in PACKAGES]
    assert problems == []
