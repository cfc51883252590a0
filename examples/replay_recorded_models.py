"""Replay real API models offline: recorded answers, recorded correctness, real cost.

Runs a one-stage DSPy program (``prompt -> answer``) on several RouterBench models over the
ARC-Challenge test prompts, without any API key, and prints each model's recorded accuracy
and cost per 1,000 requests, from stagewise's usage records.

    python examples/replay_recorded_models.py [--table data/routerbench/arc_challenge_test.csv] [--limit 100]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import dspy
from rich.console import Console
from rich.progress import track
from rich.table import Table

import stagewise  # noqa: F401  (offline price map before DSPy loads)
from stagewise.data import OutcomeTable
from stagewise.models import default_catalog, get_lm, request_scope, stage_scope, track_usage

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "data" / "routerbench" / "arc_challenge_test.csv"
MODELS = ["recorded/gpt-4-1106-preview", "recorded/gpt-3.5-turbo-1106", "recorded/claude-instant-v1",
          "recorded/mixtral-8x7b-chat", "recorded/mistral-7b-chat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--limit", type=int, default=100, help="number of prompts")
    args = parser.parse_args()

    table = OutcomeTable.load(args.table)
    console = Console(width=max(shutil.get_terminal_size((120, 24)).columns, 110))
    console.print(table.report())
    catalog = default_catalog()
    program = dspy.Predict("prompt -> answer")
    results = Table(title=f"{args.limit} ARC-Challenge prompts, replayed")
    for column in ("model", "answered", "accuracy", "$ per 1k requests", "tokens in/out per request"):
        results.add_column(column)
    for name in MODELS:
        lm = get_lm(name, replay_table=table)
        correct = answered = 0
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), track_usage() as ledger:
            for row in track(range(min(args.limit, len(table))), description=name, console=console):
                prompt = table.prompts[row]
                try:
                    with request_scope(f"row-{row}"), stage_scope("answer"):
                        program(prompt=prompt)
                except dspy.utils.exceptions.LMInvalidRequestError:
                    continue  # an empty cell in the table: no recorded answer to replay
                answered += 1
                correct += table.outcome(prompt, catalog[name].model).correct
        totals = ledger.totals().iloc[0]
        calls = max(int(totals["calls"]), 1)
        results.add_row(name, str(answered), f"{correct / max(answered, 1):.1%}",
                        f"{1000 * totals['cost_usd'] / calls:.3f}",
                        f"{totals['input_tokens'] / calls:.0f} / {totals['output_tokens'] / calls:.1f}")
    console.print(results)


if __name__ == "__main__":
    main()
