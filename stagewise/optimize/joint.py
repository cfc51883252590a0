"""The main job as a Python API: jointly search each stage's model, optimizer and demos.

`JointOptimizer` reads like a DSPy optimizer: configure it, then
`compile(program, trainset=..., valset=...)` returns the chosen program with every stage's
model set. `program` is any `dspy.Module`: its predictors are its stages (see
`stagewise.programs.predictors`), stagewise's own programs name theirs. `metric` is a DSPy
metric, `metric(example, prediction, trace=None)`, so existing metrics work unchanged.

Each trial of an Optuna multi-objective study (quality up, cost per request down) assigns each
stage a model, compiles each stage with its optimizer and demos (one stage at a time, the others
keeping their own models: DSPy's optimizers refuse programs whose predictors use different LMs),
and scores the program on `valset`. After the search, `front` is the Pareto front, `study`
the `optuna.Study` (open it with `optuna-dashboard`), and `select(...)` builds another
program from the front. With `tracking="name"` every trial is an MLflow run nested under one
parent run of the experiment `name`.

Example:
```python
opt = stagewise.JointOptimizer(metric=exact_answer, models={"*": ["smollm2-135m", "gemma3-270m"]},
                               optimizers=["none", "labeled_fewshot"], demos=[2, 4], trials=8)
best = opt.compile(program, trainset=train, valset=dev)
print(opt.front)
```
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy
import pandas as pd
from pydantic import ValidationError

from stagewise.errors import ConfigError
from stagewise.metrics.report import EndToEnd, EvaluationReport, as_end_to_end, as_stage_metrics
from stagewise.optimize.settings import DEFAULTS
from stagewise.optimize.space import RouterChoices, StageChoices

__all__ = ["JointOptimizer"]

Choices = Sequence | Mapping[str, Sequence]


class JointOptimizer:
    """Search per-stage models, optimizers and demos of a DSPy program for cost versus quality.

    Args:
        metric: a DSPy metric `metric(example, prediction, trace=None) -> float | bool` (or an
            [`EndToEnd`][stagewise.metrics.EndToEnd]); higher is better.
        models: candidate catalog models: `{"*": [...]}` for every stage, or per stage name
            (`{"area": [...], "answer.predict": [...]}`); a stage not named keeps its model.
        stage_metrics: per stage, how to score its own output against a label column of the
            examples: a field name (the output field and the label have that name), a dict
            `{"output": ..., "label": ..., "metric": ...}`, or a list of
            [`StageMetric`][stagewise.metrics.StageMetric].
        optimizers: candidate optimizers (`none`, `labeled_fewshot`, `bootstrap_fewshot`,
            `bootstrap_random_search`, `mipro`, `gepa`, `simba` or a name given to
            [`register_optimizer`][stagewise.optimize.register_optimizer]), for every stage or per stage.
        demos: candidate numbers of demos, for every stage or per stage.
        trials: the study's budget of trials (a rerun with the same study name continues it).
        tracking: an MLflow experiment name; `None` logs nothing.
        study: the study's name (default: the program's class name).
        storage: an Optuna storage URL (default: SQLite in `out_dir`).
        out_dir: where the compiled-stage cache, the study and `pareto.csv`/`pareto.png` go
            (default `runs/<study>`).
        min_quality: with `max_cost_per_1k`, how to choose from the front (default: the best
            quality).
        max_cost_per_1k: see `min_quality`.
        sampler: `"tpe"`, `"grid"`, `"random"`, `"nsga2"` or any `optuna.samplers.BaseSampler`.
        pruner: any `optuna.pruners.BasePruner`, asked after the first `prune_on` dev examples
            (default: [`MarginPruner`][stagewise.optimize.MarginPruner] with `prune_margin`; see
            `stagewise.optimize.sampling`).
        baseline: per stage, the model of an unoptimized program to compare on the test set.
        fingerprint: an identifier of the data (default: a hash of the splits); keys the
            compiled-stage cache and the study's signature.
        adapter: the DSPy adapter for the search (default: the configured one, else
            `dspy.JSONAdapter()`, which local models need for typed outputs).
        privacy: a [`PrivacyPolicy`][stagewise.runtime.privacy.PrivacyPolicy]: the artifacts and parameters
            logged to MLflow are redacted copies (the exported program is not changed).

    Raises:
        ConfigError: `models` is not a non-empty mapping.

    Examples:
        Configuring the search builds nothing yet; `space` shows each stage's candidates:

        >>> import stagewise
        >>> from stagewise.programs import Chain, Stage
        >>> program = Chain("support", [Stage("area", "message -> area"), Stage("reply", "message, area -> reply")])
        >>> opt = stagewise.JointOptimizer(metric=lambda example, prediction, trace=None: 1.0,
        ...                                models={"*": ["recorded/gpt-4-1106-preview", "recorded/claude-v2"]},
        ...                                optimizers=["none", "labeled_fewshot"], demos=[2])
        >>> opt.space(program)["reply"]
        StageChoices(models=('recorded/gpt-4-1106-preview', 'recorded/claude-v2'),
                     optimizers=('none', 'labeled_fewshot'), demos=(2,))
    """

    def __init__(self, *, metric: Callable | EndToEnd, models: Mapping[str, Sequence[str]],
                 stage_metrics: Any = None, optimizers: Choices = ("none",), demos: Choices = (0,),
                 trials: int = 30, tracking: str | None = None, study: str | None = None,
                 storage: str | None = None, out_dir: str | Path | None = None, seed: int = DEFAULTS.seed,
                 prune_on: int = DEFAULTS.prune_on, prune_margin: float = DEFAULTS.prune_margin,
                 min_quality: float | None = None, max_cost_per_1k: float | None = None,
                 latency: bool = DEFAULTS.latency, sampler: Any = DEFAULTS.sampler, pruner: Any = None,
                 thresholds: Mapping[str, Sequence[float]] | None = None,
                 routers: Mapping[str, RouterChoices] | None = None, reflection_model: str | None = None,
                 gepa_metric_calls: int = DEFAULTS.gepa_metric_calls, baseline: Mapping[str, str] | None = None,
                 lm_options: Mapping[str, dict] | None = None, fingerprint: str | None = None,
                 catalog=None, adapter: Any = None, progress: bool = True, privacy: Any = None):
        if not isinstance(models, Mapping) or not models:
            raise ConfigError("models: give candidate models as {'*': [...]} or per stage name")
        self.metric, self.models = metric, dict(models)
        self.stage_metrics = stage_metrics
        self.optimizers, self.demos = optimizers, demos
        self.trials, self.tracking, self.study_name = trials, tracking, study
        self.storage, self.out_dir, self.seed = storage, out_dir, seed
        self.prune_on, self.prune_margin = prune_on, prune_margin
        self.min_quality, self.max_cost_per_1k, self.latency = min_quality, max_cost_per_1k, latency
        self.sampler, self.pruner = sampler, pruner
        self.thresholds, self.routers = dict(thresholds or {}), dict(routers or {})
        self.reflection_model, self.gepa_metric_calls = reflection_model, gepa_metric_calls
        self.baseline = dict(baseline) if baseline else None
        self.lm_options, self.fingerprint, self.catalog = dict(lm_options or {}), fingerprint, catalog
        self.adapter, self.progress = adapter, progress
        self.privacy = privacy  # a PrivacyPolicy: what is logged to MLflow is redacted
        self.runner_ = None  # the Study of the last compile
        self.result_ = None  # its StudyResult
        self.baseline_report_: EvaluationReport | None = None
        self._study = None

    # --- the search space ---------------------------------------------------------------------

    def space(self, program: dspy.Module) -> dict[str, StageChoices]:
        """Each searched stage's candidate models, optimizers and demo counts."""
        from stagewise.programs.predictors import named, stages_of

        stages = list(stages_of(program))
        explicit = [name for name in self.models if name != "*"]  # unknown names: the study's validation says so
        for option, value in (("optimizers", self.optimizers), ("demos", self.demos)):
            if isinstance(value, Mapping):
                named(program, [n for n in value if n not in ("*", *explicit)], option)
        searched = stages if "*" in self.models else explicit
        return {name: StageChoices(tuple(self._for(self.models, name)),
                                   tuple(self._for(self.optimizers, name, ("none",))),
                                   tuple(int(d) for d in self._for(self.demos, name, (0,))))
                for name in searched}

    @staticmethod
    def _for(choices: Choices, stage: str, default: Sequence = ()) -> list:
        """The candidates for `stage`: per stage (`"*"` for the rest), or the same for every stage."""
        if isinstance(choices, Mapping):
            value = choices.get(stage, choices.get("*", default))
        else:
            value = choices
        return [value] if isinstance(value, (str, int)) else list(value)

    def study_for(self, program: dspy.Module, *, trainset, valset, testset=None, split_settings: dict | None = None):
        """The [`Study`][stagewise.optimize.study.Study] that `compile` runs (workers join it too)."""
        from stagewise.data import Splits, split_fingerprint
        from stagewise.optimize.settings import StudySettings
        from stagewise.optimize.study import Study
        from stagewise.optimize.tracking import Tracker

        splits = Splits(list(trainset), list(valset), list(testset or []), split_settings)
        name = self.study_name or _default_name(program)
        try:
            settings = StudySettings(
                name=name, trials=self.trials, seed=self.seed, storage=self.storage, prune_on=self.prune_on,
                prune_margin=self.prune_margin, min_quality=self.min_quality, max_cost_per_1k=self.max_cost_per_1k,
                latency=self.latency, reflection_model=self.reflection_model,
                gepa_metric_calls=self.gepa_metric_calls, sampler=self.sampler, pruner=self.pruner)
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise ConfigError(f"JointOptimizer: {problem['loc'][0]}: {problem['msg']} "
                              f"(got {problem.get('input')!r})") from None
        prototype = program.deepcopy()
        return Study(prototype.deepcopy, splits, self.space(program), as_end_to_end(self.metric),
                     stage_metrics=as_stage_metrics(self.stage_metrics), settings=settings,
                     out_dir=Path(self.out_dir) if self.out_dir else Path("runs") / name,
                     data_fingerprint=self.fingerprint or split_fingerprint(splits)[:16],
                     tracker=Tracker(self.tracking, privacy=self.privacy), lm_options=dict(self.lm_options),
                     catalog=self.catalog,
                     thresholds={k: tuple(float(v) for v in values) for k, values in self.thresholds.items()},
                     routers=self.routers)

    # --- DSPy-style compile -------------------------------------------------------------------

    def compile(self, program: dspy.Module, *, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example],
                testset: Sequence[dspy.Example] | None = None, split_settings: dict | None = None) -> dspy.Module:
        """Run the search and return the chosen program (a new one: `program` is not changed).

        The chosen program is scored on `valset` and, when given, on `testset` (`report`);
        with `baseline` the unoptimized program on those models is scored on the test set (else
        the dev set) for comparison (`baseline_report_`). `split_settings` (how the sets were
        split: `train`, `dev`, `test`, `seed`, `stratify_by`) go into the study's
        signature, so a worker with other settings is told which one differs.
        """
        runner = self.study_for(program, trainset=trainset, valset=valset, testset=testset,
                                split_settings=split_settings)
        with self._adapter():
            study = runner.run(progress=self.progress)
            result = runner.results(study)
            if self.baseline:
                from stagewise.metrics.report import evaluate

                base = runner.build()
                from stagewise.programs.predictors import set_models

                set_models(base, {stage: runner.lm(model) for stage, model in self.baseline.items()})
                held_out = runner.splits.test or runner.splits.dev
                self.baseline_report_ = evaluate(base, held_out, stage_metrics=runner.stage_metrics,
                                                 end_to_end=runner.end_to_end, progress=False)
                split = "test" if runner.splits.test else "dev"
                runner.tracker.artifacts([], {f"baseline.{split}_quality": self.baseline_report_.quality,
                                              "baseline.cost_per_request": self.baseline_report_.cost_per_request})
        self.runner_, self.result_, self._study = runner, result, study
        _remember(result.program, runner, result)
        return result.program

    def work(self, program: dspy.Module, *, trainset, valset, testset=None, trials: int | None = None,
             split_settings: dict | None = None):
        """Join the study another process created and run its trials.

        The settings and data must be the same, checked key by key. Trials run until the study's budget
        is spent, or `trials` of them.

        Returns:
            (optuna.Study): the study.
        """
        runner = self.study_for(program, trainset=trainset, valset=valset, testset=testset,
                                split_settings=split_settings)
        with self._adapter():
            study = runner.run(create=False, wait=False, own_trials=trials, progress=self.progress)
        self.runner_ = runner
        return study

    def _adapter(self):
        return dspy.context(adapter=self.adapter or dspy.settings.adapter or dspy.JSONAdapter())

    # --- results ------------------------------------------------------------------------------

    def _need(self):
        if self.result_ is None:
            raise ConfigError("JointOptimizer: call compile(program, trainset=..., valset=...) first")
        return self.result_

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto front on the dev split, cheapest first.

        Columns: trial, quality, cost per request and per 1,000 requests, latency, and each stage's
        choices (`<stage>.model`, ...).
        """
        return self._need().front

    @property
    def trials_(self) -> pd.DataFrame:
        """Every completed trial (one row per configuration)."""
        return self._need().trials

    @property
    def study(self):
        """The `optuna.Study` of the last compile (trial attributes: stage scores, tokens, latency)."""
        self._need()
        return self._study

    @property
    def report(self) -> EvaluationReport:
        """The chosen program's report on the test set (the dev set when no test set was given)."""
        result = self._need()
        return result.test or result.dev

    def log_model(self, directory: str | Path) -> str | None:
        """Log an exported program (`stagewise.export`) on the study's MLflow run.

        Its JSON files are logged as artifacts and the program as an MLflow model from code, whose
        signature takes the program's input fields (the manifest's evaluation inputs, else the fields
        the chosen program's call takes) as string columns.

        Returns:
            The model URI, or None when the study is not tracked.

        Raises:
            ExportError: `directory` holds no valid export.
        """
        from stagewise.optimize.export import input_fields, read_manifest

        result = self._need()
        directory = Path(directory)
        inputs = input_fields(result.program, read_manifest(directory))
        tracker = self.runner_.tracker
        tracker.artifacts([directory / "program.json", directory / "manifest.json"])
        return tracker.log_program(directory, inputs=inputs)

    def select(self, *, min_quality: float | None = None, max_cost_per_1k: float | None = None) -> dspy.Module:
        """Another program from the front.

        Args:
            min_quality: select the cheapest with quality >= `min_quality`.
            max_cost_per_1k: select the best costing at most this many dollars per 1,000 requests.
        """
        from stagewise.optimize import pareto

        result = self._need()
        row = pareto.select(result.front, min_quality=min_quality, max_cost_per_1k=max_cost_per_1k)
        with self._adapter():
            program = self.runner_.program_for(self.runner_.choice_of(row))
        _remember(program, self.runner_, result, trial=int(row["trial"]))
        return program


def _default_name(program: dspy.Module) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", type(program).__name__).strip("-") or "program"


def _remember(program: dspy.Module, runner, result, trial: int | None = None) -> None:
    """What `stagewise.export` records about where a chosen program came from."""
    chosen = int(result.chosen["trial"]) if trial is None else trial
    object.__setattr__(program, "stagewise_provenance", {
        "study": runner.settings.name, "trial": chosen, "data_fingerprint": runner.data_fingerprint,
        "metrics": {"dev": result.dev.summary(), "test": result.test.summary() if result.test else None}
        if trial is None else {},
    })
