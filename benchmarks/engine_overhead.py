"""Overhead of stagewise's local engine against a direct llama-cpp-python call.

For the same prompts, in one run, calls alternate between:

- direct: ``llama_cpp.Llama(...).create_chat_completion(...)`` on the same GGUF file with
  the same context size and threads, context reset before each call (as the engine does,
  for determinism);
- stagewise: ``StagewiseLM`` (DSPy's LM call path, the engine protocol, usage accounting),
  with DSPy's cache off so every call reaches the model.

Both paths generate the same tokens (greedy, fixed seed), so the ratio of their times is the
overhead of the layers stagewise adds (goal: <= 1.05). A second pair compares JSON-schema
constrained calls on the same schema: llama-cpp-python compiles the grammar per call and
checks every vocabulary entry against it per token; stagewise reuses a compiled grammar and
checks the likeliest token first (``LazyGrammarFilter``), with the same output. Prints a
table, the ratios, tokens per second and how many outputs differ (expected: none).

    python benchmarks/engine_overhead.py [--model smollm2-135m] [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

from llama_cpp import Llama
from results import Results
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import stagewise  # noqa: F401  (offline price map before DSPy loads)
from stagewise.models import get_lm
from stagewise.models.constrained import OPTIMISTIC_CHARS_PER_TOKEN, bound_schema
from stagewise.models.weights import weights_path

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List four fruits that are red.",
    "What should I do if my bank card is stolen?",
    "Describe a cat to someone who has never seen one.",
    "Give three tips for writing clear emails.",
]
SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string", "maxLength": 60}, "priority": {"type": "integer"},
                   "urgent": {"type": "boolean"}},
    "required": ["topic", "priority", "urgent"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a local catalog model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    lm = get_lm(args.model, cache=False, max_tokens=args.max_tokens)
    engine = lm.engine
    llama = Llama(model_path=str(weights_path(engine.weights)), n_ctx=engine.n_ctx, n_threads=engine.n_threads,
                  seed=0, verbose=False)

    def direct(messages, response_format=None):
        llama.reset()
        out = llama.create_chat_completion(messages=messages, max_tokens=args.max_tokens, temperature=0.0,
                                           seed=0, response_format=response_format)
        return out["usage"]["completion_tokens"], out["choices"][0]["message"]["content"]

    def through_stagewise(messages, response_format=None):
        kwargs = {"response_format": response_format} if response_format else {}
        text = lm(messages=messages, **kwargs)[0]
        return lm.usage.records[-1].output_tokens, text

    # The direct path gets the schema as stagewise bounds it to max_tokens: the same grammar.
    bounded = bound_schema(SCHEMA, args.max_tokens, OPTIMISTIC_CHARS_PER_TOKEN)
    cases = {
        "plain": (None, None),
        "json schema": ({"type": "json_object", "schema": bounded},
                        {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}}),
    }
    times = {(case, path): [] for case in cases for path in ("direct", "stagewise")}
    tokens = {key: 0 for key in times}
    mismatches = 0
    for messages in ([{"role": "user", "content": PROMPTS[0]}],):  # warm-up: load, first grammar
        direct(messages), through_stagewise(messages)

    total = args.rounds * len(PROMPTS) * len(cases)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task("calls (pairs)", total=total)
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                messages = [{"role": "user", "content": prompt}]
                for case, (direct_format, stagewise_format) in cases.items():
                    pair = {}
                    for path, call, fmt in (("direct", direct, direct_format),
                                            ("stagewise", through_stagewise, stagewise_format)):
                        start = time.perf_counter()
                        count, text = call(messages, fmt)
                        times[(case, path)].append(time.perf_counter() - start)
                        tokens[(case, path)] += count
                        pair[path] = text
                    mismatches += pair["direct"] != pair["stagewise"]
                    progress.advance(task)

    console = Console()
    table = Table(title=f"{args.model}: {args.rounds} rounds x {len(PROMPTS)} prompts, max_tokens={args.max_tokens}")
    for column in ("case", "path", "total s", "median s/call", "output tokens", "tokens/s"):
        table.add_column(column)
    for (case, path), samples in times.items():
        table.add_row(case, path, f"{sum(samples):.2f}", f"{statistics.median(samples):.3f}",
                      str(tokens[(case, path)]), f"{tokens[(case, path)] / sum(samples):.1f}")
    console.print(table)
    results = Results("engine_overhead", model=args.model, rounds=args.rounds, max_tokens=args.max_tokens)
    for case in cases:
        ratio = sum(times[(case, "stagewise")]) / sum(times[(case, "direct")])
        console.print(f"{case}: stagewise / direct time ratio = {ratio:.3f} (goal <= 1.05)")
        results.figure(f"{case}: stagewise / direct time", ratio, goal=("<=", 1.05))
    console.print(f"outputs that differ between the paths: {mismatches} of {total}")
    results.figure("outputs that differ between the paths", mismatches, goal=("<=", 0))
    results.finish()


if __name__ == "__main__":
    main()
