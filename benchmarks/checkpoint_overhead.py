"""The cost of checkpointing per stage, relative to the stage's model call on the local model.

A three-stage chain on SmolLM2 (DSPy's cache off, greedy decoding) runs the same requests
alternately with and without a checkpoint after every stage (SQLite, the default store), in
one process. Prints, per stage, the time spent writing checkpoints against the time of the
stage's model call, and the ratio of whole-request times with and without checkpoints.
Goal: <= 5% with SQLite.

    python benchmarks/checkpoint_overhead.py [--rounds 3] [--store sqlite:///tmp/runs.db]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import dspy
from results import Results
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import stagewise  # noqa: F401  (offline price map before DSPy loads)
from stagewise.models import get_lm, track_usage
from stagewise.programs import Chain, Stage, observing
from stagewise.runtime import Checkpointer, open_checkpoints

MESSAGES = [
    "My card has not arrived after two weeks.",
    "Why was I charged a fee for my top-up?",
    "I think someone stole my card yesterday.",
    "What exchange rate do you use for euros?",
]


def build(lm) -> Chain:
    return Chain("desk", [Stage("topic", "message -> topic", lm=lm),
                          Stage("reply", "message, topic -> reply", lm=lm),
                          Stage("summary", "reply -> summary", lm=lm)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", default=None, help="checkpoint store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    store = open_checkpoints(args.store or f"sqlite:///{tempfile.mkdtemp()}/runs.db")
    program = build(get_lm("smollm2-135m", cache=False, max_tokens=48))
    console = Console()
    plain, checkpointed, writes, calls = [], [], [], []
    with dspy.context(adapter=dspy.JSONAdapter()):
        program(message="warm-up")
        total = args.rounds * len(MESSAGES)
        with Progress(TextColumn("requests"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("requests", total=total)
            for round_ in range(args.rounds):
                for number, message in enumerate(MESSAGES):
                    start = time.perf_counter()
                    program(message=message)
                    plain.append(time.perf_counter() - start)
                    checkpointer = Checkpointer(store, f"bench-{round_}-{number}", program=program)
                    start = time.perf_counter()
                    with observing(checkpointer), track_usage() as ledger:
                        program(message=message)
                    checkpointed.append(time.perf_counter() - start)
                    stages = len(checkpointer.record["steps"])
                    # the request's first and final checkpoints are per request, not per stage
                    writes.append(checkpointer.write_seconds / stages)
                    calls.extend(r.latency_s for r in ledger.records)
                    bar.advance(task)
    per_stage_write, per_call = statistics.mean(writes), statistics.mean(calls)
    table = Table(title=f"checkpoint cost on SmolLM2, {len(plain)} requests x 3 stages, {store.url.split('://')[0]}")
    for column in ("measure", "value"):
        table.add_column(column)
    table.add_row("model call per stage (mean)", f"{per_call * 1000:.1f} ms")
    table.add_row("checkpoint writes per stage (mean, incl. the request's first and last)",
                  f"{per_stage_write * 1000:.2f} ms")
    table.add_row("checkpoint / model call", f"{per_stage_write / per_call:.2%}")
    table.add_row("request time with / without checkpoints (median)",
                  f"{statistics.median(checkpointed) / statistics.median(plain):.3f}")
    console.print(table)
    console.print(f"checkpointing per stage = {per_stage_write / per_call:.2%} of the stage's model call (goal <= 5%)")
    results = Results("checkpoint_overhead", rounds=args.rounds, store=store.url.split("://")[0])
    results.figure("model call per stage s", per_call)
    results.figure("checkpoint writes per stage s", per_stage_write)
    results.figure("checkpoint / model call", per_stage_write / per_call, goal=("<=", 0.05))
    results.finish()


if __name__ == "__main__":
    main()
