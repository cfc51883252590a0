"""Joint search against the simpler things a user could do, on the same data, splits, seeds and budget.

Four strategies on each pipeline of ``benchmarks/pipelines.py`` (plain ``dspy.Module`` programs
with three predictors each):

(a) one model everywhere: each model that can answer every stage, on every stage, no optimization;
(b) DSPy alone: one model everywhere plus DSPy's optimizers run by hand, as a DSPy user does today
    (``dspy.LabeledFewShot`` / ``dspy.BootstrapFewShot`` with a few demo counts, under
    ``dspy.context(lm=...)``); for each model the setting with the best dev quality is kept;
(c) model selection alone: ``stagewise.JointOptimizer`` over per-stage models only (optimizer
    ``none``), the per-stage model search LLMSelector does, without prompt or demo optimization;
(d) stagewise joint: ``stagewise.JointOptimizer`` over per-stage models, optimizers and demos
    (the same optimizers and demo counts as (b)).

Every strategy chooses its configurations on the dev split (its dev Pareto front: quality up,
cost down) and is reported on the test split, which no choice ever reads. Per strategy: the
best test quality, the cost per 1,000 requests of its cheapest configuration reaching 95 % of
the best test quality any strategy reached on that pipeline, and the hypervolume of its test
points against one reference point per pipeline shared by the four (quality 0, 1.1 x the
highest test cost of any strategy; cost as a share of that, so a hypervolume is in [0, 1]).

Budget of model calls. Every call goes through stagewise's usage ledger
(``stagewise.models.track_usage``) and is counted as a cold cache would count it: a request the
same strategy already sent (same model, same messages) is answered by DSPy's cache and is not a
new call. Selection calls (train and dev: compiling, bootstrapping, scoring) are the budget; test
calls only report. (b) runs its whole grid (models x settings) and its selection calls are the
budget B; (c) and (d) run Optuna trials until they have spent B (the last trial may take them
past it: the table shows what each spent) or their search space is exhausted; (a) is a subset of
(b)'s grid and spends what its few configurations need.

Goal: on every pipeline, (d)'s test hypervolume >= each of (a)-(c)'s. The script prints which
goal was missed and why, writes benchmarks/results/joint_vs_alternatives.json (and .png, the
four test fronts per pipeline) and exits 1 when a goal is missed.

    python benchmarks/joint_vs_alternatives.py [--quick] [--pipelines homework,math_intake] [--results DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dspy
import optuna
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import stagewise
from stagewise.data import split
from stagewise.models import track_usage
from stagewise.models.lm import get_lm
from stagewise.models.usage import UsageLedger, capturing_content
from stagewise.optimize import get_optimizer, pareto

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_module  # noqa: E402
from pipelines import BenchmarkPipeline, homework, math_intake  # noqa: E402
from results import Results  # noqa: E402

console = Console(width=170)

STRATEGIES = {
    "a": "(a) one model everywhere",
    "b": "(b) DSPy alone",
    "c": "(c) model selection alone",
    "d": "(d) stagewise joint",
}
SHARE = 0.95  # cost at >= 95 % of the best test quality
SPLIT = {"train": 0.2, "dev": 0.4, "test": 0.4}
SEED = 0
MAX_TRIALS = 400  # a search that only draws configurations it already scored stops here

# Per run size: requests per pipeline (split 20/40/40 % train/dev/test) and the demo counts of (b)
# and (d). The local models answer a call in about a second on an idle 2-core machine (several on a
# busy one): math_intake stays small. (c) and (d) score a trial on a third of dev before deciding to
# prune it (JointOptimizer's prune_on), the same for both.
SIZES = {
    "quick": {"homework": 60, "math_intake": 10, "demos": (1,)},
    "full": {"homework": 300, "math_intake": 25, "demos": (1, 2)},
}
OPTIMIZERS = ("labeled_fewshot", "bootstrap_fewshot")


# --- counting model calls ------------------------------------------------------------------

class CallCounter(UsageLedger):
    """A usage ledger that counts model calls as a cold cache would: a request this counter has
    already seen (same model, same messages) is not a new call. Keeps only the request keys."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()
        self.requests = 0
        self.cost_usd = 0.0
        self._seen_lock = threading.Lock()

    def add(self, record) -> None:
        content = record.content or {}
        key = hashlib.sha256(json.dumps([record.model, content.get("messages")], sort_keys=True,
                                        default=str).encode()).hexdigest()
        with self._seen_lock:
            self.requests += 1
            if key not in self.keys:
                self.keys.add(key)
                self.cost_usd += record.cost_usd or 0.0

    @property
    def calls(self) -> int:
        return len(self.keys)


class counting:
    """Inside the block, every model call is counted by ``counter`` (with its messages, for the key)."""

    def __init__(self, counter: CallCounter):
        self.counter = counter

    def __enter__(self):
        self._usage = track_usage(self.counter)
        self._content = capturing_content()
        self._usage.__enter__()
        self._content.__enter__()
        return self.counter

    def __exit__(self, *exc):
        self._content.__exit__(*exc)
        return self._usage.__exit__(*exc)


# --- one configuration, one strategy ---------------------------------------------------------

@dataclass
class Config:
    """One configuration a strategy scored: how to build it, and its dev and test points."""

    label: str
    make: object  # () -> a program ready to run, and the dspy.context settings to run it in
    dev_quality: float
    dev_cost_1k: float
    test_quality: float | None = None
    test_cost_1k: float | None = None


@dataclass
class Outcome:
    key: str
    configs: list[Config] = field(default_factory=list)  # every configuration scored on dev
    chosen: list[Config] = field(default_factory=list)  # the dev front: what the strategy reports
    calls: int = 0  # selection calls (train + dev), cold-cache count
    requests: int = 0  # selection requests including those DSPy's cache answered
    test_calls: int = 0
    trials: int | None = None
    exhausted: bool | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return STRATEGIES[self.key]

    def test_points(self) -> list[tuple[float, float]]:
        return [(c.test_quality, c.test_cost_1k) for c in self.chosen]


def dev_front(configs: list[Config]) -> list[Config]:
    frame = pd.DataFrame({"i": range(len(configs)), "quality": [c.dev_quality for c in configs],
                          "cost_per_request": [c.dev_cost_1k for c in configs]})
    return [configs[i] for i in pareto.front(frame)["i"]]


def hypervolume(points: list[tuple[float, float]], ref_cost: float, ref_quality: float = 0.0) -> float:
    """Area dominated by ``(quality, cost)`` points (quality up, cost down) inside the reference
    box, the cost axis as a share of ``ref_cost``."""
    inside = sorted((c, q) for q, c in points if c < ref_cost and q > ref_quality)
    area, best = 0.0, ref_quality
    for cost, quality in inside:
        if quality > best:
            area += (ref_cost - cost) * (quality - best)
            best = quality
    return area / ref_cost


def cost_at(points: list[tuple[float, float]], target: float) -> float | None:
    """The lowest cost of a point whose quality reaches ``target`` (None: none does)."""
    costs = [c for q, c in points if q >= target - 1e-12]
    return min(costs) if costs else None


class Runner:
    """The four strategies on one pipeline, on one split, with one pool of models."""

    def __init__(self, pipeline: BenchmarkPipeline, demos: tuple[int, ...], work: Path, bar: Progress):
        self.p, self.demos, self.work, self.bar = pipeline, demos, work, bar
        self.splits = split(pipeline.examples, **SPLIT, seed=SEED)
        self.train, self.dev, self.test = self.splits.train, self.splits.dev, self.splits.test
        self._lms: dict[str, dspy.BaseLM] = {}
        self.settings = [("none", 0)] + [(o, k) for o in OPTIMIZERS for k in demos]

    def lm(self, model: str):
        if model not in self._lms:
            self._lms[model] = get_lm(model, **self.p.lm_kwargs())
        return self._lms[model]

    def evaluate(self, program, examples, lm=None):
        with dspy.context(lm=lm) if lm is not None else _nothing():
            return stagewise.evaluate(program, examples, metric=self.p.metric, progress=False)

    def passes(self, example, prediction, trace=None) -> bool:
        return float(self.p.metric(example, prediction)) >= 0.5  # what stagewise's compile bootstraps on

    # (a) and (b): one model everywhere, DSPy's optimizers by hand

    def one_model(self, model: str, optimizer: str, demos: int):
        """A DSPy user's program: one LM for the whole program (dspy.context), compiled by hand."""
        lm = self.lm(model)
        with dspy.context(lm=lm):
            program = self.p.build()
            if optimizer == "labeled_fewshot":
                program = dspy.LabeledFewShot(k=demos).compile(program, trainset=self.train)
            elif optimizer == "bootstrap_fewshot":
                program = dspy.BootstrapFewShot(metric=self.passes, max_bootstrapped_demos=demos,
                                                max_labeled_demos=demos, max_rounds=1).compile(program,
                                                                                               trainset=self.train)
        return program, lm

    def single(self, key: str, settings: list[tuple[str, int]]) -> Outcome:
        outcome, counter, started = Outcome(key), CallCounter(), time.perf_counter()
        task = self.bar.add_task(f"{self.p.name} {STRATEGIES[key]}", total=len(self.p.everywhere) * len(settings))
        by_model: dict[str, list[Config]] = {}
        with counting(counter):
            for model in self.p.everywhere:
                for optimizer, demos in settings:
                    program, lm = self.one_model(model, optimizer, demos)
                    report = self.evaluate(program, self.dev, lm)
                    label = f"{model} everywhere" + (f" + {optimizer}({demos})" if optimizer != "none" else "")
                    config = Config(label, (program, lm), report.quality, 1000 * report.cost_per_request)
                    outcome.configs.append(config)
                    by_model.setdefault(model, []).append(config)
                    self.bar.advance(task)
        # (b): for each model, the setting with the best dev quality (ties: the cheaper, then the simpler)
        kept = [max(configs, key=lambda c: (c.dev_quality, -c.dev_cost_1k, -configs.index(c)))
                for configs in by_model.values()]
        outcome.chosen = dev_front(kept)
        outcome.calls, outcome.requests = counter.calls, counter.requests
        outcome.seconds = time.perf_counter() - started
        return outcome

    # (c) and (d): stagewise.JointOptimizer under a call budget

    def joint(self, key: str, optimizers: tuple[str, ...], demos: tuple[int, ...], budget: int) -> Outcome:
        outcome, counter, started = Outcome(key), CallCounter(), time.perf_counter()
        optimizer = stagewise.JointOptimizer(
            metric=self.p.metric, models=self.p.stage_models, optimizers=optimizers, demos=demos,
            trials=MAX_TRIALS, tracking=None, study=f"{self.p.name}-{key}", out_dir=self.work / f"{self.p.name}-{key}",
            seed=SEED, prune_on=max(4, len(self.dev) // 3), lm_options=self.p.lm_options, progress=False)
        program = self.p.build()
        runner = optimizer.study_for(program, trainset=self.train, valset=self.dev)
        space = space_size(runner.space)
        task = self.bar.add_task(f"{self.p.name} {STRATEGIES[key]}: calls", total=budget)

        def distinct(study) -> int:
            return len({json.dumps(t.params, sort_keys=True) for t in study.trials
                        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)})

        def enough(study, trial) -> None:
            self.bar.update(task, completed=min(budget, counter.calls))
            if counter.calls >= budget or distinct(study) >= space:
                study.stop()

        with dspy.context(adapter=dspy.JSONAdapter()), counting(counter):
            study = runner.open()
            study.optimize(lambda trial: runner.objective(study, trial), n_trials=MAX_TRIALS, callbacks=[enough])
        outcome.calls, outcome.requests = counter.calls, counter.requests
        outcome.trials = counted_trials(study)
        outcome.exhausted = distinct(study) >= space
        # The chosen program and the dev front, through the public API (no new trial: the budget is spent).
        optimizer.trials = outcome.trials
        optimizer.compile(self.p.build(), trainset=self.train, valset=self.dev)
        chooser = optimizer.runner_
        for _, row in optimizer.trials_.iterrows():
            choice = chooser.choice_of(row)
            config = Config(describe(choice), (chooser, choice), float(row["quality"]),
                            float(row["cost_per_1k_requests"]))
            outcome.configs.append(config)
        outcome.chosen = dev_front(outcome.configs)
        outcome.seconds = time.perf_counter() - started
        return outcome

    # the test split

    def report_on_test(self, outcome: Outcome) -> None:
        counter = CallCounter()
        started = time.perf_counter()
        with counting(counter), dspy.context(adapter=dspy.JSONAdapter()):
            for config in outcome.chosen:
                made = config.make
                if isinstance(made[0], dspy.Module):  # (a), (b): a compiled program and its one LM
                    report = self.evaluate(made[0], self.test, made[1])
                else:  # (c), (d): the study's configuration, rebuilt as JointOptimizer.select builds it
                    chooser, choice = made
                    report = self.evaluate(chooser.program_for(choice), self.test)
                config.test_quality, config.test_cost_1k = report.quality, 1000 * report.cost_per_request
        outcome.test_calls = counter.calls
        outcome.seconds += time.perf_counter() - started


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def counted_trials(study) -> int:
    """Trials that count against a study's budget (completed or pruned)."""
    from stagewise.optimize.study import Study

    return Study.counted(study)


def space_size(space) -> int:
    size = 1
    for choices in space.values():
        settings = sum(len(choices.demos) if get_optimizer(o).uses_demos else 1 for o in choices.optimizers)
        size *= len(choices.models) * settings
    return size


def describe(choice) -> str:
    parts = []
    for stage, model in choice.models.items():
        optimizer = choice.optimizers.get(stage, "none")
        extra = f"+{optimizer}({choice.demos.get(stage, 0)})" if optimizer != "none" else ""
        parts.append(f"{stage}={model.removeprefix('recorded/')}{extra}")
    return ", ".join(parts)


# --- one pipeline ---------------------------------------------------------------------------

def run_pipeline(pipeline: BenchmarkPipeline, demos: tuple[int, ...], work: Path, results: Results) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        runner = Runner(pipeline, demos, work, bar)
        sizes = runner.splits.sizes()
        console.print(f"[bold]{pipeline.title}[/bold]: {len(pipeline.examples)} requests, "
                      f"train/dev/test {sizes['train']}/{sizes['dev']}/{sizes['test']} (seed {SEED}); stages "
                      + ", ".join(f"{s} ({len(m)} models)" for s, m in pipeline.stage_models.items()))
        outcomes = {"a": runner.single("a", [("none", 0)]), "b": runner.single("b", runner.settings)}
        budget = outcomes["b"].calls
        outcomes["c"] = runner.joint("c", ("none",), (0,), budget)
        outcomes["d"] = runner.joint("d", ("none", *OPTIMIZERS), demos, budget)
        for outcome in outcomes.values():
            runner.report_on_test(outcome)
    return summarize(pipeline, runner, outcomes, budget, results)


def summarize(pipeline: BenchmarkPipeline, runner: Runner, outcomes: dict[str, Outcome], budget: int,
              results: Results) -> dict:
    points = [p for o in outcomes.values() for p in o.test_points()]
    ref_cost = 1.1 * max(c for _, c in points)
    best = max(q for q, _ in points)
    target = SHARE * best
    rows = {}
    table = Table(title=f"{pipeline.title}: test split ({len(runner.test)} requests), configurations chosen on dev "
                        f"({len(runner.dev)}); budget {budget} selection calls")
    for column in ("strategy", "configs on dev front", "best test quality", f"$ / 1k at >= {SHARE:.0%} of {best:.3f}",
                   "hypervolume", "selection calls", "test calls", "trials", "seconds"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for key, outcome in outcomes.items():
        test = outcome.test_points()
        hv = hypervolume(test, ref_cost)
        own_best = max(q for q, _ in test)
        at_target = cost_at(test, target)
        rows[key] = {
            "strategy": outcome.name, "hypervolume": round(hv, 6), "best_test_quality": round(own_best, 6),
            "cost_per_1k_at_95pct_of_best": at_target,
            "cost_per_1k_at_95pct_of_own_best": cost_at(test, SHARE * own_best),
            "selection_calls": outcome.calls, "selection_requests": outcome.requests, "test_calls": outcome.test_calls,
            "trials": outcome.trials, "space_exhausted": outcome.exhausted, "seconds": round(outcome.seconds, 1),
            "dev_scored": len(outcome.configs),
            "test_front": [{"config": c.label, "dev_quality": round(c.dev_quality, 6), "dev_cost_per_1k": c.dev_cost_1k,
                            "test_quality": round(c.test_quality, 6), "test_cost_per_1k": c.test_cost_1k}
                           for c in sorted(outcome.chosen, key=lambda c: c.test_cost_1k)],
        }
        table.add_row(outcome.name, str(len(outcome.chosen)), f"{own_best:.3f}",
                      "-" if at_target is None else f"{at_target:.4f}", f"{hv:.4f}", str(outcome.calls),
                      str(outcome.test_calls), "-" if outcome.trials is None else
                      f"{outcome.trials}{' (space exhausted)' if outcome.exhausted else ''}", f"{outcome.seconds:.0f}")
    console.print(table)
    detail = Table(title=f"{pipeline.name}: each strategy's configurations chosen on dev, scored on test")
    for column in ("strategy", "configuration", "dev quality", "dev $ / 1k", "test quality", "test $ / 1k"):
        detail.add_column(column, justify="left" if column in ("strategy", "configuration") else "right")
    for key, row in rows.items():
        for point in row["test_front"]:
            detail.add_row(STRATEGIES[key], point["config"], f"{point['dev_quality']:.3f}",
                           f"{point['dev_cost_per_1k']:.4f}", f"{point['test_quality']:.3f}",
                           f"{point['test_cost_per_1k']:.4f}")
    console.print(detail)

    name = pipeline.name
    reasons = []
    for key in ("a", "b", "c"):
        margin = round(rows["d"]["hypervolume"] - rows[key]["hypervolume"], 6)
        why = why_not(pipeline, rows, key) if margin < 0 else ""
        if why:
            reasons.append(f"{STRATEGIES['d']} < {STRATEGIES[key]}: {why}")
        results.figure(f"{name}: hypervolume (d) - ({key})", margin, goal=(">=", 0.0),
                       note=f"(d) {rows['d']['hypervolume']:.6f}, ({key}) {rows[key]['hypervolume']:.6f}"
                            + (f"; missed: {why}" if why else ""))
    results.figure(f"{name}: strategies", rows,
                   note=f"reference point: quality 0, cost {ref_cost:.6g} USD per 1k (1.1 x the highest test cost); "
                        f"hypervolume with cost as a share of it; budget {budget} selection calls ((b)'s grid)")
    results.figure(f"{name}: setup", {"requests": len(pipeline.examples), "splits": runner.splits.sizes(),
                                      "split_seed": SEED, "sampler_seed": SEED, "budget_calls": budget,
                                      "reference_cost_per_1k": ref_cost, "reference_quality": 0.0,
                                      "dspy_settings": [f"{o}({k})" if o != "none" else o for o, k in runner.settings],
                                      "stage_models": pipeline.stage_models, "everywhere": pipeline.everywhere,
                                      "prompt_dependent": pipeline.prompt_dependent, "notes": pipeline.notes})
    if pipeline.notes:
        console.print(f"[dim]{pipeline.name}: {pipeline.notes}[/dim]")
    for reason in reasons:
        console.print(f"[red]goal missed on {name}[/red]: {reason}")
    return {"rows": rows, "ref_cost": ref_cost, "best": best}


def why_not(pipeline: BenchmarkPipeline, rows: dict, key: str) -> str:
    """In words, why (d)'s test hypervolume is below ``key``'s, read off the figures (not tuned away)."""
    d, other = rows["d"], rows[key]
    parts = []
    if not pipeline.prompt_dependent:
        parts.append("recorded answers do not depend on prompts or demos, so (d)'s optimizer choices change "
                     "nothing and cost it calls that (c) spends on model assignments")
    if d["selection_calls"] < other["selection_calls"]:
        parts.append(f"(d) spent fewer selection calls ({d['selection_calls']} against {other['selection_calls']})")
    cheapest = {name: min(row["test_front"], key=lambda p: p["test_cost_per_1k"]) for name, row in
                (("d", d), (key, other))}
    if cheapest[key]["test_cost_per_1k"] < cheapest["d"]["test_cost_per_1k"]:
        low, mine = cheapest[key], cheapest["d"]
        parts.append(f"({key})'s cheapest configuration ({low['config']}: test quality {low['test_quality']:.3f} at "
                     f"${low['test_cost_per_1k']:.4g} per 1k) is cheaper than any (d) kept on its dev front (cheapest: "
                     f"{mine['test_quality']:.3f} at ${mine['test_cost_per_1k']:.4g}), and (d)'s dearer points do not "
                     "make up that area")
    dev_best = max(p["dev_quality"] for p in d["test_front"])
    other_dev = max(p["dev_quality"] for p in other["test_front"])
    if dev_best >= other_dev and d["best_test_quality"] < other["best_test_quality"]:
        parts.append(f"(d)'s best configuration on dev ({dev_best:.3f} against {other_dev:.3f}) is not the best on "
                     f"test ({d['best_test_quality']:.3f} against {other['best_test_quality']:.3f}): the dev choice "
                     "did not carry over to the test split")
    elif dev_best < other_dev:
        parts.append(f"(d) found no configuration as good on dev ({dev_best:.3f} against {other_dev:.3f}) "
                     "within the budget")
    return "; ".join(parts) or "the test fronts differ where the dev fronts did not predict it"


# --- the plot --------------------------------------------------------------------------------

COLORS = {"a": "#7f7f7f", "b": "#e67e22", "c": "#2980b9", "d": "#c0392b"}
STYLES = {"a": (":", "s"), "b": ("--", "^"), "c": ("-.", "D"), "d": ("-", "o")}  # (a) and (b) may coincide


def plot(summaries: dict[str, dict], path: Path, titles: dict[str, str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(summaries), figsize=(6.5 * len(summaries), 4.8), squeeze=False)
    for ax, (name, summary) in zip(axes[0], summaries.items()):
        for key, row in summary["rows"].items():
            points = sorted((p["test_cost_per_1k"], p["test_quality"]) for p in row["test_front"])
            front, best = [], -1.0
            for cost, quality in points:
                if quality > best:
                    front.append((cost, quality))
                    best = quality
            xs = [c for c, _ in front] + [summary["ref_cost"]]
            ys = [q for _, q in front] + [front[-1][1]]
            line, marker = STYLES[key]
            ax.step(xs, ys, where="post", color=COLORS[key], alpha=0.85, linestyle=line, linewidth=1.6,
                    label=f"{STRATEGIES[key]} (HV {row['hypervolume']:.3f})")
            ax.scatter([c for c, _ in points], [q for _, q in points], marker=marker, edgecolors=COLORS[key],
                       s=30 if key != "a" else 60, facecolors="none" if key == "a" else COLORS[key], zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("test cost per 1,000 requests (USD, log)")
        ax.set_ylabel("test quality")
        ax.set_title(titles[name], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and demo counts (CI: a few minutes)")
    parser.add_argument("--pipelines", default="homework,math_intake", help="comma-separated: homework, math_intake")
    parser.add_argument("--results", type=Path, default=results_module.RESULTS,
                        help="folder for joint_vs_alternatives.json and .png (default: benchmarks/results)")
    args = parser.parse_args()
    results_module.RESULTS = args.results  # Results.write reads it
    size = SIZES["quick" if args.quick else "full"]
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    factories = {"homework": homework, "math_intake": math_intake}
    unknown = [n for n in names if n not in factories]
    if unknown:
        parser.error(f"unknown pipeline(s) {unknown}; pipelines: {', '.join(factories)}")
    # DSPy's cache in memory only: one run shares it across strategies (a repeated request is fast),
    # no run reuses another's answers, and calls are counted per strategy as a cold cache would.
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    # One adapter for every strategy: the local models answer typed outputs through JSONAdapter
    # (a JSON-schema constrained decode), as stagewise's own search uses by default.
    dspy.configure(adapter=dspy.JSONAdapter())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = Results("joint_vs_alternatives", quick=args.quick, pipelines=names, split=SPLIT, seed=SEED,
                      sizes={n: size[n] for n in names}, demos=list(size["demos"]), share=SHARE,
                      strategies=STRATEGIES)
    started = time.perf_counter()
    summaries, titles = {}, {}
    with tempfile.TemporaryDirectory(prefix="joint-bench-") as work:
        for name in names:
            pipeline = factories[name](size[name], seed=SEED)
            titles[name] = pipeline.title
            summaries[name] = run_pipeline(pipeline, size["demos"], Path(work), results)
    png = plot(summaries, args.results / "joint_vs_alternatives.png", titles)
    console.print(f"plot: {png}")
    results.figure("benchmark seconds", round(time.perf_counter() - started, 1))
    results.finish()


if __name__ == "__main__":
    main()
