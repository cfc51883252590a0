"""One trial of a study: build the program, set each stage's model, compile, score on dev.

`Objective` is what Optuna calls for each trial. It keeps one LM per model and one
trained classifier per setting for the whole study, turns a trial's parameters into a program
(`Objective.program_for`), scores it on a small dev subset first (its pruner may stop it
there, see `stagewise.optimize.sampling`), then on the rest, and reports the trial to the
study's callbacks ([`TrialRecord`][stagewise.optimize.callbacks.TrialRecord]).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from stagewise.metrics.report import PASS, EndToEnd, EvaluationError, EvaluationReport, StageMetric, evaluate
from stagewise.models.lm import get_lm
from stagewise.optimize.callbacks import StudyCallback, TrialRecord
from stagewise.optimize.compile import CompileCache, Reflection, compile_stages
from stagewise.optimize.export import state_without_models
from stagewise.optimize.optimizers import get_optimizer
from stagewise.optimize.sampling import objective_values
from stagewise.optimize.settings import StudySettings
from stagewise.optimize.space import RouterChoices, StageChoices, TrialChoice, cascades, router_modules, suggest
from stagewise.programs.predictors import set_models

__all__ = ["Objective"]


class Objective:
    """Scores one configuration of the space per trial; see the module."""

    def __init__(self, build: Callable[[], Any], splits, space: dict[str, StageChoices], end_to_end: EndToEnd, *,
                 stage_metrics: list[StageMetric], settings: StudySettings, cache: CompileCache,
                 data_fingerprint: str, lm_options: dict, catalog, thresholds: dict[str, tuple[float, ...]],
                 routers: dict[str, RouterChoices], decision_stages: dict[str, str | None]):
        self.build, self.splits, self.space, self.end_to_end = build, splits, space, end_to_end
        self.stage_metrics, self.settings, self.cache = stage_metrics, settings, cache
        self.data_fingerprint, self.lm_options, self.catalog = data_fingerprint, lm_options, catalog
        self.thresholds, self.routers, self.decision_stages = thresholds, routers, decision_stages
        self.callbacks: list[StudyCallback] = []  # told of each finished trial (Study.run sets them)
        self._lms: dict[str, Any] = {}
        self._classifiers: dict[tuple, Any] = {}

    # --- a configuration as a program -----------------------------------------------------------

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
        """A fresh program with `choice`'s models, routers, thresholds and compiled stages."""
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
        model = self.settings.reflection_model
        if any(get_optimizer(name).uses_reflection(model) for name in set(choice.optimizers.values())):
            reflection = Reflection(self.lm(model), model, self.feedback, self.settings.gepa_metric_calls)
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

    def evaluate(self, program, examples) -> EvaluationReport:
        """The stage-level and end-to-end report of `program` on `examples` (no progress bar)."""
        return evaluate(program, examples, stage_metrics=self.stage_metrics, end_to_end=self.end_to_end,
                        progress=False)

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

    # --- one trial ----------------------------------------------------------------------------

    def __call__(self, study: optuna.Study, trial: optuna.Trial) -> tuple[float, ...]:
        """Score the configuration `trial` suggests: (quality, cost per request[, latency])."""
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        choice = suggest(trial, self.space, self.thresholds, self.routers, self.decision_stages)
        params = {**choice.params(), "data_fingerprint": self.data_fingerprint}
        for earlier in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if earlier.params == trial.params:  # the sampler proposed a configuration already scored: reuse it
                for key, value in earlier.user_attrs.items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("same_as", earlier.number)
                values = objective_values(earlier)
                self._tell(TrialRecord(trial.number, "reused", {**params, "same_as_trial": earlier.number},
                                        {k: values[k] for k in ("quality", "cost_per_request")}))
                return tuple(earlier.values)
        program = self.program_for(choice)
        dev = self.splits.dev
        head, rest = dev[: self.settings.prune_on], dev[self.settings.prune_on:]
        early = self.evaluate(program, head)
        if rest and self._pruned(study, trial, early):
            trial.set_user_attr("pruned_at", len(head))
            self._tell(TrialRecord(trial.number, "pruned", params, {"quality_subset": early.quality,
                                                                     "cost_per_request": early.cost_per_request}))
            raise optuna.TrialPruned(f"quality {early.quality:.3f} on {len(head)} dev examples is hopeless")
        report = early if not rest else EvaluationReport(
            pd.concat([early.rows, self.evaluate(program, rest).rows], ignore_index=True),
            self.stage_metrics, self.end_to_end)
        stages = report.stage_scores()
        tokens = report.input_tokens_per_request + report.output_tokens_per_request
        trial.set_user_attr("stages", stages)
        trial.set_user_attr("tokens_per_request", tokens)
        trial.set_user_attr("latency_s", report.latency_s_mean)
        metrics = {"quality": report.quality, "cost_per_request": report.cost_per_request,
                   "cost_per_1k_requests": report.cost_per_1k_requests, "tokens_per_request": tokens,
                   "latency_s": report.latency_s_mean, **{f"stage.{k}": v for k, v in stages.items()}}
        with tempfile.TemporaryDirectory() as scratch:
            state = Path(scratch) / "program.json"
            state.write_text(json.dumps(state_without_models(program), default=str))
            self._tell(TrialRecord(trial.number, "complete", params, metrics, (state,)))
        values = (report.quality, report.cost_per_request)
        return (*values, report.latency_s_mean) if self.settings.latency else values

    def _tell(self, record: TrialRecord) -> None:
        for callback in self.callbacks:
            callback.trial_finished(record)

    def _pruned(self, study: optuna.Study, trial: optuna.Trial, early: EvaluationReport) -> bool:
        """Ask the study's pruner about the trial's early scores (its user attribute `early`)."""
        trial.set_user_attr("early", {"quality": early.quality, "cost_per_request": early.cost_per_request})
        [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
        return study.pruner.prune(study, frozen)
