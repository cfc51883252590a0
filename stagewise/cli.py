"""The ``stagewise`` command.

Every command is a thin call into the public Python API. Any :class:`~stagewise.errors.StagewiseError`
(a user's mistake: a bad config key, a missing file, an unknown model...) is caught in one place,
:class:`_Commands`, and printed as one line naming what is at fault, with exit code 2;
``stagewise --debug COMMAND ...`` (or ``STAGEWISE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import stagewise  # noqa: F401  (sets the offline price-map default before DSPy loads)
from stagewise.errors import StagewiseError
from stagewise.models.catalog import ModelCatalog
from stagewise.redaction import redact

# Tables are wider than 80 columns: never squeeze them when output goes to a pipe or a file.
console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120), soft_wrap=True)
errors = Console(stderr=True, width=console.width, soft_wrap=True, highlight=False)


def _help_conventions(params: list) -> list:
    """Typer 0.29 shows every option's type, flags too (``--json <bool>``), and a required argument
    as ``{config}``: flags get no type (an empty metavar), arguments their name in capitals. Help
    texts are plain text: a ``[privacy]`` in one is shown, not read as rich markup."""
    for param in params:
        if getattr(param, "help", None) and not getattr(param, "_help_escaped", False):
            param.help, param._help_escaped = escape(param.help), True
        if isinstance(param, typer.core.TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, typer.core.TyperArgument) and param.metavar is None:
            param.metavar = param.name.upper()
    return params


class _Command(typer.core.TyperCommand):
    """A command whose help shows flags as flags and ``CONFIG`` (``[CONFIG]`` when optional) in its usage line."""

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
    """Every command of the app is a :class:`_Command`."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(cls=_Commands, add_completion=False, no_args_is_help=True,
           help="Compile and optimize multi-model LLM pipelines.")

# Shared by `optimize` and `worker`: the URLs a study's storage may have.
STORAGE_HELP = ("The study's Optuna storage URL: sqlite:///path, postgresql://user:password@host/db, "
                "journal:///path or redis://host:port/db")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Compile and optimize multi-model LLM pipelines."""

DEMO_MESSAGES = [
    "My card payment was declined twice at the supermarket today, please help!",
    "How do I change the email address on my account?",
    "The app crashes every time I open the transfers screen.",
]


def _catalog(path: Path | None) -> ModelCatalog:
    return ModelCatalog.load(path)


@app.command("models")
def list_models(catalog: Path | None = typer.Option(None, help="A user catalog file (TOML) to add "
                                                               "(default: $STAGEWISE_CATALOG).")) -> None:
    """List the model catalog: engine, price per million tokens, context, format, tokenizer, latency."""
    table = Table(title="stagewise model catalog")
    for column in ("name", "provider", "engine", "$/M in", "$/M out", "price", "context", "max out", "format",
                   "tokenizer", "latency"):
        justify = "right" if column.startswith("$") or column in ("context", "max out") else "left"
        table.add_column(column, justify=justify)

    def price(p: float | None) -> str:
        return "-" if p is None else f"{p:.4g}"

    for spec in _catalog(catalog):
        table.add_row(spec.name, spec.provider, spec.engine, price(spec.input_price), price(spec.output_price),
                      spec.price_source, f"{spec.context_window:,}", f"{spec.max_output:,}", spec.context_format,
                      spec.tokenizer, spec.latency_class)
    console.print(table)


@app.command()
def demo(
    triage_model: str = typer.Option("gemma3-270m", help="Catalog model for the triage stage."),
    reply_model: str = typer.Option("smollm2-135m", help="Catalog model for the reply stage."),
) -> None:
    """Run a two-stage pipeline on the local models and show outputs, tokens and cost per stage."""
    import dspy

    from stagewise.models import get_lm, track_usage

    class Triage(dspy.Signature):
        """Classify a customer support message."""

        message: str = dspy.InputField()
        category: Literal["card", "account", "app", "other"] = dspy.OutputField()
        urgent: bool = dspy.OutputField(desc="true if the customer is blocked right now")

    class Reply(dspy.Signature):
        """You are a bank's support agent. Answer the customer's message politely in one sentence."""

        message: str = dspy.InputField()
        category: str = dspy.InputField(desc="the topic the triage stage assigned")
        reply: str = dspy.OutputField(desc="a polite one-sentence answer to the customer")

    from stagewise.programs import Chain, Stage

    pipeline = Chain("support", [
        Stage("triage", Triage),
        Stage("reply", Reply, inputs={"category": "triage.category"}),
    ])
    # No response cache: the demo always shows the models at work, never answers from a previous run.
    pipeline.set_models({"triage": get_lm(triage_model, cache=False), "reply": get_lm(reply_model, cache=False)})

    console.print(f"[bold]stagewise demo[/bold]: a two-stage chain, triage on [cyan]{triage_model}[/cyan], "
                  f"reply on [cyan]{reply_model}[/cyan], in-process through llama.cpp, typed outputs "
                  "constrained to each signature's JSON schema.\n")
    started = time.perf_counter()
    with dspy.context(adapter=dspy.JSONAdapter()), track_usage() as ledger:
        for number, message in enumerate(DEMO_MESSAGES, 1):
            result = pipeline(message=message)
            context = result.context
            console.print(f"[bold]{number}.[/bold] {message}")
            console.print(f"   triage: category={context['triage.category'].content} "
                          f"urgent={context['triage.urgent'].content}")
            console.print(f"   reply:  {result.reply!r}")
            console.print(f"   reply stage received: {', '.join(result.trace['reply'].received)}\n")

    totals = ledger.totals(by=["stage", "model"]).reset_index()
    table = Table(title=f"Usage per stage ({len(ledger)} calls in {time.perf_counter() - started:.1f} s)")
    for column in ("stage", "model", "calls", "in tok", "out tok", "latency s", "cost $"):
        table.add_column(column, no_wrap=True)
    for row in totals.itertuples(index=False):
        table.add_row(row.stage, row.model, str(row.calls), str(row.input_tokens), str(row.output_tokens),
                      f"{row.latency_s:.2f}", f"{row.cost_usd:.3g}")
    console.print(table)
    console.print("Local prices are notional (proportional to parameter count); see `stagewise models`. "
                  "These tiny models are untuned: choosing each stage's model, prompt and demos is what "
                  "stagewise's optimizer is for.")


def _optimizer(config: Path, *, study: str | None, trials: int | None, storage: str | None, out: Path):
    """The config and the JointOptimizer it describes, for ``optimize`` and ``worker``."""
    from stagewise.optimize.config import load_config

    cfg = load_config(config, study=study, trials=trials)
    if storage:
        cfg.settings.storage = storage  # a worker's config keeps its [search] trials: checked against the study's
    return cfg, cfg.optimizer(out)


@app.command()
def worker(
    config: Path = typer.Argument(..., help="The study's config (TOML): the same as the study's."),
    storage: str = typer.Option(..., help=f"{STORAGE_HELP}."),
    study: str = typer.Option(..., help="The name of the study to join."),
    trials: int | None = typer.Option(None, help="At most this many trials from this worker (the study's budget "
                                                 "stays the trials its config sets)."),
    out: Path = typer.Option(Path("runs/latest"), help="Output directory; share it for the compiled-stage cache."),
) -> None:
    """Join a running study: run its trials until its budget is spent (start as many workers as wanted).

    Trials are logged to MLflow at $MLFLOW_TRACKING_URI (a tracking server shared by every machine), else to
    sqlite:///mlflow.db in the working directory. Models are catalog names: give every machine the same
    $STAGEWISE_CATALOG file, if the study uses one.
    """
    cfg, optimizer = _optimizer(config, study=study, trials=None, storage=storage, out=out)
    splits = cfg.splits()
    finished = optimizer.work(cfg.build(), trainset=splits.train, valset=splits.dev, testset=splits.test,
                              trials=trials, split_settings=splits.settings)  # refuses a differing config first
    runner = optimizer.runner_
    console.print(f"worker of study {study!r} at {_redacted(storage)}: {runner.counted(finished)} of "
                  f"{runner.budget(finished)} trials done")


def _redacted(url: str) -> str:
    from stagewise.redaction import redact

    return redact(url)


@app.command()
def optimize(
    config: Path = typer.Argument(..., help="The study config (TOML)."),
    trials: int | None = typer.Option(None, help="Total trials of the study (a rerun continues it)."),
    out: Path = typer.Option(Path("runs/latest"), help="Output directory."),
    study: str | None = typer.Option(None, help="Study name (default: from the config)."),
    storage: str | None = typer.Option(None, help=f"{STORAGE_HELP}, shared with workers (default: OUT/optuna.db)."),
) -> None:
    """Search per-stage models, optimizers and demos; write the Pareto front and the best program.

    Trials are logged to MLflow at $MLFLOW_TRACKING_URI (a tracking server, for workers on other machines),
    else to sqlite:///mlflow.db in the working directory. Models are catalog names: the built-in catalog,
    plus the entries of the $STAGEWISE_CATALOG file.
    """
    import pandas as pd

    from stagewise.optimize import pareto
    from stagewise.optimize.export import export

    cfg, optimizer = _optimizer(config, study=study, trials=trials, storage=storage, out=out)
    splits = cfg.splits()
    console.print(cfg.data_report)
    console.print(f"splits: {splits.sizes()}  study {cfg.settings.name!r}, {cfg.settings.trials} trials, "
                  f"output {out}")
    best_program = optimizer.compile(cfg.build(), trainset=splits.train, valset=splits.dev, testset=splits.test,
                                     split_settings=splits.settings)
    result, baseline = optimizer.result_, optimizer.baseline_report_
    table = Table(title="Pareto front (dev)")
    choices = [f"{r}.decision" for r in cfg.routers or {}] + [f"{s}.model" for s in cfg.space]
    for column in ("trial", "quality", "$ per 1k requests", *choices):
        table.add_column(column)
    for _, row in result.front.iterrows():
        table.add_row(str(row["trial"]), f"{row['quality']:.3f}", f"{row['cost_per_1k_requests']:.4f}",
                      *["-" if pd.isna(row.get(c)) else str(row[c]) for c in choices])
    console.print(table)
    saving = pareto.saving_at(result.front)
    if saving:
        console.print(f"cheapest at >= 95% of the best quality ({saving['best_quality']:.3f}, trial "
                      f"{saving['best_trial']}): trial {saving['trial']}, quality {saving['quality']:.3f}, "
                      f"${saving['cost_per_1k']:.4f} per 1,000 requests instead of ${saving['best_cost_per_1k']:.4f}: "
                      f"{saving['saving']:.0%} saved")
    chosen = result.chosen
    best = export(best_program, out / "best", factory=cfg.factory, factory_kwargs=cfg.factory_kwargs,
                  factory_path=str(cfg.path.parent),
                  metrics={"dev": result.dev.summary(), "test": result.test.summary() if result.test else None,
                           "baseline_test": baseline.summary() if baseline else None},
                  data_fingerprint=cfg.data_fingerprint,
                  extra={"config": cfg.path.name, "evaluation": cfg.evaluation()})
    model_uri = optimizer.log_model(best)
    tracker = optimizer.runner_.tracker
    console.print(f"chosen: trial {int(chosen['trial'])}, dev quality {result.dev.quality:.3f}, "
                  f"test quality {result.test.quality if result.test else float('nan'):.3f}, "
                  f"${1000 * result.dev.cost_per_request:.4f} per 1,000 requests")
    if result.test:
        console.print(result.test.table())
    if baseline is not None and result.test is not None:
        comparison = Table(title="held-out test split: chosen program versus the unoptimized baseline")
        for column in ("program", "end-to-end quality", *[f"stage {m}" for m in baseline.stage_scores()],
                       "$ per 1k requests"):
            comparison.add_column(column)
        for label, report in (("baseline", baseline), ("optimized", result.test)):
            comparison.add_row(label, f"{report.quality:.3f}", *[f"{v:.3f}" for v in report.stage_scores().values()],
                               f"{1000 * report.cost_per_request:.4f}")
        console.print(comparison)
    console.print(f"wrote {out / 'pareto.csv'}, {out / 'pareto.png'}, {best / 'program.json'}, "
                  f"{best / 'manifest.json'}; compiled stages reused: {result.cache['hits']}, "
                  f"compiled: {result.cache['misses']}")
    console.print(f"MLflow: {tracker.uri} (experiment {tracker.experiment!r}); "
                  f"open the UI with: mlflow ui --backend-store-uri {tracker.uri}")
    if model_uri:
        console.print(f"MLflow model: {model_uri} (serve it with: mlflow models serve -m {model_uri} "
                      "--env-manager local)")


TRUST_CODE_HELP = ("Import the program's factory from the directory's own code/ (or, for a run, the factory "
                   "its record names). Without it only factories registered as 'stagewise.programs' entry "
                   "points load: nothing a file names runs unless you say so.")


@app.command("evaluate")
def evaluate_command(
    directory: Path = typer.Argument(..., help="An exported program (with manifest.json)."),
    data: Path = typer.Option(..., "--data", help="A study config (TOML: its test split and metrics), or a data "
                                                 "file (CSV, JSONL, Parquet) evaluated whole with the manifest's "
                                                 "column maps and metrics: the file needs the input columns and "
                                                 "every label column the metrics score against."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
) -> None:
    """Stage-level and end-to-end report of an exported program."""
    import json

    import dspy

    from stagewise.data import FieldMap, load_dataset_file
    from stagewise.errors import ConfigError
    from stagewise.metrics import EndToEnd, StageMetric, evaluate
    from stagewise.optimize.config import load_config
    from stagewise.optimize.export import load, read_manifest

    program = load(directory, trust_code=trust_code)
    if data.suffix == ".toml":
        cfg = load_config(data)
        examples = cfg.splits().test
        fingerprint, stage_metrics, end_to_end = cfg.data_fingerprint, cfg.stage_metrics, cfg.end_to_end
    else:
        settings = read_manifest(directory).get("evaluation")
        if not settings:
            raise ConfigError(f"{directory / 'manifest.json'} has no 'evaluation' settings (column maps and "
                              "named metrics): pass the study config as --data instead")
        loaded = load_dataset_file(data, FieldMap(settings["inputs"], settings["labels"]))
        examples, fingerprint = loaded.examples, loaded.fingerprint
        end_to_end = EndToEnd(**settings["end_to_end"])
        stage_metrics = [StageMetric(**m) for m in settings["stages"]]
    with dspy.context(adapter=dspy.JSONAdapter()):
        report = evaluate(program, examples, stage_metrics=stage_metrics, end_to_end=end_to_end,
                          progress=not json_output)
    if json_output:
        typer.echo(json.dumps({"program": str(directory), "data_fingerprint": fingerprint,
                               "examples": len(examples), **report.summary()}, indent=2, default=str))
    else:
        console.print(report.table())


@app.command()
def compare(
    experiment: list[str] = typer.Option(None, "--experiment", help="Experiment name (repeatable; default: all)."),
    plot: Path | None = typer.Option(None, help="Save a quality-versus-cost plot of the trials here."),
) -> None:
    """Compare the trials of one or more MLflow experiments.

    Reads MLflow at $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory (as optimize logs).
    """
    import mlflow
    import pandas as pd

    from stagewise.errors import ConfigError
    from stagewise.optimize.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    names = experiment or [e.name for e in mlflow.search_experiments()]
    missing = [n for n in names if mlflow.get_experiment_by_name(n) is None]
    if missing:
        known = [e.name for e in mlflow.search_experiments()]
        raise ConfigError(f"no experiment named {', '.join(map(repr, missing))} at {tracking_uri()} "
                          f"(experiments: {', '.join(known) or 'none'})")
    runs = mlflow.search_runs(experiment_names=names, filter_string="tags.stagewise_role = 'trial'")
    if runs.empty:
        console.print(f"no trial runs in {', '.join(names)}")
        raise typer.Exit(1)
    experiments = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    runs["experiment"] = runs["experiment_id"].map(experiments)
    # The choices optimize's front shows: each router's decision, then each stage's model.
    params = sorted(c for c in runs.columns if c.startswith("params.") and c.endswith(".decision")) + \
        sorted(c for c in runs.columns if c.startswith("params.") and c.endswith(".model"))
    table = Table(title=f"{len(runs)} trials from {', '.join(names)}")
    for column in ("experiment", "trial", "state", "quality", "$ per 1k", *[c.removeprefix("params.") for c in params]):
        table.add_column(column)
    ordered = runs.sort_values(["experiment", "metrics.quality"], ascending=[True, False], na_position="last")
    for _, row in ordered.iterrows():
        quality, cost = row.get("metrics.quality"), row.get("metrics.cost_per_1k_requests")
        table.add_row(str(row["experiment"]), str(row.get("tags.stagewise_trial", "")),
                      str(row.get("tags.stagewise_state", "")),
                      "-" if pd.isna(quality) else f"{quality:.3f}", "-" if pd.isna(cost) else f"{cost:.4f}",
                      *["-" if pd.isna(row.get(c)) else str(row[c]) for c in params])  # a stood-in stage has no model
    console.print(table)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, group in runs.dropna(subset=["metrics.quality"]).groupby("experiment"):
            axes.scatter(group["metrics.cost_per_1k_requests"], group["metrics.quality"], label=name, s=24)
        axes.set_xlabel("cost per 1,000 requests (USD)")
        axes.set_ylabel("quality (dev)")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(plot, dpi=120)
        console.print(f"wrote {plot}")


@app.command("route-eval")
def route_eval_command(
    outcomes: Path = typer.Option(..., help="Recorded outcomes to train on (RouterBench, RouteLLM or plain CSV)."),
    test: Path | None = typer.Option(None, help="Recorded outcomes to evaluate on (the same models)."),
    cv: int | None = typer.Option(None, help="Cross-validate with K folds instead of a test file."),
    router: str = typer.Option("auto", help="Router spec, e.g. quality, win, zero, cascade:features=word+checks,C=2 "
                                            "(auto: chosen by cross-validation inside the training rows among the "
                                            "specs the table supports, the zero router included)."),
    weak: str | None = typer.Option(None, help="Two-model routers: the weak model (default: the cheapest)."),
    strong: str | None = typer.Option(None, help="Two-model routers: the strong model (default: the costliest)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Path = typer.Option(Path("route_eval.png"), help="Where to save the plot (not with --json)."),
    save: Path | None = typer.Option(None, help="Also train on all of --outcomes and save the router here (skops)."),
    seed: int = typer.Option(0, help="Seed of the cross-validation folds."),
) -> None:
    """Train a router on recorded outcomes and evaluate it against random, single-model and oracle routing."""
    import json

    from stagewise.models.replay import OutcomeTableError
    from stagewise.routing.evaluation import RoutingEvalError, plot_report, route_eval
    from stagewise.routing.features import EmbeddingsUnavailableError, FeatureSpecError
    from stagewise.routing.outcomes import load_outcomes
    from stagewise.routing.routers import RouterSpecError

    if (test is None) == (cv is None):
        console.print("[red]error:[/red] give --test FILE or --cv K (one of them)")
        raise typer.Exit(2)
    try:
        train = load_outcomes(outcomes)
        evaluation = None if test is None else load_outcomes(test)
        spec = router
        status = Console(stderr=True)
        for table in filter(None, (train, evaluation)):
            status.print(table.report())
        with _progress(status) as bar:
            description = ("folds" if cv else "training") + (", each choosing its router" if spec == "auto" else "")
            task = bar.add_task(description, total=cv or 1)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            if spec == "auto":  # nested: the spec is chosen by cross-validation inside each training part
                from stagewise.routing.selection import nested_route_eval

                report = nested_route_eval(train, evaluation, cv=cv, seed=seed, weak=weak, strong=strong,
                                           progress=advance)
            else:
                report = route_eval(spec, train, evaluation, cv=cv, seed=seed, weak=weak, strong=strong,
                                    progress=advance)
        if save is not None:
            _save_router(spec, train, report, save, seed=seed)
            status.print(f"saved the router trained on all of {outcomes} to {save}")
    except (OutcomeTableError, RoutingEvalError, RouterSpecError, FeatureSpecError, EmbeddingsUnavailableError,
            ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
        raise typer.Exit(2) from None
    if json_output:
        print(json.dumps(report.to_json(), indent=2))
        return
    console.print(_routing_table(report))
    if "selection" in report.metrics:  # the default router: which spec cross-validation on the training rows chose
        from stagewise.routing.selection import describe_selection

        for line in describe_selection(report.metrics["selection"]):
            console.print(line)
    saving = report.metrics["cost_saving_at_95"]
    best = report.metrics["best_single_model"]
    if saving is None:
        console.print(f"the router never reaches 95% of {best}'s quality")
    else:
        best_cost = report.metrics["single_models"][best]["cost"]
        console.print(f"at >= 95% of {best}'s quality: ${saving['cost'] * 1000:.4f} per 1k queries against "
                      f"${best_cost * 1000:.4f} for {best} alone ({saving['saving']:.0%} saved)")
    plot_report(report, plot)
    console.print(f"wrote {plot}")


def _progress(console_: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console_, transient=True)


def _save_router(spec: str, train, report, path: Path, seed: int = 0) -> None:
    from stagewise.routing.persist import save_router
    from stagewise.routing.routers import make_router
    from stagewise.routing.selection import default_router

    weak, strong = report.metrics.get("weak"), report.metrics.get("strong")
    if spec == "auto":  # against a test table the choice was made on all of train; under CV it is made again
        selection = report.metrics["selection"]
        chosen = selection["chosen"] if selection["outer"] == "test table" else None
        router, _ = default_router(train, weak=weak, strong=strong, chosen=chosen, seed=seed)
    else:
        router = make_router(spec).fit_outcomes(train, weak, strong)
    save_router(router, path)


def _routing_table(report) -> Table:
    metrics = report.metrics
    two = "apgr" in metrics
    table = Table(title=f"{report.router} on {metrics.get('n_test', len(report.outcomes))} test queries "
                        f"({'APGR, CPT' if two else 'AIQ'})")
    for column in ("router", "quality", "$ per 1k", *(("APGR", "CPT50", "CPT80") if two else ("AIQ",))):
        table.add_column(column, justify="left" if column == "router" else "right")

    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    end = (lambda c: fmt(c, ".0%")) if two else fmt
    point = metrics["cost_saving_at_95"] or {}  # the router's cheapest setting at >= 95% of the best model
    quality, cost = fmt(point.get("quality")), fmt(point.get("cost", 0) * 1000, ".4f") if point else "-"
    if two:
        table.add_row(report.router, quality, cost, fmt(metrics["apgr"]), end(metrics["cpt50"]), end(metrics["cpt80"]))
        table.add_row("random (10 seeds)", "", "", fmt(metrics["random"]["apgr"]), end(metrics["random"]["cpt50"]),
                      end(metrics["random"]["cpt80"]))
        zero = metrics["zero_router"]
        table.add_row("zero router (single-model hull)", "", "", fmt(zero["apgr"]), end(zero["cpt50"]),
                      end(zero["cpt80"]))
        table.add_row("oracle", fmt(metrics["oracle"]["quality"]), fmt(metrics["oracle"]["cost"] * 1000, ".4f"),
                      fmt(metrics["oracle"]["apgr"]), "", "")
    else:
        table.add_row(report.router, quality, cost, fmt(metrics["aiq"]))
        table.add_row("zero router (single-model hull)", "", "", fmt(metrics["zero_router_aiq"]))
        table.add_row("random (10 seeds)", "", "", fmt(metrics["random"]["aiq"]))
        table.add_row("oracle", fmt(metrics["oracle"]["quality"]), fmt(metrics["oracle"]["cost"] * 1000, ".4f"), "")
    for model, figures in sorted(metrics["single_models"].items(), key=lambda item: item[1]["cost"]):
        table.add_row(model, fmt(figures["quality"]), fmt(figures["cost"] * 1000, ".4f"), *[""] * (3 if two else 1))
    return table


@app.command()
def serve(
    directory: Path = typer.Argument(..., help="An exported program (stagewise optimize's OUT/best)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    token_env: str = typer.Option("STAGEWISE_SERVE_TOKEN", help="Environment variable holding the bearer token."),
    tokens: Path | None = typer.Option(None, "--tokens", help="TOML file of tenants: [tenants.NAME] with token "
                                                               "(or token_env), daily_budget_usd, rate."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without a token (local use only): each client "
                                                          "address is its own tenant."),
    max_body: int = typer.Option(64 * 1024, help="Largest request body, in bytes."),
    rate: int = typer.Option(60, help="Requests per minute per tenant (a tokens file may set its own)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds a request may run: then 504, and no "
                                                                 "further model call is made for it."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency",
                                               help="Requests running at once; more are answered 503 with "
                                                    "Retry-After."),
    budget: float | None = typer.Option(None, help="Cost budget per request, in USD."),
    daily_budget: float | None = typer.Option(None, "--daily-budget",
                                              help="Cost budget per tenant per UTC day, in USD (a tokens file "
                                                   "may set its own)."),
    spend: str | None = typer.Option(None, "--spend", help="Where tenants' daily spend is kept: sqlite:///PATH or "
                                                           "redis://... (default: the --redis URL, else "
                                                           "sqlite:///stagewise-spend.db)."),
    fallback: list[str] = typer.Option(None, help="STAGE=MODEL[,MODEL]: fall back to these models (repeatable)."),
    redis: str | None = typer.Option(None, help="Redis URL: share rate limits, circuit breakers and tenants' "
                                                "spend among server processes."),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
    runs: str | None = typer.Option(None, "--runs", help="Record every request as a run in this checkpoint store, "
                                                         "sqlite:///PATH or postgresql://... (default: "
                                                         "sqlite:///DIRECTORY/runs.db; 'off': record nothing). "
                                                         "The response's X-Stagewise-Run header names the run."),
    trace: str | None = typer.Option(None, "--trace", help="Export each request's spans: console, otlp "
                                                           "($OTEL_EXPORTER_OTLP_ENDPOINT) or mlflow "
                                                           "($MLFLOW_TRACKING_URI); a traceparent header makes "
                                                           "them part of the caller's trace."),
    trace_content: bool = typer.Option(False, "--trace-content", help="Put prompts and responses in the spans "
                                                                      "(redacted by --redact)."),
    context_store: str | None = typer.Option(None, "--context-store", help="Mirror every section a request's "
                                                                           "stages add into this context store: "
                                                                           "sqlite:///PATH, redis://...?ttl=S or "
                                                                           "postgresql://..."),
    redact_spec: str | None = typer.Option(None, "--redact", help="Keep personal data out of runs, the context store, "
                                                             "spans and logs: 'all', detectors (email,credit_card,"
                                                             "phone,iban) or a TOML file with a [privacy] table. "
                                                             "Responses are unchanged."),
) -> None:
    """Serve an exported program over HTTP: POST /v1/run, GET /v1/budget, GET /healthz, OpenAPI at /openapi.json."""

    import uvicorn

    from stagewise.errors import ConfigError
    from stagewise.runtime.budgets import Budget
    from stagewise.runtime.resilience import Breakers, Resilience, StagePolicy
    from stagewise.runtime.serve import create_app, exposure_warning, log
    from stagewise.runtime.tenants import read_tokens

    tenants = read_tokens(tokens) if tokens is not None else []
    token = None if no_auth else os.environ.get(token_env)
    if no_auth and tenants:
        raise ConfigError("--no-auth and --tokens: choose one")
    if not no_auth and not token and not tenants:
        raise ConfigError(f"set the bearer token in ${token_env}, pass --tokens FILE, or pass --no-auth for local use")
    policies = {stage: StagePolicy("fallback", tuple(m.strip() for m in models.split(",")))
                for stage, models in _pairs(fallback, "--fallback", "STAGE=MODEL[,MODEL]").items()}
    daily = daily_budget is not None or any(t.daily_budget_usd is not None for t in tenants)
    spending = None
    if budget is not None or daily:
        spending = Budget(per_request_usd=budget, per_tenant_day_usd=daily_budget,
                          tenant_day_usd={t.name: t.daily_budget_usd for t in tenants
                                          if t.daily_budget_usd is not None},
                          store=(spend or redis or "sqlite:///stagewise-spend.db") if daily else None)
    resilience = Resilience(policies=policies, budget=spending, breakers=Breakers(redis_url=redis))
    runs_url = None if runs == "off" else (runs or f"sqlite:///{directory.resolve() / 'runs.db'}")
    privacy = None
    if redact_spec:
        from stagewise.runtime.privacy import PrivacyPolicy

        privacy = PrivacyPolicy.from_option(redact_spec)
    tracer = None
    if trace:
        from stagewise.runtime.tracing import Tracer, tracer_provider

        tracer = Tracer(tracer_provider(trace)[0], program=str(directory), capture_content=trace_content,
                        privacy=privacy)
    app_ = create_app(directory, token=token, tenants=tenants, max_body=max_body, requests_per_minute=rate,
                      resilience=resilience, redis_url=redis, trust_code=trust_code, timeout_s=timeout,
                      max_concurrency=max_concurrency, runs=runs_url, tracer=tracer, privacy=privacy,
                      context_store=context_store)
    warning = exposure_warning(host, authenticated=bool(token or tenants))
    if warning:
        log.warning(warning)
    console.print(f"serving {directory} at http://{host}:{port} (POST /v1/run, GET /healthz, /docs)"
                  + ("" if token or tenants else " without authentication")
                  + (f"; runs recorded in {redact(runs_url)} (stagewise runs list --store ...)" if runs_url else ""))
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _pairs(items: list[str] | None, option: str, form: str, *, empty: bool = False) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict (``empty``: VALUE may be empty); a ConfigError names the item at fault."""
    from stagewise.errors import ConfigError

    parsed = {}
    for item in items or []:
        key, equals, value = item.partition("=")
        if not equals or not key or not (value or empty):
            raise ConfigError(f"{option} {item!r}: expected {form}")
        parsed[key] = value
    return parsed


RUNS_STORE_HELP = "Checkpoint store URL (default: $STAGEWISE_RUNS or sqlite:///stagewise-runs.db)."


def _runs_store(url: str | None):

    from stagewise.runtime.checkpoint import open_checkpoints

    return open_checkpoints(url or os.environ.get("STAGEWISE_RUNS"))


@app.command("diff")
def diff_command(
    run_id: str = typer.Argument(..., help="A checkpointed run's id."),
    html: Path | None = typer.Option(None, "--html", help="Also write a standalone HTML page here."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
) -> None:
    """Per stage of a run: the context it received, transformed (tokens saved) and added (tokens cost)."""
    from stagewise.runtime.diff import diff_html, diff_text

    record = _runs_store(store).load(run_id)
    print(diff_text(record))
    if html is not None:
        html.write_text(diff_html(record), encoding="utf-8")
        console.print(f"wrote {html}")


@app.command("replay")
def replay_command(
    run_id: str = typer.Argument(..., help="A checkpointed run's id."),
    stage: str | None = typer.Option(None, help="Re-run from this stage, router, retrieval or cascade (earlier "
                                                "steps' stored outputs are reused); default: the one --route, "
                                                "--accept or --escalate names."),
    set_: list[str] = typer.Option(None, "--set", help="FIELD=VALUE: an input field, or a section id an earlier "
                                                       "step produced, a retrieved passage included "
                                                       "(retrieve.passage_2=...) (repeatable)."),
    model: list[str] = typer.Option(None, "--model", help="STAGE=MODEL: run a stage on another model (repeatable)."),
    demos: list[str] = typer.Option(None, "--demos", help="STAGE=FILE: give a stage these few-shot examples "
                                                          "instead of its own: a JSON list of objects, or JSON "
                                                          "Lines, each object the stage's fields (repeatable)."),
    route: list[str] = typer.Option(None, "--route", help="[ROUTER=]LABEL: the router takes this route (the "
                                                          "router's name may be left out when the run has one)."),
    accept: str | None = typer.Option(None, "--accept", help="CASCADE: accept its first tier's answer unscored."),
    escalate: str | None = typer.Option(None, "--escalate", help="CASCADE: escalate past its first tier unscored."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
) -> None:
    """Re-run a stored run from a step with changed context, models or decisions; show how the outputs changed."""
    import dspy

    from stagewise.errors import ConfigError
    from stagewise.runtime.runs import output_changes, replay

    overrides, models = _pairs(set_, "--set", "NAME=VALUE", empty=True), _pairs(model, "--model", "STAGE=MODEL")
    runs = _runs_store(store)
    decisions: dict[str, dict] = {}
    for item in route or []:
        router, equals, label = item.rpartition("=")
        if not equals:
            routers = sorted({s["stage"] for s in runs.load(run_id)["steps"] if s.get("kind") == "route"})
            if len(routers) != 1:
                raise ConfigError(f"--route {item!r}: name the router (ROUTER=LABEL); run {run_id!r} has the "
                                  f"routers {routers or 'none'}")
            router = routers[0]
        decisions[router] = {"route": label}
    for cascade, decision in ((accept, {"accept": True}), (escalate, {"escalate": True})):
        if cascade:
            decisions[cascade] = decision
    if stage is None:
        if not decisions:
            raise ConfigError("replay needs --stage (or --route, --accept or --escalate, whose step it starts at)")
        stage = next(iter(decisions))
    examples = {name: _examples(Path(file), name) for name, file in _pairs(demos, "--demos", "STAGE=FILE").items()}
    with dspy.context(adapter=dspy.JSONAdapter()):
        original, prediction, replayed = replay(run_id, stage, store=runs, overrides=overrides, models=models,
                                                trust_code=trust_code, decisions=decisions, demos=examples)
    changes = output_changes(original, replayed)
    table = Table(title=f"run {run_id} replayed from {stage!r} as {prediction.run_id}")
    for column in ("step", "field", "original", "replayed"):
        table.add_column(column)
    for row in changes:
        table.add_row(*row)
    console.print(table if changes else f"replayed as {prediction.run_id}: no output changed")


def _examples(path: Path, stage: str) -> list[dict]:
    """The few-shot examples in ``path`` (a JSON list of objects, or JSON Lines); a ConfigError names the file."""
    import json

    from stagewise.errors import ConfigError

    where = f"--demos {stage}={path}"
    try:
        if path.stat().st_size > 10_000_000:
            raise ConfigError(f"{where}: the file is over 10 MB")
        text = path.read_text(encoding="utf-8")
        examples = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where}: not JSON or JSON Lines ({type(exc).__name__}: {exc})") from None
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise ConfigError(f"{where}: expected a list of objects, each the stage's fields")
    return examples


runs_app = _App(no_args_is_help=True, help="List and show recorded runs: served requests and run(...) calls.")
app.add_typer(runs_app, name="runs")


def _since(value: str | None) -> str | None:
    """An ISO 8601 time, or a duration back from now (``30m``, ``2h``, ``7d``), as an ISO UTC time."""
    import re
    from datetime import UTC, datetime, timedelta

    from stagewise.errors import ConfigError

    if value is None:
        return None
    ago = re.fullmatch(r"(\d+)\s*([smhd])", value.strip())
    if ago:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[ago.group(2)]
        moment = datetime.now(UTC) - timedelta(**{unit: int(ago.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"--since {value!r}: expected an ISO 8601 time (2026-12-03T08:00) or a duration "
                              "(30m, 2h, 7d)") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@runs_app.command("list")
def runs_list(
    since: str | None = typer.Option(None, "--since", help="Only runs updated since then: an ISO 8601 time or a "
                                                           "duration back from now (30m, 2h, 7d)."),
    status: str | None = typer.Option(None, "--status", help="Only runs with this status: running, failed or "
                                                             "completed."),
    stage: str | None = typer.Option(None, "--stage", help="Only runs that executed this stage."),
    limit: int = typer.Option(50, "--limit", help="At most this many runs, newest first."),
    json_output: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
) -> None:
    """The latest recorded runs: status, stages, model calls, tokens and cost."""
    import json

    found = _runs_store(store).find(since=_since(since), status=status, stage=stage, limit=limit)
    if json_output:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table(title=f"{len(found)} run(s)")
    for column in ("run", "status", "updated", "stages", "calls", "tokens", "$"):
        table.add_column(column)
    for run in found:
        table.add_row(run["run_id"], run["status"], run["updated"], " > ".join(run["stages"]) or "-",
                      str(run["calls"]), str(run["tokens"]), f"{run['cost_usd']:.6f}")
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="A recorded run's id (a served response's X-Stagewise-Run header)."),
    json_output: bool = typer.Option(False, "--json", help="Print the whole checkpoint record as JSON."),
    html: Path | None = typer.Option(None, "--html", help="Also write the run as a standalone page here: its steps "
                                                          "as a timeline and its context diff."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
) -> None:
    """One run: its inputs, each step with its model, tokens, cost and outputs, its outputs or its error."""
    import json

    record = _runs_store(store).load(run_id)
    if html is not None:
        from stagewise.runtime.run_page import run_page

        html.write_text(run_page(record), encoding="utf-8")
    if json_output:
        typer.echo(json.dumps(record, indent=2, default=str))
        return
    console.print(f"run {record['run_id']} ({record['status']}, {record.get('updated')}): program "
                  f"{escape(json.dumps(record.get('program')))}")
    console.print(f"inputs: {escape(json.dumps(record['inputs'], ensure_ascii=False))}")
    table = Table(title="steps")
    for column in ("step", "model", "tokens in", "tokens out", "$", "s", "outputs"):
        table.add_column(column)
    for step in record["steps"]:
        shown = json.dumps(step["outputs"], ensure_ascii=False, default=str)
        table.add_row(step["key"], step.get("model") or "-", str(step.get("input_tokens", 0)),
                      str(step.get("output_tokens", 0)), f"{step.get('cost_usd') or 0.0:.6f}",
                      f"{step.get('latency_s', 0.0):.2f}", escape(shown if len(shown) <= 120 else shown[:117] + "..."))
    console.print(table)
    if record.get("error"):
        console.print(f"error at {record['error'].get('stage')}: {escape(str(record['error'].get('message')))}")
    else:
        console.print(f"outputs: {escape(json.dumps(record.get('outputs'), ensure_ascii=False, default=str))}")
    if html is not None:
        console.print(f"wrote {html}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
