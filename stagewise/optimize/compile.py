"""Per-stage prompt optimization with DSPy's optimizers, compiled once and reused.

DSPy optimizers compile a whole program; a stage's chosen optimizer is applied by
compiling the program with it and keeping that stage's learned state (demos,
instructions). The result is cached on disk by content: the stage, the optimizer and its
settings, the training data's fingerprint and the models it depends on (for bootstrapping,
every stage's model, since the teacher runs the whole program; for labeled demos, none),
so a stage compiled once is reused by every later trial and every rerun.

DSPy's `LabeledFewShot` and `BootstrapFewShot*` return predictors with `lm=None`;
only the learned state is taken from the compiled copy, so each stage keeps its model.

What each optimizer needs (demos, a teacher, a reflection model, one model for the whole
program) is declared by its [`StageOptimizer`][stagewise.optimize.optimizers.StageOptimizer].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from stagewise.errors import StoreError
from stagewise.optimize.export import state_without_models
from stagewise.optimize.optimizers import OptimizerSetup, Reflection, get_optimizer
from stagewise.optimize.space import TrialChoice
from stagewise.programs.predictors import stages_of

__all__ = ["CompileCache", "Reflection", "compile_stages"]

log = logging.getLogger(__name__)


class CompileCache:
    """Learned stage states as JSON files, keyed by the content that produced them.

    Safe to share among processes (workers sharing `OUT/compiled`): an entry is written to a
    temporary file of its own, flushed to disk and renamed over the entry in one step, so a
    reader sees the whole of one writer's entry or none. An entry that cannot be read (cut
    short by a crash, edited by hand) is logged and counted as a miss; the stage is compiled
    again and the entry rewritten.

    Args:
        directory: the folder of the entries.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"compile cache {str(self.directory)!r} cannot be created: {exc}") from None
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def key(self, stage: str, choice: TrialChoice, data_fingerprint: str, reflection: Reflection | None = None) -> str:
        """The entry's name: a hash of everything the learned state depends on."""
        name = choice.optimizers.get(stage, "none")
        optimizer = get_optimizer(name)
        content = {"stage": stage, "optimizer": name, "demos": choice.demos.get(stage, 0),
                   "data": data_fingerprint,
                   "models": {} if optimizer.model_free else dict(sorted(choice.models.items())),
                   **optimizer.cache_content(reflection)}
        if choice.routers and not optimizer.model_free:  # the teacher's routing decides its traces too
            content["routers"] = {name: choice.routers[name] for name in sorted(choice.routers)}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, key: str) -> dict | None:
        """The stored state of `key`, or None (a miss) when there is none or it cannot be read."""
        path = self.directory / f"{key}.json"
        state = None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError(f"a JSON {type(state).__name__}, not an object")
        except FileNotFoundError:
            state = None
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("compile cache: entry %s cannot be read (%s: %s); compiling the stage again",
                        path, type(exc).__name__, str(exc)[:200])
            state = None
        with self._lock:
            if state is None:
                self.misses += 1
            else:
                self.hits += 1
        return state

    def put(self, key: str, state: dict) -> None:
        """Store `state` as `key`'s entry, replacing any entry in one step (see the class)."""
        path = self.directory / f"{key}.json"
        text = json.dumps(state, default=str)
        handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".partial", dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide the entry from other users' workers
                    os.fchmod(file.fileno(), 0o644)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)  # atomic: a concurrent reader never sees half a file
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _sync_directory(self.directory)


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


_keeping_models: dict[type, type] = {}


def _keep_models_on_reset(program):
    """Make `program`'s predictors keep their model when an optimizer resets them.

    DSPy's optimizers reset the student (`reset_copy`: demos, traces and the predictor's
    `lm`) before filling in demos, and some then evaluate candidate programs with it
    (`bootstrap_random_search` scores every candidate, `mipro` its trials). Each stage
    carries its own model on its predictors, so a reset student has none ("No LM is loaded").
    Only this copy changes: its predictors get a subclass whose `reset` keeps the model.
    """
    for predictor in program.predictors():
        cls = type(predictor)
        if cls in _keeping_models.values():
            continue
        if cls not in _keeping_models:
            def reset(self, _base=cls):
                lm = self.lm
                _base.reset(self)
                self.lm = lm

            _keeping_models[cls] = type(cls.__name__, (cls,), {"reset": reset, "__module__": cls.__module__,
                                                               "__qualname__": cls.__qualname__})
        predictor.__class__ = _keeping_models[cls]
    return program


def compile_stages(program, choice: TrialChoice, trainset: list, metric: Callable, cache: CompileCache,
                   data_fingerprint: str, reflection: Reflection | None = None) -> dict[str, str]:
    """Apply each stage's optimizer to `program` (in place), from the cache when possible.

    Returns, per stage, `"cached"`, `"compiled"` or `"none"`.
    """
    outcome = {}
    compiled_by: dict[tuple, object] = {}  # one compile per distinct optimizer setting
    for stage, name in choice.optimizers.items():
        optimizer, demos = get_optimizer(name), choice.demos.get(stage, 0)
        if not optimizer.compiles or (demos == 0 and optimizer.uses_demos):
            outcome[stage] = "none"
            continue
        key = cache.key(stage, choice, data_fingerprint, reflection)
        state = cache.get(key)
        # A single-model optimizer runs the program on the stage's own model: one compile per stage.
        setting = (name, demos, stage if optimizer.single_model else None)
        if state is None:
            if setting not in compiled_by:
                teacher = None
                if optimizer.needs_teacher:
                    teacher = program.deepcopy()  # keeps every stage's model: the teacher runs the real pipeline
                    # BootstrapFewShot would give an uncompiled teacher labeled demos through reset_copy(),
                    # which drops every stage's model; marked compiled, the teacher keeps them.
                    teacher._compiled = True
                setup = OptimizerSetup(demos, metric, trainset, stages_of(program)[stage].lm, reflection)
                student = _keep_models_on_reset(program.deepcopy())
                compiled = optimizer.compile(student, setup=setup, teacher=teacher)
                # Random search and MIPRO hang every candidate program they scored on the result:
                # those are not stages of the program (and would repeat its stage names).
                for attribute in ("candidate_programs", "mb_candidate_programs", "trial_logs"):
                    compiled.__dict__.pop(attribute, None)
                compiled_by[setting] = compiled
            state = state_without_models(stages_of(compiled_by[setting])[stage].step)
            cache.put(key, state)
            outcome[stage] = "compiled"
        else:
            outcome[stage] = "cached"
        target = stages_of(program)[stage]
        model = target.lm
        target.step.load_state(state)
        target.lm = model  # the learned state carries no model: keep the stage's own
    return outcome
