"""What stagewise trusts: code runs only from where the operator said.

An exported directory's manifest and a checkpointed run's record name the factory that
rebuilds their program (`"module:function"`). A name read from a file or a database is
data, not an instruction: [`trusted_factory`][stagewise.optimize.trusted_factory] imports it only when the caller trusts
it, in one of three ways (the opt-in MLflow and Hugging Face use for remote code):

- the caller passes the factory (`stagewise.load(dir, factory=build)`);
- an installed package registers it as an entry point in the `stagewise.programs` group
  (`[project.entry-points."stagewise.programs"] support = "support:build"`): installing a
  package is already trusting its code;
- the caller trusts the directory's own code (`trust_code=True`, `--trust-code`): the
  factory is imported from the export's `code/` folder, which is on `sys.path` for that
  import only. A folder named in the file is never put on `sys.path`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from stagewise.errors import ExportError

__all__ = ["ENTRY_POINT_GROUP", "UntrustedCodeError", "import_factory", "registered_factories", "trusted_factory"]

ENTRY_POINT_GROUP = "stagewise.programs"

TRUST_OPTIONS = (f"pass the factory (stagewise.load(directory, factory=build)), register it as an entry point in "
                 f"the {ENTRY_POINT_GROUP!r} group of an installed package, or trust the directory's own code "
                 "(stagewise.load(directory, trust_code=True), or --trust-code on the command line)")


class UntrustedCodeError(ExportError):
    """Loading would import a factory named by a file or a database that the caller has not trusted."""


def import_factory(path: str, folder: str | Path | None = None) -> Callable:
    """The callable named `module:function`.

    With `folder`, it is importable from there too (for this import only: the folder does not stay
    on `sys.path`).

    This imports whatever it is given: call it with names the operator wrote (a study config, a
    command-line option), never with a name read from an export or a runs store (see
    [`trusted_factory`][stagewise.optimize.trusted_factory]).
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ExportError(f"factory {path!r} must be 'module:function'")
    folder = str(folder) if folder else None
    added = folder is not None and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"factory {path!r} cannot be imported: {exc}") from None
    finally:
        if added:
            sys.path.remove(folder)


def registered_factories() -> dict[str, str]:
    """Entry points of the `stagewise.programs` group, by name and by value, each mapped to the value.

    The value is `module:function`; a manifest may name either.
    """
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        value = point.value.replace(" ", "")
        found[point.name] = found[value] = value
    return found


def trusted_factory(name: str, *, where: str, factory: str | Callable | None = None,
                    code: Path | None = None, trust_code: bool = False) -> Callable:
    """The factory that rebuilds a program `where` (an export or a run) names `name`, if trusted.

    `factory` (a callable, or `"module:function"` the caller wrote) wins; then an entry point
    registered for `name`; then, with `trust_code`, `name` itself, imported from `code` (the
    export's own `code/` folder) when given. Otherwise an [`UntrustedCodeError`][stagewise.optimize.UntrustedCodeError]
    naming the options, and nothing is imported.
    """
    if factory is not None:
        return factory if callable(factory) else import_factory(factory)
    registered = registered_factories().get(str(name).replace(" ", ""))
    if registered is not None:
        return import_factory(registered)
    if trust_code:
        return import_factory(name, code if code is not None and code.is_dir() else None)
    raise UntrustedCodeError(f"{where} names the factory {name!r}, which stagewise does not import on a file's "
                             f"word: {TRUST_OPTIONS}")
