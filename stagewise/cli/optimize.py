"""`stagewise optimize` (run a study), `stagewise worker` (join one) and `stagewise compare` (its trials in MLflow)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from stagewise.cli.options import STORAGE_HELP, console
from stagewise.redaction import redact

__all__ = ["compare", "optimize", "worker"]


def _optimizer(config: Path, *, study: str | None, trials: int | None, storage: str | None, out: Path):
    """The config and the JointOptimizer it describes, for `optimize` and `worker`."""
    from stagewise.optimize.config import load_config

    cfg = load_config(config, study=study, trials=trials)
    if storage:
        cfg.settings.storage = storage  # a worker's config keeps its [search] trials: checked against the study's
    return cfg, cfg.optimizer(out)


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
    console.print(f"worker of study {study!r} at {redact(storage)}: {runner.counted(finished)} of "
                  f"{runner.budget(finished)} trials done")


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


def compare(
    experiment: list[str] = typer.Option(None, "--experiment", help="Experiment name (repeatable; default: all)."),
    plot: Path | None = typer.Option(None, help="Save a quality-versus-cost plot of the trials here."),
) -> None:
    """Compare the trials of one or more MLflow experiments.

    Reads MLflow at $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory (as optimize logs).
    """
    from stagewise.optimize import plot_trial_runs, trial_runs

    runs = trial_runs(experiment)
    names = experiment or sorted(set(runs["experiment"]))
    if runs.empty:
        console.print(f"no trial runs in {', '.join(names) or 'any experiment'}")
        raise typer.Exit(1)
    choices = list(runs.columns[5:])  # each router's decision, then each stage's model, as optimize's front shows
    table = Table(title=f"{len(runs)} trials from {', '.join(names)}")
    for column in ("experiment", "trial", "state", "quality", "$ per 1k", *choices):
        table.add_column(column)

    def shown(value, spec=None):  # `-` for an absent value (a stage a trained router stood in for has no model)
        return "-" if value is None else format(value, spec) if spec else str(value)

    for row in runs.itertuples(index=False):
        table.add_row(shown(row.experiment), shown(row.trial), shown(row.state), shown(row.quality, ".3f"),
                      shown(row.cost_per_1k_requests, ".4f"), *[shown(value) for value in row[5:]])
    console.print(table)
    if plot is not None:
        console.print(f"wrote {plot_trial_runs(runs, plot)}")
