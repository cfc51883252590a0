"""Checkpointed runs: run a program with a checkpoint after every stage, resume a failed run.

`run(program, inputs, store=URL)` gives the run an id and writes a checkpoint (see
`stagewise.runtime.checkpoint`) after every stage. `resume(run_id, store=URL)` runs it
again from its checkpoint: every stage execution the checkpoint holds is restored (its
outputs and context sections, no model call), so the run restarts at the stage that failed.
A stage execution is recognized by its key, `stage#n` (its n-th execution in the run).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import pydantic

from stagewise.context.record import Section
from stagewise.errors import ConfigError
from stagewise.programs.plain import observed_call
from stagewise.programs.predictors import set_demos, set_models, stages_of
from stagewise.programs.run import Observer, Run, StageEvent, StageRun, StepEvent, observing
from stagewise.redaction import redact
from stagewise.runtime.checkpoint import CheckpointError, CheckpointStore, open_checkpoints
from stagewise.runtime.privacy import PrivacyPolicy, PrivacyScope, privacy_scope, protecting


def section_record(section: Section) -> dict:
    """A section as a JSON-able checkpoint record."""
    return {**asdict(section), "lineage": list(section.lineage)}


def section_from(record: dict) -> Section:
    """The section a checkpoint record (`section_record`) describes."""
    return Section(**{**record, "lineage": tuple(record.get("lineage", ()))})


def jsonable(value: Any) -> Any:
    """`value` as JSON-able data: pydantic models dumped, containers item by item, other objects as `str`."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def typed_outputs(stage, outputs: dict) -> dict:
    """Stored outputs back as the stage's signature types (a plan's list of models, a float ...)."""
    fields = stage.signature.output_fields
    typed = {}
    for name, value in outputs.items():
        annotation = fields[name].annotation if name in fields else None
        try:
            typed[name] = pydantic.TypeAdapter(annotation).validate_python(value) if annotation else value
        except pydantic.ValidationError:
            typed[name] = value
    return typed


def model_names(program) -> dict[str, str | None]:
    """Each stage's catalog model name (None for a model outside the catalog)."""
    models = {}
    for name, stage in stages_of(program).items():
        spec = getattr(stage.lm, "spec", None)  # only catalog models can be set again by name
        models[name] = spec.name if spec is not None else None
    return models


def private_section(scope: PrivacyScope | None, record: dict) -> dict:
    """A section record with its content redacted (a section is named after the field it holds)."""
    if scope is None:
        return record
    return {**record, "content": scope.value(record["content"], record["name"]),
            "note": scope.text(record["note"]) if record.get("note") else record.get("note")}


def private_step(scope: PrivacyScope | None, step: dict) -> dict:
    """A checkpoint step with its outputs, sections and notes redacted.

    Idempotent: a stored step restored into a new run passes through again.
    """
    if scope is None:
        return step
    return {**step, "outputs": scope.record(step["outputs"]),
            "sections": [private_section(scope, s) for s in step["sections"]],
            "notes": [scope.text(n) for n in step.get("notes") or []]}


class Checkpointer(Observer):
    """Writes a checkpoint after every stage of a run; restores the steps of `restore_from`.

    With `privacy` (or inside `protecting(policy)`) every input, output, section, note and
    error message is redacted once, as it is added to the record: the store never receives it.

    Args:
        store: where the checkpoints go.
        run_id: the run's id.
        program (dspy.Module | None): the program, whose stages' catalog models the record names.
        origin: how to rebuild the program (`{"factory": "module:function", "kwargs": {}}`).
        restore_from: a stored record whose steps are restored instead of run again (resume, replay).
        privacy: the policy that redacts the record.
        decisions: step name -> a decision to impose (`{"support": {"route": "billing"}}`).
    """

    def __init__(self, store: CheckpointStore, run_id: str, *, program=None, origin: dict | None = None,
                 restore_from: dict | None = None, privacy: PrivacyPolicy | None = None,
                 decisions: dict[str, dict] | None = None):
        self.store, self.run_id, self.program, self.origin = store, run_id, program, origin
        self.decisions = dict(decisions or {})  # step name -> a decision to impose (replay --route ...)
        self.privacy = privacy
        self._scope: PrivacyScope | None = None
        self.restorable = {step["key"]: step for step in (restore_from or {}).get("steps", [])}
        self._restorable_order = list(self.restorable)
        self.record: dict | None = None
        self.failed_at: str | None = None
        self.write_seconds = 0.0  # time spent writing checkpoints (benchmarks/checkpoint_overhead.py)
        self._lock = threading.Lock()  # fan-out branches finish stages concurrently

    def _save(self, step: dict | None = None) -> None:
        with self._lock:
            if step is not None:
                self.record["steps"].append(step)
                self.record["position"] = len(self.record["steps"])
            start = time.perf_counter()
            self.store.save(self.record)
            self.write_seconds += time.perf_counter() - start

    @contextmanager
    def request(self, run: Run, inputs: dict):
        """Wraps the top-level call: the record is written when it starts, fails or completes."""
        if self.record is not None:  # a nested top-level call (a program inside a program) is part of this run
            yield
            return
        with protecting(self.privacy):  # the run's stages (and other observers) find the policy
            with self._request(run, inputs):
                yield

    @contextmanager
    def _request(self, run: Run, inputs: dict):
        run.run_id = self.run_id
        self._scope = scope = privacy_scope(self.privacy)
        inputs = {k: jsonable(v) for k, v in inputs.items()}
        self.record = {"run_id": self.run_id, "status": "running", "program": self.origin,
                       "models": model_names(self.program) if self.program is not None else {},
                       "inputs": scope.record(inputs) if scope is not None else inputs,
                       "context": [private_section(scope, section_record(s))  # the inputs
                                   for s in run.context.sections.values()],
                       "steps": [], "position": 0,
                       "error": None, "outputs": None, "request_id": run.request_id}
        self._save()
        try:
            yield
        except BaseException as exc:
            message = redact(str(exc))
            self.record.update(status="failed", position=len(self.record["steps"]),
                               error={"stage": self.failed_at, "type": type(exc).__name__,
                                      "message": (scope.text(message) if scope is not None else message)[:2000]})
            self._save()
            raise
        outputs = {k: jsonable(v) for k, v in (run.outputs or {}).items()}
        self.record.update(status="completed", position=len(self.record["steps"]),
                           outputs=scope.record(outputs) if scope is not None else outputs)
        self._save()

    def restore(self, event: StageEvent) -> dict | None:
        """The stored outputs of this stage execution, its sections restored into the run, or None."""
        step = self.restorable.get(event.key)
        if step is None:
            return None
        for section in step["sections"]:
            event.run.context.add(section_from(section))
        event.run.log(StageRun(event.stage.name, step.get("model"), step.get("received", []),
                               [s["source"] + "." + s["name"] for s in step["sections"]],
                               [f"restored from the checkpoint of run {self.run_id}"]))
        if self.record is not None:
            self._save(private_step(self._scope, step))
        return typed_outputs(event.stage, step["outputs"])

    @contextmanager
    def stage(self, event: StageEvent):
        """Wraps a stage execution; when it is done (and not skipped), a checkpoint is written."""
        start = time.perf_counter()
        before = len(event.run.ledger)
        try:
            yield
        except BaseException:
            self.failed_at = self.failed_at or event.key
            raise
        if event.stage.name in event.run.degraded:
            return  # a stage skipped by a resilience policy is not done: a resume runs it again
        records = [r for r in event.run.ledger.records[before:] if r.stage == event.stage.name]
        log = event.log or StageRun(event.stage.name, None, [], [])
        self._save(private_step(self._scope, {
            "key": event.key, "stage": event.stage.name, "model": log.model,
            "outputs": jsonable(event.outputs), "sections": [section_record(s) for s in event.added],
            "received": log.received, "notes": log.notes, "tokens_saved": log.tokens_saved,
            "input_tokens": sum(r.input_tokens for r in records),
            "output_tokens": sum(r.output_tokens for r in records),
            "cost_usd": sum(r.cost_usd for r in records), "calls": len(records),
            "latency_s": time.perf_counter() - start,
        }))


    def restore_step(self, event: StepEvent) -> dict | None:
        """A stored route's or retrieval's outputs, or None.

        Its sections, and those of the steps it wrapped, are restored into the run.
        """
        step = self.restorable.get(event.key)
        if step is None or event.kind not in ("route", "retrieve"):  # the others' stages restore themselves
            return None
        # The steps it wrapped (a router's decision stage) are restored with it: they are not run again.
        position = self._restorable_order.index(event.key)
        for key in self._restorable_order[step.get("began_at", position):position] + [event.key]:
            for section in self.restorable[key]["sections"]:
                event.run.context.add(section_from(section))
            if self.record is not None:
                self._save(private_step(self._scope, self.restorable[key]))
        return step["outputs"]

    def force(self, event: StepEvent) -> dict | None:
        """The decision imposed on this step by name (`decisions`), or None."""
        return self.decisions.get(event.name)

    @contextmanager
    def step(self, event: StepEvent):
        """Wraps a step that is not a model call; when it is done, a checkpoint is written."""
        if self.record is None:
            yield
            return
        start, began_at = time.perf_counter(), len(self.record["steps"])  # the steps it wraps come first
        yield
        self._save(private_step(self._scope, {
            "key": event.key, "stage": event.name, "kind": event.kind, "model": None, "began_at": began_at,
            "decision": jsonable(event.decision), "outputs": jsonable(event.outputs or {}),
            "sections": [section_record(s) for s in event.added], "received": event.reads, "notes": [],
            "tokens_saved": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "calls": 0,
            "latency_s": time.perf_counter() - start,
        }))


def origin_of(program) -> dict | None:
    """How to rebuild `program`: set by `stagewise.load` (an export) or given to `run`."""
    return getattr(program, "stagewise_origin", None)


def run(program, inputs: dict, *, store: str | CheckpointStore | None = None, run_id: str | None = None,
        origin: dict | None = None, privacy: PrivacyPolicy | None = None):
    """Call `program(**inputs)` with a checkpoint after every stage; the prediction has `run_id`.

    `origin` (`{"factory": "module:function", "kwargs": {}}`) lets `resume` and
    `stagewise replay` rebuild the program without it being passed in, from a factory they trust (`rebuild`).
    `privacy` redacts what the run keeps (checkpoints, and the context store, spans and log records
    of observers around it: see `stagewise.runtime.privacy`); the program sees `inputs` as given.

    Args:
        program (dspy.Module): a stagewise program or a plain DSPy program.
        inputs: the request's input fields.
        store: a checkpoint store, or its URL (default: `sqlite:///stagewise-runs.db`).
        run_id: the run's id (default: 16 random hex digits).
        origin: how to rebuild the program (default: what `stagewise.load` recorded on it).
        privacy: the policy that redacts what the run keeps.

    Returns:
        (dspy.Prediction): the program's prediction, with the run's id as `run_id`.

    Examples:
        A one-stage program on a recorded model (it replays an outcome table, offline), run with a
        checkpoint in a temporary SQLite store, then its record read back:

        >>> import shutil
        >>> import tempfile
        >>> import dspy
        >>> from stagewise.data import OutcomeTable
        >>> from stagewise.models import get_lm
        >>> from stagewise.programs import Stage
        >>> from stagewise.runtime import open_checkpoints, run
        >>> table = OutcomeTable.load("data/routerbench/arc_challenge_test.csv")
        >>> program = Stage("answer", "prompt -> answer",
        ...                 lm=get_lm("recorded/gpt-4-1106-preview", replay_table=table))
        >>> folder = tempfile.mkdtemp()
        >>> store = f"sqlite:///{folder}/runs.db"
        >>> with dspy.context(adapter=dspy.JSONAdapter()):
        ...     prediction = run(program, {"prompt": table.prompts[0]}, store=store, run_id="first")
        >>> prediction.answer, prediction.run_id
        ('A', 'first')
        >>> checkpoints = open_checkpoints(store)
        >>> record = checkpoints.load("first")
        >>> record["status"], [step["stage"] for step in record["steps"]], record["outputs"]
        ('completed', ['answer'], {'answer': 'A'})
        >>> checkpoints.close()
        >>> shutil.rmtree(folder)
    """
    with _opened(store) as store:
        run_id = run_id or uuid.uuid4().hex[:16]
        checkpointer = Checkpointer(store, run_id, program=program, origin=origin or origin_of(program),
                                    privacy=privacy)
        with protecting(privacy), observing(checkpointer):
            prediction = observed_call(program, inputs)
    object.__setattr__(prediction, "run_id", run_id)
    return prediction


@contextmanager
def _opened(store: str | CheckpointStore | None):
    """The store itself, or one opened from a URL for this call (and closed after it)."""
    if store is not None and not isinstance(store, str):
        yield store
        return
    opened = open_checkpoints(store)
    try:
        yield opened
    finally:
        opened.close()


def rebuild(record: dict, models: dict[str, str] | None = None, *, factory=None, trust_code: bool = False):
    """The program of a checkpointed run, with its stages' models (`models` overrides some).

    A run's record names how its program was built, but a name read from a runs store is never
    imported on its own word: the factory must be passed (`factory`), registered as an entry
    point, or trusted explicitly (`trust_code`), as for [`stagewise.load`][stagewise.load].
    """
    from stagewise.optimize.export import load
    from stagewise.optimize.trust import trusted_factory

    origin = record.get("program")
    if not origin:
        raise CheckpointError(f"run {record['run_id']!r} does not say how to rebuild its program: pass the "
                              "program, or run it with origin={'factory': 'module:function'}")
    if "export" in origin:
        program = load(origin["export"], factory=factory, trust_code=trust_code)
    else:
        build = trusted_factory(origin["factory"], where=f"run {record['run_id']!r}", factory=factory,
                                trust_code=trust_code)
        program = build(**origin.get("kwargs", {}))
        wanted = {stage: model for stage, model in record.get("models", {}).items() if model}
        if wanted:
            set_models(program, wanted)
    if models:
        set_models(program, models)
    return program


def resume(run_id: str, *, store: str | CheckpointStore | None = None, program=None, factory=None,
           trust_code: bool = False, privacy: PrivacyPolicy | None = None):
    """Run a checkpointed run again from its checkpoint: completed stages are restored, not called.

    The program is `program`, or rebuilt as `rebuild` says (`factory`, `trust_code`).
    `privacy` as for [`run`][stagewise.runtime.run]; a run stored under a policy resumes from its redacted inputs.

    Args:
        run_id: the run to resume.
        store: the checkpoint store, or its URL (default: `sqlite:///stagewise-runs.db`).
        program (dspy.Module | None): the program (default: rebuilt from the run's record).
        factory (Callable | str | None): a trusted factory to rebuild the program with.
        trust_code: rebuild an exported program from its directory's own code.
        privacy: the policy that redacts what the resumed run keeps.

    Returns:
        (dspy.Prediction): the program's prediction, with the run's id as `run_id`.

    Raises:
        UnknownRunError: the store has no run `run_id`.
        CheckpointError: the program is not given and the record does not say how to rebuild it.
    """
    with _opened(store) as store:
        record = store.load(run_id)
        program = program if program is not None else rebuild(record, factory=factory, trust_code=trust_code)
        checkpointer = Checkpointer(store, run_id, program=program, origin=record.get("program"),
                                    restore_from=record, privacy=privacy)
        with protecting(privacy), observing(checkpointer):
            prediction = observed_call(program, record["inputs"])
    object.__setattr__(prediction, "run_id", run_id)
    return prediction


class RunReplayError(ConfigError, LookupError):
    """A replay of a stored run names a stage or a value the run does not have."""

    def __str__(self) -> str:
        return self.args[0]


def replay(run_id: str, stage: str, *, store: str | CheckpointStore | None = None,
           overrides: dict[str, str] | None = None, models: dict[str, str] | None = None, program=None,
           factory=None, trust_code: bool = False, privacy: PrivacyPolicy | None = None,
           decisions: dict[str, dict] | None = None, demos: dict[str, list[dict]] | None = None):
    """Run a stored run again from `stage`, with changes.

    Earlier stages' stored outputs are reused; the stage and everything after it run for real,
    with `overrides` (an input field, or a section id an earlier stage or step produced, a
    retrieved passage included, to a new value),
    `models` (stage -> model) and `decisions` (a router or cascade's name -> the decision it
    must take: `{"support": {"route": "billing"}}`, `{"verify": {"accept": True}}` or
    `{"escalate": True}`) and `demos` (stage -> the few-shot examples it gets instead of its own,
    each a dict of its fields). `stage` may name a router, a retrieval or a cascade too.
    The program is `program`, or rebuilt as `rebuild` says (`factory`, `trust_code`).

    Returns `(original record, prediction, new record)`; the new run's id is
    `<run_id>-replay-<n>`. `privacy` as for [`run`][stagewise.runtime.run] (the new run's record is redacted).

    Raises:
        UnknownRunError: the store has no run `run_id`.
        RunReplayError: the run has no such stage, router or cascade, or an override names neither an
            input nor a section produced before `stage`.
    """
    with _opened(store) as store:
        return _replay(store, run_id, stage, overrides, models, program,
                       {"factory": factory, "trust_code": trust_code}, privacy, decisions, demos)


def _replay(store: CheckpointStore, run_id: str, stage: str, overrides, models, program, trust: dict,
            privacy: PrivacyPolicy | None = None, decisions: dict[str, dict] | None = None,
            demos: dict[str, list[dict]] | None = None):
    import copy

    original = store.load(run_id)
    names = list(dict.fromkeys(step["stage"] for step in original["steps"]))
    position = next((i for i, step in enumerate(original["steps"]) if stage in (step["stage"], step["key"])), None)
    if position is None:
        raise RunReplayError(f"run {run_id!r} has no stage {stage!r} (its stages: {', '.join(names) or 'none'})")
    # A step that wraps others (a fan-out's branches, a cascade's tiers, a router's decision stage) is
    # recorded when it ends: replaying from it starts where it began.
    position = min(position, original["steps"][position].get("began_at", position))
    if original["steps"][position].get("kind") == "retrieve":
        # From a retrieval: its passages are kept (and may be edited, as `passage_2` or `retrieve.passage_2`);
        # everything after it runs again.
        named = original["steps"][position]["stage"]
        overrides = {(f"{named}.{target}" if "." not in target and target not in original["inputs"] else target): value
                     for target, value in (overrides or {}).items()}
        position += 1
    for name, decision in (decisions or {}).items():
        kind = "route" if "route" in decision else "cascade"
        if not any(step["stage"] == name and step.get("kind") == kind for step in original["steps"]):
            known = sorted({step["stage"] for step in original["steps"] if step.get("kind") == kind})
            raise RunReplayError(f"run {run_id!r} has no {'router' if kind == 'route' else 'cascade'} {name!r} "
                                 f"(its {'routers' if kind == 'route' else 'cascades'}: {', '.join(known) or 'none'})")
    earlier = copy.deepcopy(original["steps"][:position])
    inputs = dict(original["inputs"])
    for target, value in (overrides or {}).items():
        if target in inputs:
            inputs[target] = value
            continue
        found = False
        for step in earlier:
            for section in step["sections"]:
                if f"{section['source']}.{section['name']}" == target:
                    section["content"], found = value, True
                    if section["source"] == step["stage"] and section["name"] in step["outputs"]:
                        step["outputs"][section["name"]] = value
                    rank = section["name"].removeprefix("passage_")
                    if step.get("kind") == "retrieve" and rank.isdigit():  # the passages list too
                        step["outputs"]["passages"][int(rank) - 1] = value
        if not found:
            available = list(inputs) + [f"{s['source']}.{s['name']}" for step in earlier for s in step["sections"]]
            raise RunReplayError(f"--set {target}: neither an input of run {run_id!r} nor a section produced before "
                              f"stage {stage!r} (available: {', '.join(available)})")
    if program is None:
        program = rebuild(original, models, **trust)
    elif models:
        set_models(program, models)
    if demos:
        set_demos(program, demos)
    number = 1
    while store._latest(f"{run_id}-replay-{number}") is not None:
        number += 1
    new_id = f"{run_id}-replay-{number}"
    checkpointer = Checkpointer(store, new_id, program=program, origin=original.get("program"),
                                restore_from={"steps": earlier}, privacy=privacy, decisions=decisions)
    with protecting(privacy), observing(checkpointer):
        prediction = observed_call(program, inputs)
    object.__setattr__(prediction, "run_id", new_id)
    return original, prediction, store.load(new_id)


def output_changes(original: dict, replayed: dict) -> list[tuple[str, str, str, str]]:
    """(stage key, field, before, after) for every stage output and final output that differs."""
    before = {step["key"]: step["outputs"] for step in original["steps"]}
    changes = []
    for step in replayed["steps"]:
        old = before.get(step["key"], {})
        for name, value in step["outputs"].items():
            if old.get(name) != value:
                changes.append((step["key"], name, _show(old.get(name)), _show(value)))
    for name, value in (replayed.get("outputs") or {}).items():
        old = (original.get("outputs") or {}).get(name)
        if old != value:
            changes.append(("(final)", name, _show(old), _show(value)))
    return changes


def _show(value) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 200 else text[:197] + "..."
