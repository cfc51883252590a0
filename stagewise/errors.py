"""The one error tree: every exception stagewise raises derives from [`StagewiseError`][stagewise.StagewiseError].

Catch `StagewiseError` to handle any mistake stagewise can report; catch a branch to handle
one kind. The branches keep a standard-library parent where callers rely on it (a bad config
value is also a `ValueError`). Messages name the file, key or value at fault, and never
contain a password. The more specific classes live beside the code that raises them and
derive from one of these branches:

```text
StagewiseError
├── ConfigError (ValueError)       study configs, pipeline definitions, options
│   └── SearchSpaceError           a search space that cannot be searched
├── DataError (ValueError)         datasets, outcome tables, evaluation data
├── ModelError                     the catalog, engines, weights, provider keys, failed calls
├── ProgramError                   a program that cannot run as built (routes, plans, context)
├── BudgetError                    token budgets, spending budgets, rate limits
├── StoreError                     checkpoints, context stores, study storages, connections
└── ExportError (ValueError)       exported programs and router files: writing and loading
```

The `stagewise` command prints one line for any `StagewiseError` and exits with code 2
(`stagewise --debug ...` shows the traceback).
"""

from __future__ import annotations

__all__ = [
    "BudgetError", "ConfigError", "DataError", "ExportError", "ModelError", "ProgramError",
    "SearchSpaceError", "StagewiseError", "StoreError",
]


class StagewiseError(Exception):
    """Base of every error stagewise raises on purpose.

    Examples:
        Every branch is a `StagewiseError`, and keeps its standard-library parent:

        >>> import stagewise
        >>> from stagewise.data import split
        >>> try:
        ...     split([], train=0.5, dev=0.5, test=0.5, seed=0)
        ... except stagewise.ConfigError as error:
        ...     print(isinstance(error, stagewise.StagewiseError), isinstance(error, ValueError))
        ...     print(error)
        True True
        split fractions train=0.5, dev=0.5, test=0.5 sum to 1.5, not 1
    """


class ConfigError(StagewiseError, ValueError):
    """A config file, pipeline definition or option is malformed; the message names the file and key."""


class SearchSpaceError(ConfigError):
    """A search space names a model, optimizer, stage or value that cannot be searched."""


class DataError(StagewiseError, ValueError):
    """A data file, dataset or outcome table cannot be used; the message names the file, row or column."""


class ModelError(StagewiseError):
    """A model cannot be resolved, loaded or called (catalog entries, weights, keys, engines)."""


class ProgramError(StagewiseError):
    """A program cannot run as built: an unknown route, a bad plan, a missing context section."""


class BudgetError(StagewiseError):
    """A token budget, spending budget or rate limit stops the work."""


class StoreError(StagewiseError):
    """A checkpoint store, context store or study storage cannot be opened, read or written."""


class ExportError(StagewiseError, ValueError):
    """An exported program or router file cannot be written or loaded."""
