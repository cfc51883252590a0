"""Trained routers on recorded outcomes, each figure printed beside its anchor.

1. RouteLLM GSM8K (Mixtral vs GPT-4 Turbo, 1,319 questions), 5-fold cross-validation: APGR of
   prompt-only routers and of cascade scorers (which also read Mixtral's answer). Anchors:
   random 0.5; RouteLLM's best published 0.622; a TF-IDF logistic regression about 0.57 as a
   pre-router and 0.60 as a cascade scorer. Goal: >= 0.70 for the best.
2. RouterBench ARC-Challenge (11 models), train on the train split, test on the test split:
   AIQ against the zero router's (the hull of the single models), and the cost per 1,000
   queries at >= 95% of GPT-4's accuracy beside GPT-4's own cost.
3. Routing decision latency, measured in the same run: p50 per query of a trained label router
   against the local LLM router of the banking example (SmolLM2-135M through llama.cpp,
   DSPy's cache off). Goal: at least 100 times faster.

    python benchmarks/routing.py [--embeddings] [--plots DIR] [--llm-queries 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import stagewise  # noqa: F401  (offline price map before DSPy loads)
import dspy
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stagewise.routing import LabelRouter, load_outcomes, route_eval
from stagewise.routing import evaluation as ev
from stagewise.routing.evaluation import plot_report

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
GSM8K_ROUTERS = [
    ("win:features=word", "TF-IDF LR pre-router ~0.57"),
    ("win", "RouteLLM best published 0.622"),
    ("quality", "RouteLLM best published 0.622"),
    ("cascade:features=word", "TF-IDF LR cascade ~0.60"),
    ("cascade:features=checks", "goal >= 0.70"),
    ("cascade", "goal >= 0.70"),
]
EMBEDDING_ROUTERS = [("win:features=embed", "RouteLLM best published 0.622"),
                     ("cascade:features=word+char+embed+checks", "goal >= 0.70")]
ARC_ROUTERS = ["quality:features=word", "quality"]

console = Console()


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def gsm8k(embeddings: bool, plots: Path | None) -> float:
    outcomes = load_outcomes(DATA / "routellm" / "gsm8k_responses.csv")
    routers = GSM8K_ROUTERS + (EMBEDDING_ROUTERS if embeddings else [])
    table = Table(title=f"RouteLLM GSM8K, {len(outcomes)} questions, 5-fold CV (APGR: random 0.5)")
    for column in ("router", "APGR", "CPT50", "CPT80", "saving at 95%", "anchor"):
        table.add_column(column, justify="left" if column in ("router", "anchor") else "right")
    best = None
    with progress() as bar:
        task = bar.add_task("GSM8K routers", total=len(routers))
        for spec, anchor in routers:
            report = route_eval(spec, outcomes, cv=5)
            m = report.metrics
            saving = m["cost_saving_at_95"]
            table.add_row(spec, f"{m['apgr']:.3f}", _pct(m["cpt50"]), _pct(m["cpt80"]),
                          "-" if saving is None else f"{saving['saving']:.0%}", anchor)
            if best is None or m["apgr"] > best.metrics["apgr"]:
                best = report
            bar.advance(task)
    table.add_row("random (10 seeds)", f"{best.metrics['random']['apgr']:.3f}", _pct(best.metrics["random"]["cpt50"]),
                  _pct(best.metrics["random"]["cpt80"]), "", "0.5")
    console.print(table)
    console.print(f"best: {best.router}, APGR {best.metrics['apgr']:.3f} against RouteLLM's 0.622 "
                  f"(ratio {best.metrics['apgr'] / 0.622:.2f}); goal >= 0.70: "
                  f"{'met' if best.metrics['apgr'] >= 0.70 else 'NOT met'}")
    if plots:
        plot_report(best, plots / "routing_gsm8k.png")
    return best.metrics["apgr"]


def arc(plots: Path | None) -> None:
    train = load_outcomes(DATA / "routerbench" / "arc_challenge_train.csv")
    test = load_outcomes(DATA / "routerbench" / "arc_challenge_test.csv")
    console.print(train.report())
    console.print(test.report())
    table = Table(title=f"RouterBench ARC-Challenge, {len(test)} test prompts, 11 models")
    for column in ("router", "AIQ", "zero router AIQ", "random AIQ", "$ / 1k at >= 95% of GPT-4", "GPT-4 $ / 1k"):
        table.add_column(column, justify="left" if column == "router" else "right")
    gpt4 = "gpt-4-1106-preview"
    for spec in ARC_ROUTERS:
        report = route_eval(spec, train, test)
        m = report.metrics
        gpt4_figures = m["single_models"][gpt4]
        target = 0.95 * gpt4_figures["quality"]
        point = ev.cost_saving(report.curve, target, gpt4_figures["cost"])
        table.add_row(spec, f"{m['aiq']:.4f}", f"{m['zero_router_aiq']:.4f}", f"{m['random']['aiq']:.4f}",
                      "-" if point is None else f"{point['cost'] * 1000:.4f} ({point['quality']:.3f} acc)",
                      f"{gpt4_figures['cost'] * 1000:.4f} ({gpt4_figures['quality']:.3f} acc)")
        if plots and spec == ARC_ROUTERS[-1]:
            plot_report(report, plots / "routing_arc.png")
    console.print(table)


def latency(llm_queries: int) -> None:
    import sys

    from stagewise.models.lm import get_lm
    from stagewise.programs import Stage

    sys.path.insert(0, str(ROOT / "examples" / "banking"))
    from banking_pipeline import PickArea

    intents = {"card_arrival": "cards", "lost_or_stolen_card": "cards",
               "exchange_rate": "payments", "top_up_failed": "payments"}
    train = pd.read_csv(DATA / "banking77" / "train.csv")
    queries = pd.read_csv(ROOT / "examples" / "banking" / "banking77_subset.csv")
    # The example's 80 queries come from Banking77's train split: the router never sees them.
    train = train[train["category"].isin(intents) & ~train["text"].isin(queries["text"])]
    router = LabelRouter().fit(train["text"].tolist(), train["category"].map(intents).tolist())
    llm = Stage("route", PickArea, lm=get_lm("smollm2-135m", cache=False))

    trained_times, llm_times, llm_right = [], [], 0
    texts = queries["text"].tolist()
    for text in texts:
        start = time.perf_counter()
        router.predict([text])
        trained_times.append(time.perf_counter() - start)
    # The local engine answers typed signatures through JSONAdapter (a grammar-constrained JSON object).
    with progress() as bar, dspy.context(adapter=dspy.JSONAdapter()):
        task = bar.add_task("LLM router calls", total=llm_queries)
        for text, area in zip(texts[:llm_queries], queries["area"][:llm_queries]):
            start = time.perf_counter()
            prediction = llm(message=text)
            llm_times.append(time.perf_counter() - start)
            llm_right += prediction.area == area
            bar.advance(task)
    trained_accuracy = (router.predict(texts) == queries["area"].to_numpy()).mean()
    p50_trained, p50_llm = statistics.median(trained_times), statistics.median(llm_times)
    table = Table(title="Routing decision latency per query (banking areas)")
    for column in ("router", "queries", "p50 ms", "accuracy"):
        table.add_column(column, justify="left" if column == "router" else "right")
    table.add_row("trained LabelRouter (TF-IDF + LR)", str(len(texts)), f"{p50_trained * 1000:.2f}",
                  f"{trained_accuracy:.3f}")
    table.add_row("LLM router (SmolLM2-135M, llama.cpp)", str(len(llm_times)), f"{p50_llm * 1000:.1f}",
                  f"{llm_right / len(llm_times):.3f}")
    console.print(table)
    console.print(f"LLM p50 / trained p50 = {p50_llm / p50_trained:.0f}x (goal: >= 100x)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", action="store_true", help="also the MiniLM embedding routers (slower)")
    parser.add_argument("--plots", type=Path, default=None, help="save the GSM8K and ARC plots in this folder")
    parser.add_argument("--llm-queries", type=int, default=20)
    args = parser.parse_args()
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
    gsm8k(args.embeddings, args.plots)
    arc(args.plots)
    latency(args.llm_queries)


if __name__ == "__main__":
    main()
