"""The ``stagewise`` command, one module per command group.

- :mod:`stagewise.cli.application`: the typer app, its help conventions, the ``--debug`` option, the one place a
  :class:`~stagewise.errors.StagewiseError` becomes one line and exit code 2, and the table of commands
- :mod:`stagewise.cli.models`: ``models``, ``demo``
- :mod:`stagewise.cli.optimize`: ``worker``, ``optimize``, ``compare``
- :mod:`stagewise.cli.evaluate`: ``evaluate``, ``route-eval``
- :mod:`stagewise.cli.serve`: ``serve``
- :mod:`stagewise.cli.runs`: ``diff``, ``replay``, ``runs list``, ``runs show``
- :mod:`stagewise.cli.options`: what several commands share: the console, common help texts, option parsing

Every command is a thin call into the public Python API; ``python -m stagewise.cli`` runs the command.
"""

from stagewise.cli.application import app, main
from stagewise.cli.options import STORAGE_HELP

__all__ = ["STORAGE_HELP", "app", "main"]
