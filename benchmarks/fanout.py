"""Fan-out concurrency and per-stage overhead, measured side by side in one run.

Two figures:

1. fan-out wall time / slowest branch time, 3 branches (goal <= 1.2): each branch alone,
   then the three together in a ``FanOut``. If branches ran one after another the ratio
   would be near the sum of the branch times over the slowest (about 2 here).
2. stagewise's per-stage overhead / model call time (goal <= 2%): a stage's wall time minus
   the time of its model call (as the usage record measured it around DSPy's call), over
   the model call time. The overhead is everything stagewise adds: section selection,
   budget fitting, format rendering, trace bookkeeping (DSPy's adapter is included too).

The branches call a provider over real HTTP on loopback: an OpenAI-compatible endpoint,
started here, that answers each model after a fixed latency (0.30 s, 0.45 s, 0.60 s) with
that model's fixed JSON answer. It stands in for hosted models, whose calls are
network-bound: local llama.cpp models on this machine's two cores would compete for the CPU,
which measures the CPU, not the orchestration.

    python benchmarks/fanout.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import dspy
from results import Results
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import stagewise  # noqa: F401  (offline price map before DSPy loads)
from stagewise.models import ModelSpec, get_lm
from stagewise.programs import FanOut, MergeProfile, Stage

LATENCY = {"fast": 0.30, "medium": 0.45, "slow": 0.60}


# What each stand-in model answers (the branch that uses it asks for exactly this field).
ANSWER = {"fast": {"sentiment": "unhappy"}, "medium": {"topic": "card"}, "slow": {"priority": 3}}


class Provider(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(LATENCY[body["model"]])
        content = json.dumps(ANSWER[body["model"]])
        reply = json.dumps({
            "id": "bench", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class Sentiment(dspy.Signature):
    """Is the customer happy, neutral or unhappy?"""

    ticket: str = dspy.InputField()
    sentiment: Literal["happy", "neutral", "unhappy"] = dspy.OutputField()


class Topic(dspy.Signature):
    """What is the ticket about?"""

    ticket: str = dspy.InputField()
    topic: Literal["card", "transfer", "account", "other"] = dspy.OutputField()


class Priority(dspy.Signature):
    """How urgent is the ticket, from 1 (can wait) to 3 (blocked now)?"""

    ticket: str = dspy.InputField()
    priority: int = dspy.OutputField()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"

    def lm(name: str):
        spec = ModelSpec(name=f"loopback-{name}", provider="openai-compatible", engine="litellm",
                         model=f"openai/{name}", api_base=base, input_price=1.0, output_price=2.0,
                         context_window=8192, max_output=256, tokenizer="cl100k_base")
        return get_lm(spec, cache=False)

    branches = {"sentiment": (Sentiment, "fast"), "topic": (Topic, "medium"), "priority": (Priority, "slow")}
    stages = {name: Stage(name, signature, lm=lm(speed)) for name, (signature, speed) in branches.items()}
    fanout = FanOut("ticket", stages, MergeProfile())
    ticket = "My card was blocked at the airport and I cannot pay for my flight, please fix this now!"

    alone: dict[str, list[float]] = {name: [] for name in branches}
    together: list[float] = []
    overhead: list[float] = []
    with dspy.context(adapter=dspy.JSONAdapter()):
        for stage in stages.values():  # warm-up: imports, connection pools, first adapter calls
            stage(ticket=ticket)
        fanout(ticket=ticket)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns) as progress:
            task = progress.add_task("rounds", total=args.rounds)
            for _ in range(args.rounds):
                for name, stage in stages.items():
                    start = time.perf_counter()
                    prediction = stage(ticket=ticket)
                    elapsed = time.perf_counter() - start
                    alone[name].append(elapsed)
                    call = prediction.trace[name].latency_s
                    overhead.append((elapsed - call) / call)
                start = time.perf_counter()
                fanout(ticket=ticket)
                together.append(time.perf_counter() - start)
                progress.advance(task)
    server.shutdown()

    console = Console()
    table = Table(title=f"fan-out of 3 branches over loopback HTTP, {args.rounds} rounds (median seconds)")
    for column in ("run", "median s", "model latency s"):
        table.add_column(column)
    for name, (_, speed) in branches.items():
        table.add_row(f"branch {name} alone", f"{statistics.median(alone[name]):.3f}", f"{LATENCY[speed]:.2f}")
    table.add_row("fan-out (3 branches)", f"{statistics.median(together):.3f}", f"max {max(LATENCY.values()):.2f}")
    console.print(table)
    slowest = max(statistics.median(times) for times in alone.values())
    serial = sum(statistics.median(times) for times in alone.values())
    console.print(f"fan-out wall / slowest branch = {statistics.median(together) / slowest:.3f} (goal <= 1.2; "
                  f"one after another would be {serial / slowest:.2f})")
    console.print(f"per-stage overhead / model call time = {100 * statistics.median(overhead):.2f}% (goal <= 2%)")
    results = Results("fanout", rounds=args.rounds, branches=len(branches))
    results.figure("fan-out wall / slowest branch", statistics.median(together) / slowest, goal=("<=", 1.2))
    results.figure("per-stage overhead / model call", statistics.median(overhead), goal=("<=", 0.02))
    results.finish()


if __name__ == "__main__":
    main()
