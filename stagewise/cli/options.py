"""What several `stagewise` commands share.

The console they print to, the help texts of their common options, and how those options' values
are read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console

from stagewise.models.catalog import ModelCatalog

__all__ = ["RUNS_STORE_HELP", "STORAGE_HELP", "TRUST_CODE_HELP", "console", "load_catalog", "pairs", "progress_bar",
           "runs_store"]

# Tables are wider than 80 columns: never squeeze them when output goes to a pipe or a file.
console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120), soft_wrap=True)
"""Where every command prints its results."""

# Shared by `optimize` and `worker`: the URLs a study's storage may have.
STORAGE_HELP = ("The study's Optuna storage URL: sqlite:///path, postgresql://user:password@host/db, "
                "journal:///path or redis://host:port/db")
"""The URLs a study's storage may have, shown by `optimize --storage` and `worker --storage`."""

TRUST_CODE_HELP = ("Import the program's factory from the directory's own code/ (or, for a run, the factory "
                   "its record names). Without it only factories registered as 'stagewise.programs' entry "
                   "points load: nothing a file names runs unless you say so.")
"""The help of `--trust-code` (`evaluate`, `serve`, `replay`)."""

RUNS_STORE_HELP = "Checkpoint store URL (default: $STAGEWISE_RUNS or sqlite:///stagewise-runs.db)."
"""The help of `--store` (`diff`, `replay`, `runs list`, `runs show`)."""


def load_catalog(path: Path | None) -> ModelCatalog:
    """The model catalog, with the user catalog file `path` (`--catalog`) added."""
    return ModelCatalog.load(path)


def pairs(items: list[str] | None, option: str, form: str, *, empty: bool = False) -> dict[str, str]:
    """`NAME=VALUE` options as a dict (`empty`: VALUE may be empty); a ConfigError names the item at fault."""
    from stagewise.errors import ConfigError

    parsed = {}
    for item in items or []:
        key, equals, value = item.partition("=")
        if not equals or not key or not (value or empty):
            raise ConfigError(f"{option} {item!r}: expected {form}")
        parsed[key] = value
    return parsed


def runs_store(url: str | None):
    """The checkpoint store `--store` names (default: $STAGEWISE_RUNS, else sqlite:///stagewise-runs.db)."""
    from stagewise.runtime.checkpoint import open_checkpoints

    return open_checkpoints(url or os.environ.get("STAGEWISE_RUNS"))


def progress_bar(console_: Console):
    """A transient progress bar on `console_`: description, bar, done of total, time remaining."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console_, transient=True)
