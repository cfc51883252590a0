"""Reading the TOML files users write: catalogs, study configs, pipeline configs.

Errors say which file is missing or malformed, and what is read is bounded in size.
"""

from __future__ import annotations

import tomllib
from typing import Any

MAX_TOML_BYTES = 1_000_000  # a config or catalog larger than this is not one a person wrote


def read_toml(path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The parsed file at `path` (a Path or a package resource).

    Raises:
        error: Naming `what` the file is ("catalog file models.toml", "config 'study.toml'"), when
            it is missing, larger than `MAX_TOML_BYTES`, not UTF-8, or not valid TOML.
    """
    try:
        size = path.stat().st_size if hasattr(path, "stat") else None
        if size is not None and size > MAX_TOML_BYTES:
            raise error(f"{what} is {size:,} bytes, more than the {MAX_TOML_BYTES:,} a TOML file may have")
        if hasattr(path, "is_dir") and path.is_dir():
            raise error(f"{what} is a directory, not a TOML file")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{what} nests too deeply") from None
