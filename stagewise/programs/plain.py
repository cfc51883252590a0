"""Plain DSPy programs observed like stagewise ones: a run around the call, each predictor a stage.

A stagewise program opens a [`Run`][stagewise.programs.run.Run] when it is called, and each of
its stages reports to the observers (checkpoints, spans, the context store, a cost monitor). A
plain `dspy.Module` does neither. [`observed_call`][stagewise.programs.observed_call] gives it both: it opens a run over
the inputs, and a DSPy callback turns each call of a named predictor (`area`, `answer.predict`:
see [`stages_of`][stagewise.programs.predictors.stages_of]) into a stage event, with the predictor's
outputs as the sections it added. A predictor's call cannot be skipped from a callback, so a
resumed plain program calls its predictors again (its record is complete all the same).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from stagewise.context.record import Section
from stagewise.programs.predictors import PredictorStage, stages_of
from stagewise.programs.run import StageEvent, StageRun, current_run, observers, open_run, stage_key
from stagewise.programs.stage import Pipeline, as_text, default_count

__all__ = ["observed_call"]


def observed_call(program: dspy.Module, inputs: dict[str, Any]) -> dspy.Prediction:
    """`program(**inputs)`, observed.

    A stagewise program is called as it is; a plain DSPy program is called inside a run whose
    predictor calls are stage events for the observers installed with `observing`.
    """
    if isinstance(program, Pipeline) or current_run() is not None:
        return program(**inputs)
    stages = {id(s.predictor): s for s in stages_of(program).values() if isinstance(s, PredictorStage)}
    with open_run(inputs, default_count) as run:
        events = _PredictorEvents(run, stages)
        with dspy.context(callbacks=[*(dspy.settings.callbacks or []), events]):
            prediction = program(**inputs)
        run.outputs = {key: prediction[key] for key in prediction.keys()}
    return prediction


class _PredictorEvents(BaseCallback):
    """Opens the observers' stage hooks when a named predictor starts and closes them when it ends."""

    def __init__(self, run, stages: dict[int, PredictorStage]):
        self.run, self.stages = run, stages
        self._open: dict[str, tuple[StageEvent, ExitStack]] = {}
        self._lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        stage = self.stages.get(id(instance))
        if stage is None:
            return
        event = StageEvent(stage, self.run, stage_key(self.run, stage.name))
        stack = ExitStack()
        for watcher in observers():
            stack.enter_context(watcher.stage(event))
        with self._lock:
            self._open[call_id] = (event, stack)

    def on_module_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with self._lock:
            opened = self._open.pop(call_id, None)
        if opened is None:
            return
        event, stack = opened
        if exception is not None:
            try:  # the observers record the failure; DSPy raises the exception itself
                stack.__exit__(type(exception), exception, exception.__traceback__)
            except BaseException:  # noqa: BLE001, S110 - the same exception, re-raised by an observer
                pass
            return
        name = event.stage.name
        event.outputs = {key: outputs[key] for key in outputs.keys()} if outputs is not None else {}
        for field, value in event.outputs.items():
            text = as_text(value)
            event.added.append(self.run.context.add(Section(name=field, kind="stage_output", source=name,
                                                            content=text, tokens=default_count(text))))
        lm = event.stage.lm or dspy.settings.lm
        model = getattr(getattr(lm, "spec", None), "name", None) or getattr(lm, "model", None)
        event.log = StageRun(name, model, [], [s.id for s in event.added])
        self.run.log(event.log)
        stack.__exit__(None, None, None)
