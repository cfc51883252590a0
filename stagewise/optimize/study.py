"""The joint search: one Optuna multi-objective study over per-stage models, optimizers and demos.

Each trial builds the program, assigns each stage's model, applies each stage's optimizer
(compiled once per content, see ``compile``), and scores the program on the dev split:
quality up, cost per request down. A trial is first scored on a small dev subset and
pruned when it is hopeless: below the quality of a completed trial that was no more
expensive, by a margin. The study lives in storage (SQLite by default), so a rerun with
the same study name continues it. Every trial is an MLflow run nested under the study's.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from stagewise.data.splits import split_fingerprint
from stagewise.errors import BudgetError
from stagewise.metrics.report import (
    PASS,
    EndToEnd,
    EvaluationError,
    EvaluationReport,
    StageMetric,
    check_metrics,
    evaluate,
)
from stagewise.models.lm import get_lm
from stagewise.optimize import pareto
from stagewise.optimize.compile import CompileCache, Reflection, compile_stages
from stagewise.optimize.export import state_without_models
from stagewise.optimize.space import (
    DEMO_OPTIMIZERS,
    RouterChoices,
    SearchSpaceError,
    StageChoices,
    TrialChoice,
    cascades,
    router_modules,
    suggest,
    validate,
    validate_routers,
    validate_thresholds,
)
from stagewise.optimize.tracking import Tracker
from stagewise.programs.predictors import set_models, stages_of
from stagewise.redaction import redact


def _named(metric) -> str:
    """A metric's name, the same in every process (a metric object's repr carries its address)."""
    return metric if isinstance(metric, str) else getattr(metric, "name", None) or type(metric).__name__


def _recorded(name: str, value):
    """A model option as the study records it: a secret (a key, a password in an API base URL) as ``***``."""
    if not isinstance(value, str):
        return value
    return redact(f"{name}={value}").split("=", 1)[1]


class TrialBudgetSpent(BudgetError):
    """A trial asked for after the study's budget was spent (by concurrent workers)."""


SIGNATURE_ATTR = "stagewise_config"  # the study's config, key by key (Study.signature)
LEGACY_SIGNATURE_ATTR = "stagewise_signature"  # before: by group (space, splits, ...), not comparable key by key


@dataclass
class StudySettings:
    name: str
    trials: int | None = 12  # the study's budget; a worker may leave it None to take the study's
    seed: int = 0
    storage: str | None = None  # default: sqlite in the output directory
    prune_on: int = 8  # dev examples scored before the pruning decision
    prune_margin: float = 0.15
    min_quality: float | None = None  # selection: cheapest with quality >= this
    max_cost_per_1k: float | None = None  # selection: best quality under this cost
    latency: bool = False  # a third objective: mean latency per request, down
    reflection_model: str | None = None  # GEPA's reflection model, MIPRO's prompt model (a catalog name)
    gepa_metric_calls: int = 40  # GEPA's budget per compile
    sampler: str = "tpe"  # "tpe" (multi-objective TPE) or "grid" (every configuration once, in any order)


@dataclass
class StudyResult:
    trials: pd.DataFrame
    front: pd.DataFrame
    chosen: pd.Series
    program: Any
    dev: EvaluationReport
    test: EvaluationReport | None
    out_dir: Path
    cache: dict[str, int] = field(default_factory=dict)


class Study:
    """A study over ``space`` for the programs ``build()`` returns, on train/dev/test splits."""

    def __init__(self, build: Callable[[], Any], splits, space: dict[str, StageChoices], end_to_end: EndToEnd, *,
                 stage_metrics: list[StageMetric] = (), settings: StudySettings, out_dir: str | Path,
                 data_fingerprint: str, tracker: Tracker | None = None, lm_options: dict | None = None,
                 catalog=None, thresholds: dict[str, tuple[float, ...]] | None = None,
                 routers: dict[str, RouterChoices] | None = None):
        self.build, self.splits, self.space, self.end_to_end = build, splits, space, end_to_end
        self.stage_metrics = list(stage_metrics)
        self.settings, self.out_dir = settings, Path(out_dir)
        self.data_fingerprint = data_fingerprint
        self.tracker = tracker or Tracker(None)
        self.lm_options, self.catalog = lm_options or {}, catalog
        self.thresholds = dict(thresholds or {})
        self.routers = dict(routers or {})
        self.cache = CompileCache(self.out_dir / "compiled")
        self._lms: dict[str, Any] = {}
        self._classifiers: dict[tuple, Any] = {}
        probe = build()
        validate(space, list(stages_of(probe)), catalog)
        gepa = [stage for stage, choices in space.items() if "gepa" in choices.optimizers]
        if gepa and not settings.reflection_model:
            raise SearchSpaceError(f"search space: stage(s) {gepa} may use the gepa optimizer, which needs a "
                                   "reflection model ([search] reflection_model)")
        if settings.reflection_model:
            validate({"reflection": StageChoices((settings.reflection_model,))}, ["reflection"], catalog)
        validate_thresholds(self.thresholds, probe)
        for name, part in (("train", splits.train), ("dev", splits.dev)):
            if not part:
                raise EvaluationError(f"the {name} split is empty: nothing to optimize on")
        validate_routers(self.routers, probe, set(splits.train[0].keys()))
        found = router_modules(probe)
        self.decision_stages = {name: getattr(found[name].decide, "name", None) for name in self.routers}
        check_metrics(probe, splits.dev, self.stage_metrics, end_to_end)  # before any model is called

    def lm(self, model: str):
        """One LM per model for the whole study (DSPy's cache and the engines are shared)."""
        if model not in self._lms:
            options = dict(self.lm_options.get("*", {}), **self.lm_options.get(model, {}))
            self._lms[model] = get_lm(model, catalog=self.catalog, **options)
        return self._lms[model]

    def classifier(self, router, settings: dict):
        """A LabelRouter trained on the train split's router label; one per (router, features, C)."""
        from stagewise.routing.routers import LabelRouter

        key = (router.name, settings["features"], float(settings["C"]))
        if key not in self._classifiers:
            field = router.query.removeprefix("input.")
            if field == router.query:
                raise EvaluationError(f"router {router.name!r} reads {router.query!r}: a trained classifier needs "
                                      "a request input (input.<field>)")
            label = self.routers[router.name].label
            texts = [str(example[field]) for example in self.splits.train]
            labels = [str(example[label]) for example in self.splits.train]
            self._classifiers[key] = LabelRouter(settings["features"], float(settings["C"])).fit(texts, labels)
        return self._classifiers[key]

    def program_for(self, choice: TrialChoice):
        program = self.build()
        found = router_modules(program)
        for name, settings in choice.routers.items():
            if settings["decision"] == "trained":
                found[name].use_classifier(self.classifier(found[name], settings))
        set_models(program, {stage: self.lm(model) for stage, model in choice.models.items()})
        for name, cascade in cascades(program).items():
            if name in choice.thresholds:
                cascade.threshold = choice.thresholds[name]

        def passes(example, prediction, trace=None) -> bool:
            return self.end_to_end.score(example, prediction) >= PASS

        reflection = None
        optimizers = set(choice.optimizers.values())
        if "gepa" in optimizers or ("mipro" in optimizers and self.settings.reflection_model):
            reflection = Reflection(self.lm(self.settings.reflection_model), self.settings.reflection_model,
                                    self.feedback, self.settings.gepa_metric_calls)
        compile_stages(program, choice, self.splits.train, passes, self.cache, self.data_fingerprint, reflection)
        return program

    def feedback(self, example, prediction) -> tuple[float, str]:
        """The end-to-end score, and in words what was expected and what came out (GEPA reads it)."""
        end = self.end_to_end
        score = float(end.score(example, prediction))
        text = f"score {score:.2f}: the program's {end.output!r} was {prediction.get(end.output)!r}"
        if end.label and end.label in example:
            text += f"; the expected {end.label!r} is {example[end.label]!r}"
        return score, text

    def _evaluate(self, program, examples) -> EvaluationReport:
        return evaluate(program, examples, stage_metrics=self.stage_metrics, end_to_end=self.end_to_end,
                        progress=False)

    def _hopeless(self, study: optuna.Study, early: EvaluationReport) -> bool:
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        return any(t.values[0] >= early.quality + self.settings.prune_margin and t.values[1] <= early.cost_per_request
                   for t in done)

    def objective(self, study: optuna.Study, trial: optuna.Trial) -> tuple[float, ...]:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        choice = suggest(trial, self.space, self.thresholds, self.routers, self.decision_stages)
        for earlier in study.trials:  # the sampler proposed a configuration already scored: reuse it
            if earlier.state == optuna.trial.TrialState.COMPLETE and earlier.params == trial.params:
                for key, value in earlier.user_attrs.items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("same_as", earlier.number)
                self.tracker.trial(trial.number, {**choice.params(), "data_fingerprint": self.data_fingerprint,
                                                  "same_as_trial": earlier.number},
                                   {"quality": earlier.values[0], "cost_per_request": earlier.values[1]}, "reused")
                return tuple(earlier.values)
        program = self.program_for(choice)
        dev = self.splits.dev
        head, rest = dev[: self.settings.prune_on], dev[self.settings.prune_on:]
        early = self._evaluate(program, head)
        params = {**choice.params(), "data_fingerprint": self.data_fingerprint}
        if rest and self._hopeless(study, early):
            trial.set_user_attr("pruned_at", len(head))
            self.tracker.trial(trial.number, params, {"quality_subset": early.quality,
                                                      "cost_per_request": early.cost_per_request}, "pruned")
            raise optuna.TrialPruned(f"quality {early.quality:.3f} on {len(head)} dev examples is hopeless")
        report = early if not rest else EvaluationReport(
            pd.concat([early.rows, self._evaluate(program, rest).rows], ignore_index=True),
            self.stage_metrics, self.end_to_end)
        summary = report.summary()
        trial.set_user_attr("stages", summary["stages"])
        trial.set_user_attr("tokens_per_request",
                            summary["input_tokens_per_request"] + summary["output_tokens_per_request"])
        trial.set_user_attr("latency_s", summary["latency_s_mean"])
        metrics = {"quality": report.quality, "cost_per_request": report.cost_per_request,
                   "cost_per_1k_requests": 1000 * report.cost_per_request,
                   "tokens_per_request": trial.user_attrs["tokens_per_request"], "latency_s": summary["latency_s_mean"],
                   **{f"stage.{k}": v for k, v in summary["stages"].items()}}
        with tempfile.TemporaryDirectory() as scratch:
            state = Path(scratch) / "program.json"
            state.write_text(json.dumps(state_without_models(program), default=str))
            self.tracker.trial(trial.number, params, metrics, "complete", [state])
        values = (report.quality, report.cost_per_request)
        return (*values, summary["latency_s_mean"]) if self.settings.latency else values

    def storage_url(self) -> str:
        return self.settings.storage or f"sqlite:///{(self.out_dir / 'optuna.db').resolve()}"

    def signature(self) -> dict[str, str]:
        """What a worker must share with the study it joins, key by key: each key is the study
        config's (``search.prune_on``, ``search.stages.route.models``, ``split.seed`` ...), each
        value JSON. Not in it: the trial budget (kept apart, since a rerun of ``optimize`` may
        raise it), the storage, and the selection of the final program (``min_quality``,
        ``max_cost_per_1k``), which changes no trial."""
        keys: dict[str, Any] = {}
        for stage, choices in sorted(self.space.items()):
            keys.update({f"search.stages.{stage}.{name}": value for name, value in vars(choices).items()})
        keys.update({f"search.thresholds.{cascade}": values for cascade, values in sorted(self.thresholds.items())})
        for router, choices in sorted(self.routers.items()):
            keys.update({f"search.routers.{router}.{name}": value for name, value in vars(choices).items()})
        settings = self.settings
        keys.update({"search.seed": settings.seed, "search.sampler": settings.sampler,
                     "search.prune_on": settings.prune_on, "search.prune_margin": settings.prune_margin,
                     "search.latency_objective": settings.latency, "search.reflection_model": settings.reflection_model,
                     "search.gepa_metric_calls": settings.gepa_metric_calls})
        for model, options in sorted(self.lm_options.items()):
            keys.update({f"models.{model}.{name}": _recorded(name, value) for name, value in sorted(options.items())
                         if value is None or isinstance(value, (str, int, float, bool, list, tuple))})
        keys["metrics.end_to_end"] = [self.end_to_end.output, self.end_to_end.label, _named(self.end_to_end.metric)]
        keys["metrics.stages"] = [[m.stage, m.output, m.label, _named(m.metric)] for m in self.stage_metrics]
        keys["data"] = f"fingerprint {self.data_fingerprint[:16]}"
        keys.update({f"split.{name}": value for name, value in (self.splits.settings or {}).items()})
        sizes = "/".join(str(len(part)) for part in (self.splits.train, self.splits.dev, self.splits.test))
        keys["split.examples"] = f"{sizes} (train/dev/test), fingerprint {split_fingerprint(self.splits)[:16]}"
        return {key: json.dumps(value, default=list, sort_keys=True) for key, value in keys.items()}

    def differences(self, study: optuna.Study, *, create: bool) -> list[str]:
        """Each key in which this config differs from ``study``'s, with both values.

        ``split.examples`` is left out when a split setting or the data already explains it; the
        trial budget counts for a worker only (``optimize`` may raise it; a worker's ``--trials``
        caps its own trials and is not the config's)."""
        mine, theirs = self.signature(), study.user_attrs.get(SIGNATURE_ATTR, {})
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        explained = [k for k in keys if k == "data" or (k.startswith("split.") and k != "split.examples")]
        if "split.examples" in keys and explained:
            keys.remove("split.examples")
        shown = {k: (theirs.get(k, "(none)"), mine.get(k, "(none)")) for k in keys}
        budget = study.user_attrs.get("stagewise_trials")
        if not create and self.settings.trials is not None and budget is not None and budget != self.settings.trials:
            shown["search.trials"] = (budget, self.settings.trials)
        return [f"{key} (the study's {study_value}, this config's {value})"
                for key, (study_value, value) in sorted(shown.items())]

    def grid(self) -> dict[str, list]:
        """Every choice of the space, as Optuna parameter names (the grid sampler's search space)."""
        grid: dict[str, list] = {f"{c}.threshold": list(v) for c, v in self.thresholds.items()}
        if self.routers:
            raise SearchSpaceError("the grid sampler does not search router choices (their parameters are "
                                   "conditional): use the tpe sampler")
        for stage, choices in self.space.items():
            grid[f"{stage}.model"] = list(choices.models)
            grid[f"{stage}.optimizer"] = list(choices.optimizers)
            if any(o in DEMO_OPTIMIZERS for o in choices.optimizers):
                grid[f"{stage}.demos"] = list(choices.demos)  # unused (and repeated) for "none": reused, not rerun
        return grid

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.settings.sampler == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=self.settings.seed)
        if self.settings.sampler != "tpe":
            raise SearchSpaceError(f"[search] sampler {self.settings.sampler!r}: use 'tpe' or 'grid'")
        return optuna.samplers.TPESampler(seed=self.settings.seed)

    def open(self, *, create: bool = True) -> optuna.Study:
        """The study in its storage: created (or continued) by ``optimize``, joined by a worker."""
        from stagewise.optimize.storage import StorageError, open_storage, study_names

        self.out_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.storage_url())
        sampler = self.sampler()
        if not create and self.settings.name not in study_names(storage):
            names = study_names(storage)
            raise StorageError(f"no study named {self.settings.name!r} in {redact(self.storage_url())} "
                               f"(studies: {', '.join(names) or 'none'}); start it with stagewise optimize")
        directions = ["maximize", "minimize"] + (["minimize"] if self.settings.latency else [])
        study = optuna.create_study(study_name=self.settings.name, storage=storage, load_if_exists=True,
                                    directions=directions, sampler=sampler)
        if create and not study.metric_names:  # optuna-dashboard shows the objectives by these names
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                names = ["quality", "cost_per_request"] + (["latency_s"] if self.settings.latency else [])
                study.set_metric_names(names)
        if SIGNATURE_ATTR not in study.user_attrs:
            if not create and LEGACY_SIGNATURE_ATTR in study.user_attrs:
                raise StorageError(f"study {self.settings.name!r} was started by an older stagewise, which recorded "
                                   "its config by group: run stagewise optimize on it once (with its own config) to "
                                   "record it key by key, then start the workers")
            study.set_user_attr(SIGNATURE_ATTR, self.signature())
        differing = self.differences(study, create=create)
        if differing:
            remedy = ("a worker must run the study's own config (its --trials caps only its own trials)" if not create
                      else "continue it with its own config, or start another study (--study NAME)")
            raise StorageError(f"study {self.settings.name!r}: this config differs from the study's in "
                               f"{'; '.join(differing)}; {remedy}")
        if create and self.settings.trials is not None:  # a rerun of optimize may raise the budget
            study.set_user_attr("stagewise_trials", self.settings.trials)
        return study

    def budget(self, study: optuna.Study) -> int:
        return int(study.user_attrs.get("stagewise_trials", self.settings.trials)) if self.settings.trials is None \
            else self.settings.trials

    @staticmethod
    def counted(study: optuna.Study) -> int:
        """Trials that count against the budget: completed or pruned (failed ones are retried)."""
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED)))

    def run(self, *, progress: bool = True, create: bool = True, wait: bool = True,
            own_trials: int | None = None) -> optuna.Study:
        """Run trials until the study's budget is spent, by this process and any workers sharing it.

        A trial whose number falls past the budget (workers asked for trials at the same time)
        is not run: it is marked failed with the note ``over budget``. ``wait`` waits for the
        trials other workers are still running, so the results include them. ``own_trials``
        caps the trials this process runs (a worker's ``--trials``).
        """
        study = self.open(create=create)
        budget = self.budget(study)
        params = {"trials": budget, "seed": self.settings.seed, "data_fingerprint": self.data_fingerprint,
                  "space": json.dumps({s: vars(c) for s, c in self.space.items()}, default=list),
                  "storage": redact(self.storage_url())}
        if self.routers:
            params["routers"] = json.dumps({r: vars(c) for r, c in self.routers.items()}, default=list)

        def objective(trial: optuna.Trial):
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
                       and t.state != optuna.trial.TrialState.FAIL]
            if len(earlier) >= budget:
                study.stop()  # this worker is done: the budget is taken (some trials may still be running)
                raise TrialBudgetSpent(f"trial {trial.number}: the study's {budget} trials are already taken")
            return self.objective(study, trial)

        stop = optuna.study.MaxTrialsCallback(budget, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED))
        with self.tracker.study(self.settings.name, params):
            if self.counted(study) < budget:
                bar = None
                callbacks = [stop]
                if progress:
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                    bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
                    bar.start()
                    task = bar.add_task("trials", total=budget, completed=self.counted(study))
                    callbacks.append(lambda s, t: bar.update(task, completed=min(budget, self.counted(s))))
                try:
                    study.optimize(objective, n_trials=own_trials, callbacks=callbacks, catch=(TrialBudgetSpent,))
                finally:
                    if bar:
                        bar.stop()
            if wait:
                self._wait_for_others(study, objective)
        return study

    def _wait_for_others(self, study: optuna.Study, objective, timeout_s: float = 900) -> None:
        """Until no trial is running elsewhere. A dead worker's trial turns failed after its grace period
        and is queued again (RetryHeartbeatStaleTrialCallback): queued trials left over are run here."""
        import time

        from optuna.storages import fail_stale_trials

        waiting_states = (optuna.trial.TrialState.WAITING,)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fail_stale_trials(study)
            if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                time.sleep(1.0)
                continue
            waiting = study.get_trials(deepcopy=False, states=waiting_states)
            if not waiting:
                return
            study.optimize(objective, n_trials=len(waiting), catch=(TrialBudgetSpent,))

    def choice_of(self, row: pd.Series) -> TrialChoice:
        """The configuration of one row of the trials table (or the front)."""
        active = [s for s in self.space if pd.notna(row.get(f"{s}.model"))]  # a stood-in stage has none
        return TrialChoice(
            models={s: row[f"{s}.model"] for s in active},
            optimizers={s: row.get(f"{s}.optimizer", "none") for s in active},
            demos={s: int(row[f"{s}.demos"]) if f"{s}.demos" in row and pd.notna(row[f"{s}.demos"]) else 0
                   for s in active},
            thresholds={c: float(row[f"{c}.threshold"]) for c in self.thresholds},
            routers={r: {key: row[f"{r}.{key}"] for key in ("decision", "features", "C")
                         if pd.notna(row.get(f"{r}.{key}"))} for r in self.routers},
        )

    def results(self, study: optuna.Study) -> StudyResult:
        rows = []
        for trial in study.trials:
            if trial.state != optuna.trial.TrialState.COMPLETE or "same_as" in trial.user_attrs:
                continue
            rows.append({"trial": trial.number, "quality": trial.values[0], "cost_per_request": trial.values[1],
                         "cost_per_1k_requests": 1000 * trial.values[1],
                         "latency_s": trial.values[2] if len(trial.values) > 2 else trial.user_attrs.get("latency_s"),
                         **trial.params,
                         **{f"stage:{k}": v for k, v in trial.user_attrs.get("stages", {}).items()}})
        if not rows:
            raise EvaluationError(f"study {self.settings.name!r} has no completed trial: nothing to choose from")
        trials = pd.DataFrame(rows)
        # Workers that draw the same configuration at the same moment both run it: one point per configuration.
        params = sorted({name for trial in study.trials for name in trial.params} & set(trials.columns))
        trials = trials.sort_values("trial").drop_duplicates(subset=params, keep="first").reset_index(drop=True)
        best_front = pareto.front(trials)
        chosen = pareto.select(best_front, min_quality=self.settings.min_quality,
                               max_cost_per_1k=self.settings.max_cost_per_1k)
        program = self.program_for(self.choice_of(chosen))
        dev = self._evaluate(program, self.splits.dev)
        test = self._evaluate(program, self.splits.test) if self.splits.test else None
        csv_path, png_path = pareto.write(trials, self.out_dir, chosen=int(chosen["trial"]))
        self.tracker.artifacts([csv_path, png_path], {"chosen.dev_quality": dev.quality,
                                                     "chosen.test_quality": test.quality if test else None,
                                                     "chosen.cost_per_request": dev.cost_per_request})
        return StudyResult(trials, best_front, chosen, program, dev, test, self.out_dir,
                           {"hits": self.cache.hits, "misses": self.cache.misses})
