"""`stagewise evaluate` and `stagewise route-eval`.

`stagewise evaluate` prints an exported program's report; `stagewise route-eval` a router trained and
evaluated on recorded outcomes.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stagewise.cli.options import TRUST_CODE_HELP, console, progress_bar
from stagewise.redaction import redact

__all__ = ["evaluate_command", "route_eval_command"]


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


def route_eval_command(
    outcomes: Path = typer.Option(..., help="Recorded outcomes to train on (RouterBench, RouteLLM or plain CSV)."),
    test: Path | None = typer.Option(None, help="Recorded outcomes to evaluate on (the same models, any order)."),
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

    from stagewise.data import OutcomeTableError
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
        with progress_bar(status) as bar:
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
    for column in ("router", "quality", "$ per 1k", *(("APGR", "CPT20", "CPT50", "CPT80") if two else ("AIQ",))):
        table.add_column(column, justify="left" if column == "router" else "right")

    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    end = (lambda c: fmt(c, ".0%")) if two else fmt
    point = metrics["cost_saving_at_95"] or {}  # the router's cheapest setting at >= 95% of the best model
    quality, cost = fmt(point.get("quality")), fmt(point.get("cost", 0) * 1000, ".4f") if point else "-"
    if two:
        def thresholds(figures):  # CPT(20%), CPT(50%), CPT(80%): the share sent to the strong model
            return [end(figures[f"cpt{x}"]) for x in (20, 50, 80)]

        table.add_row(report.router, quality, cost, fmt(metrics["apgr"]), *thresholds(metrics))
        table.add_row("random (10 seeds)", "", "", fmt(metrics["random"]["apgr"]), *thresholds(metrics["random"]))
        zero = metrics["zero_router"]
        table.add_row("zero router (single-model hull)", "", "", fmt(zero["apgr"]), *thresholds(zero))
        table.add_row("oracle", fmt(metrics["oracle"]["quality"]), fmt(metrics["oracle"]["cost"] * 1000, ".4f"),
                      fmt(metrics["oracle"]["apgr"]), "", "", "")
    else:
        table.add_row(report.router, quality, cost, fmt(metrics["aiq"]))
        table.add_row("zero router (single-model hull)", "", "", fmt(metrics["zero_router_aiq"]))
        table.add_row("random (10 seeds)", "", "", fmt(metrics["random"]["aiq"]))
        table.add_row("oracle", fmt(metrics["oracle"]["quality"]), fmt(metrics["oracle"]["cost"] * 1000, ".4f"), "")
    for model, figures in sorted(metrics["single_models"].items(), key=lambda item: item[1]["cost"]):
        table.add_row(model, fmt(figures["quality"]), fmt(figures["cost"] * 1000, ".4f"), *[""] * (4 if two else 1))
    return table
