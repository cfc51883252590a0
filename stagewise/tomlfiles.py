"""Reading the TOML files users write (catalogs, study configs, pipeline configs), with errors
that say which file is missing or malformed."""

from __future__ import annotations

import tomllib
from typing import Any


def read_toml(path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The parsed file at ``path`` (a Path or a package resource); ``error`` names ``what`` it is
    ("catalog file models.toml", "config 'study.toml'") when it is missing or not valid TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {exc}") from None
