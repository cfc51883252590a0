"""The study config file (TOML): program, data, split, metrics, search space, tracking, privacy.

Paths in the file are relative to the file. `[program] factory` is `module:function`
returning a fresh program; the config's folder and the working directory are importable.
Data come from a file (`path` with `inputs`/`labels` column maps) or from the prompts
of an outcome table (`outcomes`) when the stages replay recorded models.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, get_args, get_origin

import dspy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from stagewise.errors import ConfigError, StagewiseError
from stagewise.metrics.report import EndToEnd, StageMetric
from stagewise.optimize.settings import SearchSettings, StudySettings
from stagewise.optimize.space import RouterChoices, StageChoices
from stagewise.tomlfiles import read_toml

__all__ = ["StudyConfig", "load_config"]


@dataclass(kw_only=True)
class StudyConfig:
    """A study config file, read and checked: what to optimize, on which data, how to search."""

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
    privacy: Any = None  # the [privacy] table's PrivacyPolicy (None: no table)

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
        """The seeded train/dev/test split of the examples, as `[split]` says."""
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
        """The [`JointOptimizer`][stagewise.optimize.joint.JointOptimizer] this config describes.

        Args:
            out_dir: where the compiled-stage cache, the study and `pareto.csv`/`pareto.png` go.
            progress: show a progress bar while trials run.
        """
        from stagewise.optimize.joint import JointOptimizer

        settings = self.settings.model_dump(exclude={"name"})
        return JointOptimizer(
            metric=self.end_to_end, stage_metrics=self.stage_metrics,
            models={stage: c.models for stage, c in self.space.items()},
            optimizers={stage: c.optimizers for stage, c in self.space.items()},
            demos={stage: c.demos for stage, c in self.space.items()},
            tracking=self.experiment or self.settings.name, study=self.settings.name, out_dir=out_dir,
            thresholds=self.thresholds, routers=self.routers, baseline=self.baseline, lm_options=self.lm_options,
            fingerprint=self.data_fingerprint, progress=progress, privacy=self.privacy, **settings)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def import_factory(path: str):
    from stagewise.errors import ExportError
    from stagewise.optimize.trust import import_factory as importer

    try:
        return importer(path)
    except ExportError as exc:
        raise ConfigError(str(exc)) from None


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Program(_Table):
    factory: str
    kwargs: dict[str, Any] = {}


class _Data(_Table):
    outcomes: str | None = None
    prompt_field: str = "prompt"
    path: str | None = None
    inputs: dict[str, str] | None = None
    labels: dict[str, str] = {}
    on_bad: Literal["skip", "refuse"] = "skip"
    limit: PositiveInt | None = None


class _Split(_Table):
    train: Fraction = 0.5
    dev: Fraction = 0.25
    test: Fraction = 0.25
    seed: int = 0
    stratify_by: str | None = None


class _EndToEnd(_Table):
    output: str
    label: str | None = None
    metric: str = "normalized_match"


class _StageMetric(_Table):
    stage: str
    output: str
    label: str
    metric: str = "normalized_match"


class _Metrics(_Table):
    end_to_end: _EndToEnd
    stages: list[_StageMetric] = []


class _StageSearch(_Table):
    models: list[str] = Field(min_length=1)
    optimizers: list[str] = Field(["none"], min_length=1)
    demos: list[NonNegativeInt] = Field([0], min_length=1)


class _Router(_Table):
    label: str
    decisions: list[str] = Field(list(RouterChoices.__dataclass_fields__["decisions"].default), min_length=1)
    features: list[str] = Field(list(RouterChoices.__dataclass_fields__["features"].default), min_length=1)
    C: list[PositiveFloat] = Field(list(RouterChoices.__dataclass_fields__["C"].default), min_length=1)


class _Search(SearchSettings):
    """`[search]`: the search space and the settings of [`SearchSettings`][stagewise.optimize.SearchSettings].

    The settings' defaults are those of `SearchSettings`.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=True)

    stages: dict[str, _StageSearch] = Field(min_length=1)
    study: str | None = None
    thresholds: dict[str, list[Fraction]] = {}
    routers: dict[str, _Router] = {}


class _Tracking(_Table):
    experiment: str | None = None


class _Privacy(_Table):
    """`[privacy]`: what is redacted from what a run keeps (stagewise.runtime.privacy)."""

    detect: list[Literal["email", "credit_card", "phone", "iban"]] = ["email", "credit_card", "phone", "iban"]
    patterns: dict[str, str] = {}
    drop: list[str] = []
    hash: list[str] = []
    hash_key_env: str = "STAGEWISE_PRIVACY_KEY"
    replacement: str = "<{entity}>"
    phone_regions: list[str] = ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"]


class _StudyFile(_Table):
    program: _Program
    data: _Data
    split: _Split = _Split()
    metrics: _Metrics
    search: _Search
    models: dict[str, dict[str, Any]] = {}
    tracking: _Tracking = _Tracking()
    baseline: dict[str, str] | None = None
    privacy: _Privacy | None = None


def _config_error(file: Path, exc: ValidationError) -> ConfigError:
    """One line naming the table and key at fault (the first of the problems, and how many more)."""
    errors = exc.errors()
    first = errors[0]
    path = [str(p) for p in first["loc"]]
    keys = [p for p in path if not p.isdigit()]
    where, key = ".".join(keys[:-1]), path[-1]
    if first["type"] == "missing":
        text = f"missing table [{key}]" if not where else f"[{where}] needs {key!r}"
    elif first["type"] == "extra_forbidden":
        unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"
                         and [str(p) for p in e["loc"][:-1]] == path[:-1])
        text = f"[{where}] has unknown key(s) {unknown}" if where else f"has unknown table(s) {unknown}"
        allowed = _allowed_keys(path[:-1])
        if allowed:
            text += f" (keys: {', '.join(allowed)})"
    else:
        shown = repr(first.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        place = f"{keys[-1]}[{path[-1]}]" if path[-1].isdigit() else key
        text = f"[{where or key}] {place}: {first['msg'][0].lower()}{first['msg'][1:]} (got {shown})"
    more = len(errors) - 1
    return ConfigError(f"config {str(file)!r}: {text}" + (f" ({more} more problem(s))" if more else ""))


def _allowed_keys(path: list[str]) -> list[str]:
    """The keys the table at `path` may have (for the message about an unknown one)."""
    node: Any = _StudyFile
    parts = iter(path)
    for part in parts:
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return []
        node = _unwrap(node.model_fields[part].annotation)
        while get_origin(node) in (dict, list):
            next(parts, None)  # the stage or router name, or the list index
            node = _unwrap(get_args(node)[-1])
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return []
    return [info.alias or name for name, info in node.model_fields.items()]


def _unwrap(annotation):
    """`X` for `X | None`."""
    if get_origin(annotation) is UnionType:
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def load_config(path: str | Path, *, study: str | None = None, trials: int | None = None) -> StudyConfig:
    """The study config at `path` (TOML), validated key by key.

    `study` and `trials` override `[search]`'s.

    Raises:
        ConfigError: the file is missing or invalid; the message names the file, the table and the key at fault.
    """
    file = Path(path).resolve()
    raw = read_toml(file, f"config {str(path)!r}", ConfigError)
    try:
        parsed = _StudyFile.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(file, exc) from None
    for folder in (str(file.parent), str(Path.cwd())):
        if folder not in sys.path:
            sys.path.insert(0, folder)

    try:
        examples, fingerprint, report, replay_table, fields = _read_data(parsed.data, file)
    except StagewiseError as exc:
        if isinstance(exc, ConfigError) and str(exc).startswith("config "):
            raise
        raise ConfigError(f"config {str(file)!r}: [data]: {exc}") from exc
    data = parsed.data
    end = parsed.metrics.end_to_end
    end_metric: Any = end.metric
    if end_metric == "recorded_correctness":
        if replay_table is None:
            raise ConfigError(f"config {str(file)!r}: metric 'recorded_correctness' needs [data] outcomes")
        from stagewise.metrics.scoring import RecordedCorrectness

        end_metric = RecordedCorrectness(replay_table, prompt=data.prompt_field)
    end_to_end = EndToEnd(end.output, end.label, end_metric)
    stage_metrics = [StageMetric(m.stage, m.output, m.label, m.metric) for m in parsed.metrics.stages]

    search = parsed.search
    space = {name: StageChoices(tuple(c.models), tuple(c.optimizers), tuple(c.demos))
             for name, c in search.stages.items()}
    chosen = {name: getattr(search, name) for name in SearchSettings.model_fields}
    settings = StudySettings(**{**chosen, "trials": trials or search.trials}, name=study or search.study or file.stem)
    privacy = None
    if parsed.privacy is not None:
        from stagewise.runtime.privacy import PrivacyPolicy

        privacy = PrivacyPolicy.from_config(parsed.privacy.model_dump(), where=f"config {str(file)!r}: [privacy]")
    lm_options = {name: dict(options) for name, options in parsed.models.items()}
    if replay_table is not None:
        lm_options.setdefault("*", {})["replay_table"] = replay_table
    return StudyConfig(
        path=file, factory=parsed.program.factory, factory_kwargs=dict(parsed.program.kwargs), examples=examples,
        data_fingerprint=fingerprint, data_report=report, split=parsed.split.model_dump(exclude_none=True),
        end_to_end=end_to_end, stage_metrics=stage_metrics, space=space, settings=settings, lm_options=lm_options,
        experiment=parsed.tracking.experiment, replay_table=replay_table, baseline=parsed.baseline, fields=fields,
        thresholds={name: tuple(values) for name, values in search.thresholds.items()},
        routers={name: RouterChoices(label=r.label, decisions=tuple(r.decisions), features=tuple(r.features),
                                     C=tuple(r.C)) for name, r in search.routers.items()},
        privacy=privacy)


def _read_data(data: _Data, file: Path):
    """The examples of `[data]`: (examples, fingerprint, report, outcome table or None, FieldMap or None)."""
    replay_table, fields = None, None
    if data.outcomes is not None:
        from stagewise.data import OutcomeTable

        replay_table = OutcomeTable.load(file.parent / data.outcomes)
        examples = [dspy.Example(**{data.prompt_field: prompt}).with_inputs(data.prompt_field)
                    for prompt in replay_table.prompts]
        fingerprint, report = replay_table.fingerprint, replay_table.report()
    else:
        from stagewise.data import FieldMap, load_dataset_file

        for key in ("inputs", "path"):
            if getattr(data, key) is None:
                raise ConfigError(f"config {str(file)!r}: [data] needs {key!r} (or 'outcomes' for recorded models)")
        fields = FieldMap(inputs=dict(data.inputs), labels=dict(data.labels))
        loaded = load_dataset_file(file.parent / data.path, fields, on_bad=data.on_bad)
        if data.limit is not None:
            loaded.examples[:] = loaded.examples[: data.limit]
        examples, fingerprint, report = loaded.examples, loaded.fingerprint, loaded.report.summary()
    return examples, fingerprint, report, replay_table, fields
