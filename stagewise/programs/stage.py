"""Stages and the base of every program.

A [`Pipeline`][stagewise.programs.Pipeline] is a `dspy.Module` that runs on a request's context. Calling one
(`program(query=...)`) opens a run, executes, and returns a `dspy.Prediction` of its
outputs, with the request's trace on `prediction.trace`. Inside another program it joins
the current run instead, so programs nest.

A [`Stage`][stagewise.programs.Stage] is one named step: a DSPy module (a `Predict` of any signature) whose
input fields are filled from context sections. Each input field takes the sections named by
a pattern (default `"*.<field>"`: a section of that name from any source); they are fitted
to the stage's token budget (compressed, or truncated with a note, never silently cut) and
rendered in the format the stage's model prefers (XML, Markdown or plain, from the
catalog). Each output field becomes a section `"<stage>.<field>"` whose lineage is every
section the stage received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import dspy
from pydantic import BaseModel

from stagewise.context.budget import fit, reallocate, stage_budget
from stagewise.context.format import render
from stagewise.context.granularity import compress_extractive, compress_with_model
from stagewise.context.record import Section, SectionKind
from stagewise.errors import ConfigError
from stagewise.models.tokens import count_tokens
from stagewise.models.usage import stage_scope
from stagewise.programs.run import Run, StageEvent, StageRun, current_guard, current_run, observers, open_run, stage_key
from stagewise.tomlfiles import read_toml


class StageConfigError(ConfigError):
    """A program is assembled wrongly (duplicate stage names, unknown stage in a model map)."""


def default_count(text: str) -> int:
    """Tokens of `text` in tiktoken's cl100k_base (for sections no model counted)."""
    return count_tokens(text, "cl100k_base").tokens


def as_text(value: Any) -> str:
    """A stage output as section content: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        return json.dumps([v.model_dump(mode="json") for v in value])
    return json.dumps(value, default=str)


def _toml_table(path: Path, table: str) -> dict[str, Any]:
    data = read_toml(path, f"config file {str(path)!r}", StageConfigError)
    if not isinstance(data.get(table), dict):
        raise StageConfigError(f"config file {str(path)!r} has no [{table}] table")
    return data[table]


class Pipeline(dspy.Module):
    """Base of every stagewise program. Subclasses implement `execute(run) -> outputs`."""

    name: str

    def execute(self, run: Run) -> dict[str, Any]:
        """Run this program in `run`: read and add context sections, and return the outputs."""
        raise NotImplementedError

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the program on `inputs` (the request's input fields).

        Inside a run already (a nested program), it runs in that run. At the top level, it opens a
        run and the prediction carries `trace` (a [`Trace`][stagewise.programs.Trace]), `context`
        and `degraded` (the stages a resilience policy skipped) as attributes besides its fields.
        """
        run = current_run()
        if run is not None:
            return dspy.Prediction(**self.execute(run))
        from stagewise.programs.trace import Trace

        with open_run(inputs, default_count) as run:
            outputs = run.outputs = self.execute(run)
        prediction = dspy.Prediction(**outputs)
        object.__setattr__(prediction, "trace", Trace.of(run))  # kept out of the prediction's fields
        object.__setattr__(prediction, "context", run.context)
        object.__setattr__(prediction, "degraded", list(run.degraded))  # stages skipped by a resilience policy
        return prediction

    def stages(self) -> dict[str, Stage]:
        """Every stage in this program, nested ones included, by name."""
        found: dict[str, Stage] = {}
        for _, module in self.named_sub_modules():
            if isinstance(module, Stage):
                if module.name in found and found[module.name] is not module:
                    raise StageConfigError(f"two stages are named {module.name!r}: stage names must be unique")
                found[module.name] = module
        return found

    def _named(self, mapping: dict[str, Any], what: str) -> dict[str, Stage]:
        stages = self.stages()
        unknown = sorted(set(mapping) - set(stages))
        if unknown:
            raise StageConfigError(f"{what}: no stage named {', '.join(map(repr, unknown))}; "
                                   f"stages: {', '.join(stages)}")
        return stages

    def set_models(self, models: dict[str, Any] | str | Path, *, catalog=None) -> Pipeline:
        """Assign each stage's model by stage name: a catalog name, a model string or a dspy.LM.

        `models` may be a TOML file with a `[models]` table (`stage = "model"`), so the
        models of a pipeline change without editing code.
        """
        from stagewise.models.lm import get_lm

        if isinstance(models, (str, Path)):
            models = _toml_table(Path(models), "models")
        stages = self._named(models, "set_models")
        for name, model in models.items():
            stages[name].lm = model if isinstance(model, dspy.BaseLM) else get_lm(model, catalog=catalog)
        return self

    def set_budgets(self, budgets: dict[str, int | None] | str | Path) -> Pipeline:
        """Each stage's context budget in tokens, by stage name (or a TOML file's `[budgets]`)."""
        if isinstance(budgets, (str, Path)):
            budgets = _toml_table(Path(budgets), "budgets")
        stages = self._named(budgets, "set_budgets")
        for name, budget in budgets.items():
            if budget is not None and (not isinstance(budget, int) or budget <= 0):
                raise StageConfigError(f"set_budgets: stage {name!r} budget must be a positive integer, got {budget!r}")
            stages[name].budget = budget
        return self

    def rebudget(self, total: int, traces: list[Any], *, floor: int = 64) -> dict[str, int]:
        """Re-split `total` context tokens across the LLM stages from the usage observed in `traces`.

        The usage is each stage's mean input tokens per request. The budgets are set, and returned.

        Args:
            total: the context tokens to share.
            traces: request traces (`prediction.trace`).
            floor: the fewest tokens a stage gets.
        """
        llm_stages = {name for name, stage in self.stages().items()}
        used: dict[str, list[int]] = {name: [] for name in llm_stages}
        for trace in traces:
            for entry in trace.stages:
                if entry.stage in used and entry.calls:
                    used[entry.stage].append(entry.input_tokens)
        observed = {name: (sum(v) / len(v) if v else 0.0) for name, v in used.items()}
        budgets = reallocate(total, observed, floor=floor)
        self.set_budgets(budgets)
        return budgets


class Stage(Pipeline):
    """One named step: a DSPy module fed from context sections.

    Args:
        name: unique within a program; names the stage's output sections and trace entry.
        step: a signature (wrapped in `dspy.Predict`) or any DSPy module.
        inputs: per input field, the section pattern(s) to fill it from (default `"*.<field>"`).
        kind: the kind of the sections this stage produces.
        budget: tokens for this stage's context sections (capped by its model's window).
        summarizer: an LM to compress over-budget context with (default: extractive, no model).
        lm: the stage's model (or set it later with `Pipeline.set_models`).

    Examples:
        >>> from stagewise.programs import Stage
        >>> area = Stage("area", "message -> area", budget=512)
        >>> area.inputs
        {'message': ['*.message']}
    """

    def __init__(
        self,
        name: str,
        step: type[dspy.Signature] | str | dspy.Module,
        *,
        inputs: dict[str, str | list[str]] | None = None,
        kind: SectionKind = "stage_output",
        budget: int | None = None,
        summarizer: dspy.BaseLM | None = None,
        lm: dspy.BaseLM | None = None,
    ):
        super().__init__()
        if not name or "." in name:
            raise StageConfigError(f"stage name {name!r} must be non-empty and contain no '.'")
        self.name = name
        self.step = step if isinstance(step, dspy.Module) else dspy.Predict(step)
        signature = self.signature
        patterns = {field: [f"*.{field}"] for field in signature.input_fields}
        for field, wanted in (inputs or {}).items():
            if field not in signature.input_fields:
                raise StageConfigError(f"stage {name!r}: {field!r} is not an input field of its signature "
                                       f"(input fields: {list(signature.input_fields)})")
            patterns[field] = [wanted] if isinstance(wanted, str) else list(wanted)
        self.inputs = patterns
        self.kind = kind
        self.budget = budget
        self.summarizer = summarizer
        if lm is not None:
            self.lm = lm

    @property
    def signature(self) -> type[dspy.Signature]:
        """The signature of the stage's (first) predictor.

        Raises:
            StageConfigError: the stage's module has no predictor.
        """
        predictors = self.step.predictors()
        if not predictors:
            raise StageConfigError(f"stage {self.name!r}: its module has no predictor")
        return predictors[0].signature

    @property
    def lm(self) -> dspy.BaseLM | None:
        """The stage's model (None: DSPy's configured one); setting it sets every predictor's."""
        return self.step.predictors()[0].lm

    @lm.setter
    def lm(self, lm: dspy.BaseLM) -> None:
        for predictor in self.step.predictors():
            predictor.lm = lm

    def _model(self, override: dspy.BaseLM | None = None):
        lm = override or self.lm or dspy.settings.lm
        spec = getattr(lm, "spec", None)
        count = lm.count_tokens if hasattr(lm, "count_tokens") else default_count
        return lm, spec, count

    def _fixed_tokens(self, count: Callable[[str], int]) -> int:
        """Tokens of the prompt without the context: instructions, field names, demos."""
        adapter = dspy.settings.adapter or dspy.JSONAdapter()
        predictor = self.step.predictors()[0]
        empty = {field: "" for field in self.signature.input_fields}
        messages = adapter.format(self.signature, predictor.demos, empty)
        return sum(count(m["content"]) for m in messages if isinstance(m.get("content"), str))

    def _compressor(self, count: Callable[[str], int]):
        if self.summarizer is None:
            return lambda section, max_tokens: compress_extractive(section, max_tokens, count)
        from stagewise.signatures import Summarize

        summarize = dspy.Predict(Summarize)
        summarize.lm = self.summarizer

        def with_model(text: str, max_tokens: int) -> str:
            with stage_scope(f"{self.name}:compress"):
                return summarize(text=text, max_words=max(1, int(max_tokens * 0.7))).summary

        return lambda section, max_tokens: compress_with_model(section, max_tokens, with_model, count)

    def execute(self, run: Run) -> dict[str, Any]:
        """Call the model on the stage's input sections, fitted to its budget, and add its outputs as sections.

        Observers may restore the outputs instead of the call; the call goes through the current
        guard (retries, fallbacks), if any.
        """
        watchers = observers()
        if not watchers:
            return self._execute(run)
        event = StageEvent(self, run, stage_key(run, self.name))
        before = dict(run.context.sections)  # a re-added id replaces its section in place: compare by identity
        restored, restorer = None, None
        for watcher in watchers:
            restored = watcher.restore(event)
            if restored is not None:
                restorer, event.restored_by = watcher, type(watcher).__name__
                break
        with ExitStack() as stack:
            for watcher in watchers:  # the others see a restored execution too (a checkpoint records it)
                if watcher is not restorer:
                    stack.enter_context(watcher.stage(event))
            event.outputs = restored if restorer is not None else self._execute(run)
            event.added = [s for i, s in run.context.sections.items() if before.get(i) is not s]
            event.log = next((s for s in reversed(run.stages) if s.stage == self.name), None)
        return event.outputs

    def _execute(self, run: Run) -> dict[str, Any]:
        guard = current_guard()
        if guard is None:
            return self._attempt(run, None)
        return guard.call(self, run, lambda lm: self._attempt(run, lm))

    def estimate(self, run: Run, lm: dspy.BaseLM | None = None) -> tuple[int, int]:
        """(input tokens, maximum output tokens) of this stage's call on `lm`, before making it."""
        lm, spec, count = self._model(lm)
        sections = [s for patterns in self.inputs.values() for s in run.context.select(patterns, stage=self.name)]
        max_output = (getattr(lm, "kwargs", {}) or {}).get("max_tokens") or (spec.max_output if spec else 0)
        return self._fixed_tokens(count) + sum(s.tokens for s in sections), int(max_output or 0)

    def _step_for(self, lm: dspy.BaseLM | None):
        """The stage's module, on `lm` when it is not the stage's own model (a fallback)."""
        if lm is None or lm is self.lm:
            return self.step
        step = self.step.deepcopy()  # requests share the program: never swap the model in place
        for predictor in step.predictors():
            predictor.lm = lm
        return step

    def _attempt(self, run: Run, override: dspy.BaseLM | None) -> dict[str, Any]:
        lm, spec, count = self._model(override)
        selected = {field: run.context.select(patterns, stage=self.name) for field, patterns in self.inputs.items()}
        sections = [s for group in selected.values() for s in group]
        notes: list[str] = []
        saved = 0
        if spec is not None or self.budget is not None:
            window = min(spec.context_window, 8192) if spec is not None and spec.engine == "llama_cpp" else (
                spec.context_window if spec is not None else 10**9)
            max_output = (getattr(lm, "kwargs", {}) or {}).get("max_tokens") or (spec.max_output if spec else 0)
            budget = stage_budget(self.name, configured=self.budget, context_window=window, max_output=max_output,
                                  fixed_tokens=self._fixed_tokens(count))
            fitted = fit(sections, budget, count, stage=self.name, compress=self._compressor(count))
            notes, saved = fitted.notes, fitted.tokens_before - fitted.tokens_after
            replaced = {}
            for original, new in zip(sections, fitted.sections):
                if new is not original:
                    # The fitted copy belongs to this stage: later stages asking for the original
                    # (`retrieve.*`) still get the original; lineage and expand lead back to it.
                    replaced[original.id] = run.context.add(replace(new, source=f"{self.name}~budget",
                                                                    name=original.id, lineage=(original.id,)))
            selected = {field: [replaced.get(s.id, s) for s in group] for field, group in selected.items()}
        fmt = spec.context_format if spec is not None else "markdown"
        values = {field: self._inject(group, fmt) for field, group in selected.items()}
        with stage_scope(self.name):
            prediction = self._step_for(override)(**values)
        received = [s.id for group in selected.values() for s in group]
        produced = []
        outputs = {}
        for field in self.signature.output_fields:
            value = prediction[field]
            outputs[field] = value
            text = as_text(value)
            section = run.context.add(Section(name=field, kind=self.kind, source=self.name, content=text,
                                              tokens=count(text), lineage=tuple(received)))
            produced.append(section.id)
        run.log(StageRun(self.name, getattr(spec, "name", None) or getattr(lm, "model", None), received, produced,
                         notes, saved))
        return outputs

    @staticmethod
    def _inject(sections: list[Section], fmt: str) -> str:
        """One request input goes in as it is; anything assembled from context is rendered."""
        if len(sections) == 1 and sections[0].kind == "query":
            return sections[0].content
        return render(sections, fmt)
