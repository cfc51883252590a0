"""`stagewise models` (the model catalog) and `stagewise demo` (a two-stage chain on the local models)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from stagewise.cli.options import console, load_catalog

__all__ = ["DEMO_MESSAGES", "demo", "list_models"]

DEMO_MESSAGES = [
    "My card payment was declined twice at the supermarket today, please help!",
    "How do I change the email address on my account?",
    "The app crashes every time I open the transfers screen.",
]
"""The customer messages `stagewise demo` runs its chain on."""


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

    for spec in load_catalog(catalog):
        table.add_row(spec.name, spec.provider, spec.engine, price(spec.input_price), price(spec.output_price),
                      spec.price_source, f"{spec.context_window:,}", f"{spec.max_output:,}", spec.context_format,
                      spec.tokenizer, spec.latency_class)
    console.print(table)


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
