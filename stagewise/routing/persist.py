"""Save and load trained routers without pickle, in skops' format.

A skops file lists the types it would build; loading refuses any type that is neither one of
scikit-learn's, NumPy's or SciPy's that skops trusts by default nor one of this package's
routers and features. Loading an untrusted file therefore cannot run its code.
"""

from __future__ import annotations

from pathlib import Path

from skops import io as skops_io

from stagewise.errors import ExportError

OWN_TYPES = "stagewise.routing."


class RouterFileError(ExportError):
    """A router file is missing, unreadable or asks for types this package does not trust."""


def save_router(router, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skops_io.dump(router, path)
    return path


def load_router(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise RouterFileError(f"router file {str(path)!r} does not exist")
    try:
        untrusted = skops_io.get_untrusted_types(file=path)
    except Exception as exc:  # a zip that is not a skops file, or not a zip at all
        raise RouterFileError(f"router file {str(path)!r} is not a skops file: {exc}") from None
    foreign = [t for t in untrusted if not t.startswith(OWN_TYPES)]
    if foreign:
        raise RouterFileError(f"router file {str(path)!r} asks for types stagewise does not trust: {foreign}")
    return skops_io.load(path, trusted=untrusted)
