"""The study config file (TOML): program, data, split, metrics, search space, tracking.

Paths in the file are relative to the file. ``[program] factory`` is ``module:function``
returning a fresh program; the config's folder and the working directory are importable.
Data come from a file (``path`` with ``inputs``/``labels`` column maps) or from the prompts
of an outcome table (``outcomes``) when the stages replay recorded models.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from stagewise.errors import ConfigError
from stagewise.metrics.report import EndToEnd, StageMetric
from stagewise.optimize.space import RouterChoices, StageChoices
from stagewise.optimize.study import StudySettings
from stagewise.tomlfiles import read_toml


@dataclass
class StudyConfig:
    path: Path
    factory: str
    factory_kwargs: dict
    examples: list
    data_fingerprint: str
    data_report: str
    split: dict
    end_to_end: EndToEnd
    stage_metrics: list[StageMetric]
    space: dict[str, StageChoices]
    settings: StudySettings
    lm_options: dict
    experiment: str | None
    replay_table: Any = None
    baseline: dict[str, str] | None = None  # stage -> model of the unoptimized program to compare with
    fields: Any = None  # the FieldMap of file data (None for outcome-table data)
    thresholds: dict[str, tuple[float, ...]] | None = None  # cascade name -> candidate thresholds
    routers: dict[str, RouterChoices] | None = None  # router name -> LLM stage or trained classifier

    def evaluation(self) -> dict | None:
        """How to evaluate the program on a data file, for the manifest (file data, named metrics only)."""
        metrics = [self.end_to_end.metric, *[m.metric for m in self.stage_metrics]]
        if self.fields is None or not all(isinstance(m, str) for m in metrics):
            return None
        return {"inputs": dict(self.fields.inputs), "labels": dict(self.fields.labels),
                "end_to_end": {"output": self.end_to_end.output, "label": self.end_to_end.label,
                               "metric": self.end_to_end.metric},
                "stages": [{"stage": m.stage, "output": m.output, "label": m.label, "metric": m.metric}
                           for m in self.stage_metrics]}

    def splits(self):
        """The seeded train/dev/test split of the examples, as ``[split]`` says."""
        from stagewise.data import split

        try:
            seed = int(self.split.get("seed", 0))
        except (TypeError, ValueError):
            raise ConfigError(f"config {str(self.path)!r}: [split] seed must be an integer, "
                              f"got {self.split.get('seed')!r}") from None
        return split(self.examples, train=self.split.get("train", 0.5), dev=self.split.get("dev", 0.25),
                     test=self.split.get("test", 0.25), seed=seed, stratify_by=self.split.get("stratify_by"))

    def build(self):
        """A fresh program from the factory; a ConfigError when the factory returns something else."""
        program = import_factory(self.factory)(**self.factory_kwargs)
        if not isinstance(program, dspy.Module):
            shown = repr(program)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ConfigError(
                f"config {str(self.path)!r}: [program] factory {self.factory!r} returned "
                f"{type(program).__module__}.{type(program).__qualname__} ({shown}), not a program: expected a "
                "DSPy program (a dspy.Module, whose predictors are its stages) or a stagewise program (Stage, "
                "Chain, Retrieve, FanOut, Router, Cascade or Hierarchy)")
        return program

    def optimizer(self, out_dir: str | Path, *, progress: bool = True):
        """The :class:`~stagewise.optimize.joint.JointOptimizer` this config describes, writing to ``out_dir``."""
        from stagewise.optimize.joint import JointOptimizer

        s = self.settings
        return JointOptimizer(
            metric=self.end_to_end, stage_metrics=self.stage_metrics,
            models={stage: c.models for stage, c in self.space.items()},
            optimizers={stage: c.optimizers for stage, c in self.space.items()},
            demos={stage: c.demos for stage, c in self.space.items()},
            trials=s.trials, tracking=self.experiment or s.name, study=s.name, storage=s.storage, out_dir=out_dir,
            seed=s.seed, prune_on=s.prune_on, prune_margin=s.prune_margin, min_quality=s.min_quality,
            max_cost_per_1k=s.max_cost_per_1k, latency=s.latency, sampler=s.sampler, thresholds=self.thresholds,
            routers=self.routers, reflection_model=s.reflection_model, gepa_metric_calls=s.gepa_metric_calls,
            baseline=self.baseline, lm_options=self.lm_options, fingerprint=self.data_fingerprint,
            progress=progress)


def import_factory(path: str):
    from stagewise.errors import ExportError
    from stagewise.optimize.trust import import_factory as importer

    try:
        return importer(path)
    except ExportError as exc:
        raise ConfigError(str(exc)) from None


def _need(table: dict, key: str, where: str, file: Path):
    if key not in table:
        raise ConfigError(f"config {str(file)!r}: [{where}] needs {key!r}")
    return table[key]


def load_config(path: str | Path, *, study: str | None = None, trials: int | None = None) -> StudyConfig:
    file = Path(path).resolve()
    raw = read_toml(file, f"config {str(path)!r}", ConfigError)
    for where in ("program", "data", "metrics", "search"):
        if not isinstance(raw.get(where), dict):
            raise ConfigError(f"config {str(file)!r}: missing table [{where}]")
    for folder in (str(file.parent), str(Path.cwd())):
        if folder not in sys.path:
            sys.path.insert(0, folder)

    data, replay_table, fields = raw["data"], None, None
    if "outcomes" in data:
        from stagewise.models.replay import OutcomeTable

        replay_table = OutcomeTable.load(file.parent / data["outcomes"])
        field = data.get("prompt_field", "prompt")
        examples = [dspy.Example(**{field: prompt}).with_inputs(field) for prompt in replay_table.prompts]
        fingerprint, report = replay_table.fingerprint, replay_table.report()
    else:
        from stagewise.data import FieldMap, load_dataset_file

        fields = FieldMap(inputs=dict(_need(data, "inputs", "data", file)), labels=dict(data.get("labels", {})))
        loaded = load_dataset_file(file.parent / _need(data, "path", "data", file), fields,
                                   on_bad=data.get("on_bad", "skip"))
        if "limit" in data:
            loaded.examples[:] = loaded.examples[: int(data["limit"])]
        examples, fingerprint, report = loaded.examples, loaded.fingerprint, loaded.report.summary()

    metrics = raw["metrics"]
    end = _need(metrics, "end_to_end", "metrics", file)
    end_metric: Any = end.get("metric", "normalized_match")
    if end_metric == "recorded_correctness":
        if replay_table is None:
            raise ConfigError(f"config {str(file)!r}: metric 'recorded_correctness' needs [data] outcomes")
        from stagewise.metrics.scoring import RecordedCorrectness

        end_metric = RecordedCorrectness(replay_table, prompt=data.get("prompt_field", "prompt"))
    end_to_end = EndToEnd(_need(end, "output", "metrics.end_to_end", file), end.get("label"), end_metric)
    stage_metrics = [StageMetric(m["stage"], m["output"], m["label"], m.get("metric", "normalized_match"))
                     for m in metrics.get("stages", [])]

    search = raw["search"]
    stages = _need(search, "stages", "search", file)
    space = {name: StageChoices(tuple(_need(choice, "models", f"search.stages.{name}", file)),
                                tuple(choice.get("optimizers", ["none"])), tuple(choice.get("demos", [0])))
             for name, choice in stages.items()}
    settings = StudySettings(
        name=study or search.get("study", file.stem), trials=trials or int(search.get("trials", 12)),
        seed=int(search.get("seed", 0)), storage=search.get("storage"), prune_on=int(search.get("prune_on", 8)),
        prune_margin=float(search.get("prune_margin", 0.15)), min_quality=search.get("min_quality"),
        max_cost_per_1k=search.get("max_cost_per_1k"), latency=bool(search.get("latency_objective", False)),
        reflection_model=search.get("reflection_model"), gepa_metric_calls=int(search.get("gepa_metric_calls", 40)),
        sampler=str(search.get("sampler", "tpe")))
    lm_options = {name: dict(options) for name, options in raw.get("models", {}).items()}
    if replay_table is not None:
        lm_options.setdefault("*", {})["replay_table"] = replay_table
    return StudyConfig(file, raw["program"].get("factory") or _need(raw["program"], "factory", "program", file),
                       dict(raw["program"].get("kwargs", {})), examples, fingerprint, report,
                       dict(raw.get("split", {"train": 0.5, "dev": 0.25, "test": 0.25, "seed": 0})), end_to_end,
                       stage_metrics, space, settings, lm_options, raw.get("tracking", {}).get("experiment"),
                       replay_table, dict(raw["baseline"]) if "baseline" in raw else None, fields,
                       {name: tuple(float(v) for v in values) for name, values in search.get("thresholds", {}).items()},
                       {name: _router_choices(name, table, file) for name, table in search.get("routers", {}).items()})


def _router_choices(name: str, table: dict, file: Path) -> RouterChoices:
    where = f"search.routers.{name}"
    unknown = sorted(set(table) - {"label", "decisions", "features", "C"})
    if unknown:
        raise ConfigError(f"config {str(file)!r}: [{where}] has unknown key(s) {unknown} "
                          "(keys: label, decisions, features, C)")
    defaults = RouterChoices(label="")
    try:
        return RouterChoices(label=str(_need(table, "label", where, file)),
                             decisions=tuple(str(d) for d in table.get("decisions", defaults.decisions)),
                             features=tuple(str(f) for f in table.get("features", defaults.features)),
                             C=tuple(float(c) for c in table.get("C", defaults.C)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {str(file)!r}: [{where}]: {exc}") from None
