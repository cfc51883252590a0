"""Recorded runs: `stagewise diff`, `stagewise replay`, `stagewise runs list` and `stagewise runs show`.

`stagewise diff` shows a run's context per stage; `stagewise replay` runs a run again from a step,
changed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from stagewise.cli.options import RUNS_STORE_HELP, TRUST_CODE_HELP, console, pairs, runs_store

__all__ = ["diff_command", "replay_command", "runs_list", "runs_show"]


def diff_command(
    run_id: str = typer.Argument(..., help="A checkpointed run's id."),
    html: Path | None = typer.Option(None, "--html", help="Also write a standalone HTML page here."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
) -> None:
    """Per stage of a run: the context it received, transformed (tokens saved) and added (tokens cost)."""
    from stagewise.runtime.diff import diff_html, diff_text

    record = runs_store(store).load(run_id)
    print(diff_text(record))
    if html is not None:
        html.write_text(diff_html(record), encoding="utf-8")
        console.print(f"wrote {html}")


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

    overrides, models = pairs(set_, "--set", "NAME=VALUE", empty=True), pairs(model, "--model", "STAGE=MODEL")
    runs = runs_store(store)
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
    examples = {name: _examples(Path(file), name) for name, file in pairs(demos, "--demos", "STAGE=FILE").items()}
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
    """The few-shot examples in `path` (a JSON list of objects, or JSON Lines); a ConfigError names the file."""
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


def _since(value: str | None) -> str | None:
    """An ISO 8601 time, or a duration back from now (`30m`, `2h`, `7d`), as an ISO UTC time."""
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

    found = runs_store(store).find(since=_since(since), status=status, stage=stage, limit=limit)
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


def runs_show(
    run_id: str = typer.Argument(..., help="A recorded run's id (a served response's X-Stagewise-Run header)."),
    json_output: bool = typer.Option(False, "--json", help="Print the whole checkpoint record as JSON."),
    html: Path | None = typer.Option(None, "--html", help="Also write the run as a standalone page here: its steps "
                                                          "as a timeline and its context diff."),
    store: str | None = typer.Option(None, help=RUNS_STORE_HELP),
) -> None:
    """One run: its inputs, each step with its model, tokens, cost and outputs, its outputs or its error."""
    import json

    record = runs_store(store).load(run_id)
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

