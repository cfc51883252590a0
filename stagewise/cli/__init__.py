"""The `stagewise` command, one module per command group.

- `stagewise.cli.application`: the typer app, its help conventions, the `--debug` option, the one place a
  [`StagewiseError`][stagewise.errors.StagewiseError] becomes one line and exit code 2, and the table of commands
- `stagewise.cli.models`: `models`, `demo`
- `stagewise.cli.optimize`: `worker`, `optimize`, `compare`
- `stagewise.cli.evaluate`: `evaluate`, `route-eval`
- `stagewise.cli.serve`: `serve`
- `stagewise.cli.runs`: `diff`, `replay`, `runs list`, `runs show`
- `stagewise.cli.options`: what several commands share: the console, common help texts, option parsing

Every command is a thin call into the public Python API; `python -m stagewise.cli` runs the command.
"""

from stagewise.cli.application import app, main
from stagewise.cli.options import STORAGE_HELP

__all__ = ["STORAGE_HELP", "app", "main"]
