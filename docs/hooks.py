"""mkdocs hooks: the generated parts of the reference, made at build time from the code itself.

- ``reference/cli.md``: ``stagewise --help`` and every subcommand's ``--help`` (typer's CliRunner);
- ``reference/config.md``: every key of a study config, from the pydantic models that validate it;
- ``reference/http.md``: the served program's endpoints, from the server's OpenAPI schema.

A page holds a marker comment (``<!-- generated: cli -->``) where the generated text goes.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import types
import typing
from pathlib import Path

MARKER = re.compile(r"<!-- generated: (\w+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: GENERATORS[match.group(1)](), markdown)


# --- the CLI ------------------------------------------------------------------------------------

def _commands(group, path: tuple[str, ...] = ()):
    """(path, command) of ``group`` and every command under it, depth first, in the order help lists them.

    Duck-typed: typer builds its commands on a click of its own (not necessarily the ``click`` package)."""
    yield path, group
    if hasattr(group, "list_commands"):
        context = type(group).context_class(group)
        for name in group.list_commands(context):
            yield from _commands(group.get_command(context, name), (*path, name))


def cli_reference() -> str:
    import typer
    from typer.testing import CliRunner

    from stagewise.cli import app

    runner, out = CliRunner(), []
    for path, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], prog_name="stagewise", terminal_width=88,
                               env={"COLUMNS": "88", "NO_COLOR": "1"})
        if result.exit_code != 0:
            raise RuntimeError(f"stagewise {' '.join(path)} --help exited {result.exit_code}: {result.output}")
        title = " ".join(("stagewise", *path))
        out.append(f"## `{title}`\n\n```text\n{result.output.rstrip()}\n```\n")
    return "\n".join(out)


# --- the study config ---------------------------------------------------------------------------

def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " or ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_name(args[1])}" if args else "table"
    if annotation is type(None):
        return "none"
    if annotation is typing.Any:
        return "any"
    if hasattr(annotation, "model_fields"):
        return "table"
    name = getattr(annotation, "__name__", str(annotation))
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(name, name)


def _constraints(field) -> str:
    found = []
    for item in field.metadata:
        for attribute, text in (("ge", ">= {}"), ("gt", "> {}"), ("le", "<= {}"), ("lt", "< {}"),
                                ("min_length", "at least {} item(s)")):
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(text.format(value))
    return ", ".join(found)


def _toml(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "model_dump"):
        return "its keys' defaults"
    return json.dumps(value)


def _table(model, table: str) -> str:
    from pydantic_core import PydanticUndefined

    meanings = MEANINGS[table]
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in meanings:
            raise RuntimeError(f"docs/hooks.py: MEANINGS[{table!r}] has no meaning for the config key {key!r}")
        if field.is_required():
            default = "**required**"
        elif field.default_factory is not None:
            default = f"`{_toml(field.default_factory())}`"
        elif field.default is PydanticUndefined:
            default = "**required**"
        else:
            default = f"`{_toml(field.default)}`"
        kind = _type_name(field.annotation)
        limits = _constraints(field)
        rows.append(f"| `{key}` | {kind}{f' ({limits})' if limits else ''} | {default} | {meanings[key]} |")
    unknown = set(meanings) - {field.alias or name for name, field in model.model_fields.items()}
    if unknown:
        raise RuntimeError(f"docs/hooks.py: MEANINGS[{table!r}] names keys the config does not have: {unknown}")
    heading = {"": "Top level", "metrics.stages": "[[metrics.stages]]"}.get(table, f"[{table}]")
    return f"## {heading}\n\n" + "\n".join(rows) + "\n"


# The meaning of every key, by table (hand-written: the models carry no descriptions). A key the
# models have and this does not fails the build, so a new key cannot go undocumented.
MEANINGS = {
    "": {
        "program": "the program to optimize",
        "data": "the examples",
        "split": "how the examples are split into train, dev and test",
        "metrics": "what is scored: end to end, and optionally per stage",
        "search": "the search space and how it is searched",
        "models": "options of the language models by catalog name (`\"*\"`: every model), passed to "
                  "`get_lm` (e.g. `{ max_tokens = 64 }`)",
        "tracking": "MLflow tracking",
        "baseline": "stage name -> model of the unoptimized program the chosen one is compared with on the test "
                    "split",
        "privacy": "what is redacted from what a run keeps; no table: nothing is redacted",
    },
    "program": {
        "factory": "`module:function` (or `module:Class`) building the program, imported from the config's "
                   "folder or the working directory",
        "kwargs": "keyword arguments the factory is called with",
    },
    "data": {
        "outcomes": "an outcome table of recorded models (RouterBench, RouteLLM CSV), relative to the config; "
                    "its prompts are the examples and its models replay their recorded answers",
        "prompt_field": "with `outcomes`: the input field the prompts go in",
        "path": "a CSV, JSON Lines or Parquet file of examples, relative to the config (instead of `outcomes`)",
        "inputs": "with `path`: input field of the program -> column of the file",
        "labels": "with `path`: label name -> column of the file (what the metrics compare with)",
        "on_bad": "a row missing a column or with an empty value: `skip` it (and report it) or `refuse` the "
                  "file",
        "limit": "use only the first this many examples",
    },
    "split": {
        "train": "fraction of the examples that optimizers learn demos from",
        "dev": "fraction that trials are scored on",
        "test": "fraction held out: the chosen program and the baseline are evaluated on it",
        "seed": "the shuffle's seed",
        "stratify_by": "a label whose classes keep their proportions in every split",
    },
    "metrics": {
        "end_to_end": "the metric of the whole program, which the search optimizes",
        "stages": "per-stage metrics, reported beside the end-to-end one",
    },
    "metrics.end_to_end": {
        "output": "the program's output field scored",
        "label": "the label it is compared with (none: the metric needs none, e.g. `recorded_correctness`)",
        "metric": "`exact_match`, `normalized_match`, `token_f1`, `numeric_match`, `label_accuracy`, or "
                  "`recorded_correctness` with `[data] outcomes`",
    },
    "metrics.stages": {
        "stage": "the stage's name",
        "output": "the stage's output field scored",
        "label": "the label it is compared with",
        "metric": "as for `[metrics.end_to_end]`",
    },
    "search": {
        "trials": "the study's budget of trials; a worker may leave it out to take the study's",
        "seed": "the sampler's seed",
        "storage": "the Optuna storage URL (`sqlite:///...`, `postgresql://...`); default: SQLite in the "
                   "output directory",
        "prune_on": "dev examples scored before the pruning decision",
        "prune_margin": "a trial is pruned when a cheaper finished trial beats its early quality by this margin",
        "min_quality": "selection: the cheapest program of the Pareto front with at least this quality",
        "max_cost_per_1k": "selection: the best-quality program under this cost per 1,000 requests (USD)",
        "latency_objective": "a third objective: mean latency per request, minimized",
        "reflection_model": "the model GEPA reflects with, and MIPRO and SIMBA write prompts with",
        "gepa_metric_calls": "GEPA's budget of metric calls per compile",
        "sampler": "`tpe`, `grid`, `random` or `nsga2`",
        "pruner": "in Python only (an `optuna.pruners.BasePruner`); a config file leaves it out",
        "stages": "the search space, one `[search.stages.NAME]` table per stage",
        "study": "the study's name (default: the config file's name)",
        "thresholds": "cascade name -> the acceptance thresholds the search chooses from",
        "routers": "router name -> `[search.routers.NAME]`: an LLM stage or a trained classifier",
    },
    "search.stages.NAME": {
        "models": "the catalog models the stage may run on",
        "optimizers": "what the stage may be compiled with: `none`, `labeled_fewshot`, `bootstrap_fewshot`, "
                      "`bootstrap_random_search`, `mipro`, `gepa`, `simba`, or a registered name",
        "demos": "numbers of few-shot demos the optimizers may give the stage",
    },
    "search.routers.NAME": {
        "label": "the label a trained router learns (from the train split)",
        "decisions": "`llm` (the router's LLM stage) and/or `trained` (a classifier)",
        "features": "the trained router's features: `word`, `char`, `word+char`, `embed`, `word+char+embed`",
        "C": "the trained router's regularization strengths (logistic regression's `C`)",
    },
    "tracking": {
        "experiment": "the MLflow experiment (default: the study's name); the server is "
                      "`MLFLOW_TRACKING_URI`'s",
    },
    "privacy": {
        "detect": "the built-in detectors that are on",
        "patterns": "name -> regular expression of further entities to redact",
        "drop": "fields (and context sections) whose whole value is replaced by `<DROPPED>`",
        "hash": "fields (and context sections) whose value is replaced by a keyed hash",
        "hash_key_env": "the environment variable holding the hash key (never the file)",
        "replacement": "the format a match is replaced with (`{entity}` only)",
        "phone_regions": "the regions whose phone numbers are detected",
    },
}


def config_reference() -> str:
    from stagewise.optimize import config as c

    return "\n".join([
        _table(c._StudyFile, ""),
        _table(c._Program, "program"),
        _table(c._Data, "data"),
        _table(c._Split, "split"),
        _table(c._Metrics, "metrics"),
        _table(c._EndToEnd, "metrics.end_to_end"),
        _table(c._StageMetric, "metrics.stages"),
        _table(c._Search, "search"),
        _table(c._StageSearch, "search.stages.NAME"),
        _table(c._Router, "search.routers.NAME"),
        _table(c._Tracking, "tracking"),
        _table(c._Privacy, "privacy"),
    ])


# --- the HTTP API -------------------------------------------------------------------------------

def http_reference() -> str:
    from stagewise.data import OutcomeTable
    from stagewise.models import get_lm
    from stagewise.optimize import export
    from stagewise.runtime.serve import create_app

    root = Path(__file__).resolve().parent.parent
    table = OutcomeTable.load(root / "data" / "routerbench" / "arc_challenge_test.csv")
    with tempfile.TemporaryDirectory() as folder:
        # A one-stage program, exported as `make demo` exports one: its input field is ``prompt``.
        (Path(folder) / "docs_example.py").write_text(
            "from stagewise.programs import Stage\n\n\ndef build():\n    return Stage('answer', 'prompt -> answer')\n")
        sys.path.insert(0, folder)
        try:
            from docs_example import build

            program = build()
            program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
            directory = export(program, Path(folder) / "best", factory="docs_example:build")
            schema = create_app(directory, token="docs", factory=build).openapi()
        finally:
            sys.path.remove(folder)
            sys.modules.pop("docs_example", None)
    return _openapi_markdown(schema)


def _schema_fields(schema: dict, components: dict) -> list[str]:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    properties, required = schema.get("properties", {}), set(schema.get("required", ()))
    rows = []
    for name, field in properties.items():
        if "$ref" in field:
            kind = field["$ref"].rsplit("/", 1)[1]
        else:
            kinds = [option.get("type", option.get("$ref", "any").rsplit("/", 1)[-1])
                     for option in field.get("anyOf", [field])]
            kind = " or ".join(str(k) for k in kinds)
        description = (field.get("description") or field.get("title") or "").replace("\n", " ")
        rows.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | {description} |")
    return rows


def _openapi_markdown(schema: dict) -> str:
    components = schema.get("components", {}).get("schemas", {})
    out = [f"OpenAPI {schema.get('openapi')}, `{schema['info']['title']}` {schema['info'].get('version', '')}.\n"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            out.append(f"### `{method.upper()} {path}`\n")
            summary = operation.get("description") or operation.get("summary") or ""
            if summary:
                out.append(summary.strip() + "\n")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                rows = _schema_fields(body, components)
                if rows:
                    out.append("Request body (JSON):\n\n| field | type | required | meaning |\n|---|---|---|---|")
                    out.extend(rows)
                    out.append("")
            out.append("| status | meaning |\n|---|---|")
            for status, response in operation.get("responses", {}).items():
                out.append(f"| {status} | {response.get('description', '')} |")
            out.append("")
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json", {}).get("schema")
                rows = _schema_fields(content, components) if content else []
                if rows:
                    out.append(f"Response {status} (JSON):\n\n| field | type | required | meaning |\n|---|---|---|---|")
                    out.extend(rows)
                    out.append("")
    return "\n".join(out)


GENERATORS = {"cli": cli_reference, "config": config_reference, "http": http_reference}
