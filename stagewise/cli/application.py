"""The `stagewise` typer app: its help conventions, the `--debug` option, and its commands.

The commands are added in the order `stagewise --help` lists them.

Every command is a thin call into the public Python API. Any [`StagewiseError`][stagewise.errors.StagewiseError]
(a user's mistake: a bad config key, a missing file, an unknown model...) is caught in one place,
`_Commands`, and printed as one line naming what is at fault, with exit code 2;
`stagewise --debug COMMAND ...` (or `STAGEWISE_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape

import stagewise  # noqa: F401  (sets the offline price-map default before DSPy loads)
from stagewise.cli import evaluate, models, optimize, runs, serve
from stagewise.cli.options import console
from stagewise.errors import StagewiseError
from stagewise.redaction import redact

__all__ = ["COMMANDS", "RUNS_COMMANDS", "app", "errors", "main", "runs_app"]

errors = Console(stderr=True, width=console.width, soft_wrap=True, highlight=False)
"""Where a StagewiseError's one line goes."""


def _help_conventions(params: list) -> list:
    """Help conventions: flags get no type, arguments their name in capitals.

    Typer 0.29 shows every option's type, flags too (`--json <bool>`), and a required argument
    as `{config}`: flags get no type (an empty metavar), arguments their name in capitals. Help
    texts are plain text: a `[privacy]` in one is shown, not read as rich markup.
    """
    for param in params:
        if getattr(param, "help", None) and not getattr(param, "_help_escaped", False):
            param.help, param._help_escaped = escape(param.help), True
        if isinstance(param, typer.core.TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, typer.core.TyperArgument) and param.metavar is None:
            param.metavar = param.name.upper()
    return params


class _Command(typer.core.TyperCommand):
    """A command whose help shows flags as flags and `CONFIG` (`[CONFIG]` when optional) in its usage line."""

    def get_params(self, ctx):
        return _help_conventions(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.display_name_raw + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _Commands(typer.core.TyperGroup):
    """The command group: turns a StagewiseError into one line on stderr and exit code 2."""

    def get_params(self, ctx):
        return _help_conventions(super().get_params(ctx))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StagewiseError as exc:
            if ctx.params.get("debug") or os.environ.get("STAGEWISE_DEBUG", "") not in ("", "0"):
                raise
            errors.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
            raise typer.Exit(2) from None


class _App(typer.Typer):
    """Every command of the app is a `_Command`."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(cls=_Commands, add_completion=False, no_args_is_help=True,
           help="Compile and optimize multi-model LLM pipelines.")
"""The `stagewise` command."""


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Compile and optimize multi-model LLM pipelines."""


# One table of the commands, as Optuna's cli.py has: `stagewise --help` lists them in this order.
COMMANDS = {
    "models": models.list_models,
    "demo": models.demo,
    "worker": optimize.worker,
    "optimize": optimize.optimize,
    "evaluate": evaluate.evaluate_command,
    "compare": optimize.compare,
    "route-eval": evaluate.route_eval_command,
    "serve": serve.serve,
    "diff": runs.diff_command,
    "replay": runs.replay_command,
}
"""Every command of `stagewise` by name, in the order its help lists them (the `runs` group comes last)."""

RUNS_COMMANDS = {"list": runs.runs_list, "show": runs.runs_show}
"""The commands of `stagewise runs`."""

runs_app = _App(no_args_is_help=True, help="List and show recorded runs: served requests and run(...) calls.")
"""`stagewise runs`: a group of `RUNS_COMMANDS`."""


def _register(typer_app: _App, commands: dict) -> None:
    for name, function in commands.items():
        typer_app.command(name)(function)


_register(app, COMMANDS)
_register(runs_app, RUNS_COMMANDS)
app.add_typer(runs_app, name="runs")


def main() -> None:
    """Run the `stagewise` command on `sys.argv`."""
    app()
