"""The joint search: one Optuna multi-objective study over per-stage models, optimizers and demos.

Each trial builds the program, assigns each stage's model, applies each stage's optimizer
(compiled once per content, see `compile`), and scores the program on the dev split:
quality up, cost per request down (see `stagewise.optimize.objective`). A trial is first
scored on a small dev subset and its pruner may stop it there (see
`stagewise.optimize.sampling`). The study lives in storage (SQLite by default), so a rerun
with the same study name continues it, and workers may join it (see
`stagewise.optimize.storage`). Progress goes to callbacks: a progress bar, MLflow (every
trial an MLflow run nested under the study's), your own (`stagewise.optimize.callbacks`).
The chosen program comes from the Pareto front (`stagewise.optimize.pareto`).

[`Study`][stagewise.optimize.Study] validates the space once, then ties these parts together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from stagewise.data.splits import split_fingerprint
from stagewise.metrics.report import EndToEnd, EvaluationError, EvaluationReport, StageMetric, check_metrics
from stagewise.optimize import pareto, storage
from stagewise.optimize.callbacks import ProgressBar, StudyCallback
from stagewise.optimize.compile import CompileCache
from stagewise.optimize.objective import Objective
from stagewise.optimize.optimizers import get_optimizer
from stagewise.optimize.sampling import OBJECTIVES, MarginPruner, make_sampler
from stagewise.optimize.settings import StudySettings
from stagewise.optimize.space import (
    RouterChoices,
    SearchSpaceError,
    StageChoices,
    router_modules,
    validate,
    validate_routers,
    validate_thresholds,
)
from stagewise.optimize.storage import TrialBudgetSpent
from stagewise.optimize.tracking import Tracker
from stagewise.programs.predictors import stages_of
from stagewise.redaction import redact

__all__ = ["Study", "StudyResult", "StudySettings", "TrialBudgetSpent"]


def _named(metric) -> str:
    """A metric's name, the same in every process (a metric object's repr carries its address)."""
    return metric if isinstance(metric, str) else getattr(metric, "name", None) or type(metric).__name__


def _recorded(name: str, value):
    """A model option as the study records it: a secret (a key, a password in an API base URL) as `***`."""
    if not isinstance(value, str):
        return value
    return redact(f"{name}={value}").split("=", 1)[1]


def _described(value) -> Any:
    """A sampler or pruner as the study's signature records it: its name, or its class."""
    return value if value is None or isinstance(value, str) else f"{type(value).__module__}.{type(value).__qualname__}"


@dataclass
class StudyResult:
    """What a finished study gives: every trial, the front, the chosen row and program, its reports."""

    trials: pd.DataFrame
    front: pd.DataFrame
    chosen: pd.Series
    program: Any
    dev: EvaluationReport
    test: EvaluationReport | None
    out_dir: Path
    cache: dict[str, int] = field(default_factory=dict)


class Study:
    """A study over `space` for the programs `build()` returns, on train/dev/test splits."""

    def __init__(self, build: Callable[[], Any], splits, space: dict[str, StageChoices], end_to_end: EndToEnd, *,
                 stage_metrics: Sequence[StageMetric] = (), settings: StudySettings, out_dir: str | Path,
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
        probe = build()
        self._validate(probe)
        found = router_modules(probe)
        self.objective = Objective(
            build, splits, space, end_to_end, stage_metrics=self.stage_metrics, settings=settings, cache=self.cache,
            data_fingerprint=data_fingerprint, lm_options=self.lm_options, catalog=catalog,
            thresholds=self.thresholds, routers=self.routers,
            decision_stages={name: getattr(found[name].decide, "name", None) for name in self.routers})
        check_metrics(probe, self.splits.dev, self.stage_metrics, end_to_end)  # before any model is called

    def _validate(self, probe) -> None:
        validate(self.space, list(stages_of(probe)), self.catalog)
        reflective = [stage for stage, choices in self.space.items()
                      if any(get_optimizer(o).reflection == "required" for o in choices.optimizers)]
        if reflective and not self.settings.reflection_model:
            names = sorted({o for s in reflective for o in self.space[s].optimizers
                            if get_optimizer(o).reflection == "required"})
            raise SearchSpaceError(f"search space: stage(s) {reflective} may use the {', '.join(names)} optimizer, "
                                   "which needs a reflection model ([search] reflection_model)")
        if self.settings.reflection_model:
            validate({"reflection": StageChoices((self.settings.reflection_model,))}, ["reflection"], self.catalog)
        validate_thresholds(self.thresholds, probe)
        for name, part in (("train", self.splits.train), ("dev", self.splits.dev)):
            if not part:
                raise EvaluationError(f"the {name} split is empty: nothing to optimize on")
        validate_routers(self.routers, probe, set(self.splits.train[0].keys()))

    # --- the objective's parts, for callers that build programs from the study -------------------

    def lm(self, model: str):
        """The study's LM of `model` (one per model)."""
        return self.objective.lm(model)

    def program_for(self, choice):
        """A fresh program configured as `choice` (see `Objective.program_for`)."""
        return self.objective.program_for(choice)

    def choice_of(self, row: pd.Series):
        """The configuration of one row of the trials table (or the front)."""
        return self.objective.choice_of(row)

    # --- the study in its storage -------------------------------------------------------------

    @property
    def objectives(self) -> list[str]:
        """The objectives' names, in the study's order."""
        return list(OBJECTIVES[:3 if self.settings.latency else 2])

    def storage_url(self) -> str:
        """The study's storage: the configured one, else SQLite in the output directory."""
        return self.settings.storage or f"sqlite:///{(self.out_dir / 'optuna.db').resolve()}"

    def signature(self) -> dict[str, str]:
        """What a worker must share with the study it joins, key by key.

        Each key is the study config's (`search.prune_on`, `search.stages.route.models`, `split.seed` ...), each
        value JSON. Not in it: the trial budget (kept apart, since a rerun of `optimize` may
        raise it), the storage, and the selection of the final program (`min_quality`,
        `max_cost_per_1k`), which changes no trial.
        """
        keys: dict[str, Any] = {}
        for stage, choices in sorted(self.space.items()):
            keys.update({f"search.stages.{stage}.{name}": value for name, value in vars(choices).items()})
        keys.update({f"search.thresholds.{cascade}": values for cascade, values in sorted(self.thresholds.items())})
        for router, choices in sorted(self.routers.items()):
            keys.update({f"search.routers.{router}.{name}": value for name, value in vars(choices).items()})
        settings = self.settings
        keys.update({"search.seed": settings.seed, "search.sampler": _described(settings.sampler),
                     "search.prune_on": settings.prune_on, "search.prune_margin": settings.prune_margin,
                     "search.latency_objective": settings.latency, "search.reflection_model": settings.reflection_model,
                     "search.gepa_metric_calls": settings.gepa_metric_calls})
        if settings.pruner is not None:
            keys["search.pruner"] = _described(settings.pruner)
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

    def grid(self) -> dict[str, list]:
        """Every choice of the space, as Optuna parameter names (the grid sampler's search space)."""
        grid: dict[str, list] = {f"{c}.threshold": list(v) for c, v in self.thresholds.items()}
        if self.routers:
            raise SearchSpaceError("the grid sampler does not search router choices (their parameters are "
                                   "conditional): use the tpe sampler")
        for stage, choices in self.space.items():
            grid[f"{stage}.model"] = list(choices.models)
            grid[f"{stage}.optimizer"] = list(choices.optimizers)
            if any(get_optimizer(o).uses_demos for o in choices.optimizers):
                grid[f"{stage}.demos"] = list(choices.demos)  # unused (and repeated) for "none": reused, not rerun
        return grid

    def open(self, *, create: bool = True) -> optuna.Study:
        """The study in its storage: created (or continued) by `optimize`, joined by a worker."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        return storage.open_study(
            settings.name, self.storage_url(), objectives=self.objectives,
            sampler=make_sampler(settings.sampler, seed=settings.seed, grid=self.grid),
            pruner=settings.pruner or MarginPruner(settings.prune_margin), signature=self.signature(),
            trials=settings.trials, create=create)

    def budget(self, study: optuna.Study) -> int:
        """The trials `study` may run: this config's budget, else the one its creator recorded."""
        return storage.trial_budget(study, self.settings.trials)

    @staticmethod
    def counted(study: optuna.Study) -> int:
        """Trials that count against the budget: completed or pruned (failed ones are retried)."""
        return storage.counted(study)

    def run(self, *, progress: bool = True, create: bool = True, wait: bool = True,
            own_trials: int | None = None, callbacks: Sequence[StudyCallback] = ()) -> optuna.Study:
        """Run trials until the study's budget is spent, by this process and any workers sharing it.

        A trial whose number falls past the budget (workers asked for trials at the same time)
        is not run: it is marked failed with the note `over budget`. `wait` waits for the
        trials other workers are still running, so the results include them. `own_trials`
        caps the trials this process runs (a worker's `--trials`). `callbacks` hear the
        study's progress, after the MLflow tracker and (with `progress`) a progress bar.
        """
        study = self.open(create=create)
        budget = self.budget(study)
        params = {"trials": budget, "seed": self.settings.seed, "data_fingerprint": self.data_fingerprint,
                  "space": json.dumps({s: vars(c) for s, c in self.space.items()}, default=list),
                  "storage": redact(self.storage_url())}
        if self.routers:
            params["routers"] = json.dumps({r: vars(c) for r, c in self.routers.items()}, default=list)
        objective = storage.within_budget(study, budget, self.objective)
        listeners = [self.tracker, *([ProgressBar()] if progress else []), *callbacks]
        self.objective.callbacks = listeners

        def counted(finished: optuna.Study, trial) -> None:
            done = storage.counted(finished)
            for listener in listeners:
                listener.trials_counted(done, budget)

        stop = optuna.study.MaxTrialsCallback(budget, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED))
        with self.tracker.study(self.settings.name, params):
            done = storage.counted(study)
            if done < budget:
                started = []
                try:
                    for listener in listeners:
                        listener.study_started(self.settings.name, params, done=done, total=budget)
                        started.append(listener)
                    study.optimize(objective, n_trials=own_trials, callbacks=[stop, counted],
                                   catch=(TrialBudgetSpent,))
                finally:
                    for listener in started:
                        listener.study_finished()
            if wait:
                storage.wait_for_others(study, objective)
        return study

    def results(self, study: optuna.Study) -> StudyResult:
        """The trials, the front, the chosen configuration built and scored on dev (and test)."""
        trials = pareto.trials_table(study)
        if trials.empty:
            raise EvaluationError(f"study {self.settings.name!r} has no completed trial: nothing to choose from")
        best_front = pareto.front(trials)
        chosen = pareto.select(best_front, min_quality=self.settings.min_quality,
                               max_cost_per_1k=self.settings.max_cost_per_1k)
        program = self.program_for(self.choice_of(chosen))
        dev = self.objective.evaluate(program, self.splits.dev)
        test = self.objective.evaluate(program, self.splits.test) if self.splits.test else None
        csv_path, png_path = pareto.write(trials, self.out_dir, chosen=int(chosen["trial"]))
        self.tracker.artifacts([csv_path, png_path], {"chosen.dev_quality": dev.quality,
                                                     "chosen.test_quality": test.quality if test else None,
                                                     "chosen.cost_per_request": dev.cost_per_request})
        return StudyResult(trials, best_front, chosen, program, dev, test, self.out_dir,
                           {"hits": self.cache.hits, "misses": self.cache.misses})
