"""The state of one request while a program runs: its context, usage ledger and stage log.

A top-level program call opens a [`Run`][stagewise.programs.Run]; nested programs and stages find it through a
context variable, so a route can be a chain and a fan-out branch a cascade without passing
state around. Fan-out branches run in worker threads with a copy of the context variables
and a forked run (their own copy of the context), merged back when they finish.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from stagewise.context.record import INPUT, Context, Section
from stagewise.models.usage import UsageLedger, request_scope, track_usage


@dataclass
class StageRun:
    """What one stage saw and did in a request (for the trace)."""

    stage: str
    model: str | None
    received: list[str]  # ids of the sections it got, after budget transforms
    produced: list[str]
    notes: list[str] = field(default_factory=list)  # compression / truncation, with token counts
    tokens_saved: int = 0


@dataclass
class Run:
    """One request's state while a program runs: its context, usage ledger and stage log.

    A [`Pipeline`][stagewise.programs.Pipeline] subclass's `execute(run)` reads and adds sections
    through `run.context` and logs what each stage did with `run.log`.
    """

    request_id: str
    context: Context
    ledger: UsageLedger
    stages: list[StageRun] = field(default_factory=list)
    executions: dict[str, int] = field(default_factory=dict)  # stage name -> times it ran (stage_key)
    run_id: str | None = None  # a checkpointed run's id (set by the runtime layer)
    outputs: dict | None = None  # the top-level program's outputs, once it has finished
    degraded: list[str] = field(default_factory=list)  # stages skipped after their models failed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self, stage_run: StageRun) -> None:
        """Append what a stage did to the stage log (thread-safe)."""
        with self._lock:
            self.stages.append(stage_run)

    def fork(self, context: Context | None = None) -> Run:
        """A run over `context` (default: a copy of this one's), sharing the ledger and the stage log."""
        forked = Run(self.request_id, self.context.copy() if context is None else context, self.ledger, self.stages,
                     self.executions, self.run_id, degraded=self.degraded)
        forked._lock = self._lock
        return forked


_current: ContextVar[Run | None] = ContextVar("stagewise_run", default=None)


def current_run() -> Run | None:
    """The run of the program call in progress in this context, or None."""
    return _current.get()


@contextmanager
def use_run(run: Run) -> Iterator[Run]:
    """Make `run` the current run inside this block."""
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)


# --- observers: execution-time layers (checkpoints, tracing, a shared store) -------------------

@dataclass
class StageEvent:
    """One execution of a stage in a run, as observers see it.

    `key` tells repeated executions of one stage apart (`name#0`, `name#1`). The stage
    fills `outputs`, `added` (the sections it added to the context) and `log` before the
    observers' `stage` context managers exit.
    """

    stage: Any
    run: Run
    key: str
    outputs: dict | None = None
    added: list[Section] = field(default_factory=list)
    log: StageRun | None = None
    cache_key: str | None = None  # set by a stage cache that missed, to store the result under
    restored_by: str | None = None  # the observer (class name) whose stored result stood in for the call


StepKind = Literal["route", "retrieve", "fanout", "cascade", "plan"]  # the kinds of StepEvent


@dataclass
class StepEvent:
    """One execution of a step that is not a stage's model call, as observers see it.

    The step is a router's decision (`kind="route"`), a retrieval (`"retrieve"`), a fan-out's
    branches and their aggregation (`"fanout"`), a cascade's acceptance (`"cascade"`) or a
    hierarchy's plan (`"plan"`).

    `key` is `<kind>:<name>#n`. The step fills `decision` (what it decided and why: the
    route with the classifier's probabilities, the scores against the threshold, the votes),
    `outputs` and `added` (the sections it produced) before the observers' `step` context
    managers exit.
    """

    owner: Any
    run: Run
    kind: StepKind
    key: str
    reads: list[str] = field(default_factory=list)
    decision: dict = field(default_factory=dict)
    outputs: dict | None = None
    added: list[Section] = field(default_factory=list)
    restored: dict | None = None  # outputs an observer restored (a resumed or replayed run): the step reuses them
    forced: dict | None = None  # a decision an observer imposes (`replay --route`, `--accept`, `--escalate`)

    @property
    def name(self) -> str:
        """The owner's name (its class name if it has none)."""
        return getattr(self.owner, "name", type(self.owner).__name__)


class Observer:
    """Base class of the execution-time layers a program run reports to (all hooks optional)."""

    def restore(self, event: StageEvent) -> dict | None:
        """The stage's outputs to reuse instead of running it (the observer restores its sections), or None."""
        return None

    @contextmanager
    def stage(self, event: StageEvent) -> Iterator[None]:
        """Wraps one stage execution; an exception from the stage passes through it."""
        yield

    @contextmanager
    def request(self, run: Run, inputs: dict) -> Iterator[None]:
        """Wraps one top-level program call."""
        yield

    @contextmanager
    def step(self, event: StepEvent) -> Iterator[None]:
        """Wraps one step that is not a model call (a route decision, a retrieval, an aggregation...)."""
        yield

    def restore_step(self, event: StepEvent) -> dict | None:
        """A route's or a retrieval's stored outputs to reuse (the observer restores its sections), or None."""
        return None

    def force(self, event: StepEvent) -> dict | None:
        """A decision to impose on this step (`{"route": "billing"}`, `{"accept": True}`), or None."""
        return None


_observers: ContextVar[tuple[Observer, ...]] = ContextVar("stagewise_observers", default=())


def observers() -> tuple[Observer, ...]:
    """The observers program calls report to in this context, outermost first."""
    return _observers.get()


@contextmanager
def observing(*added: Observer) -> Iterator[None]:
    """Program calls inside this block report to `added` (on top of any already observing)."""
    token = _observers.set((*_observers.get(), *added))
    try:
        yield
    finally:
        _observers.reset(token)


class CallGuard:
    """Decides how a stage's model call is made (retries, fallbacks, limits, budgets).

    The runtime's resilience layer implements it. This base class makes one attempt on the stage's own model.
    """

    def call(self, stage: Any, run: Run, attempt: Callable[[Any], dict]) -> dict:
        """The stage's outputs, from one or more calls of `attempt`.

        Args:
            stage: the stage to call.
            run: the request's run.
            attempt: runs the stage on a model and returns its outputs (None: the stage's own model).
        """
        return attempt(None)


_guard: ContextVar[CallGuard | None] = ContextVar("stagewise_guard", default=None)


def current_guard() -> CallGuard | None:
    """The guard stage calls go through in this context, or None."""
    return _guard.get()


@contextmanager
def guarding(guard: CallGuard | None) -> Iterator[None]:
    """Stage calls inside this block go through `guard`."""
    token = _guard.set(guard)
    try:
        yield
    finally:
        _guard.reset(token)


@contextmanager
def stepping(run: Run, owner: Any, kind: StepKind, reads: list[str] | tuple[str, ...] = ()) -> Iterator[StepEvent]:
    """Report one step of `owner` (a Router, Retrieve, FanOut, Cascade or Hierarchy) to the observers.

    The step fills the event it gets; the event carries what an observer restored or forced.
    """
    event = StepEvent(owner, run, kind, stage_key(run, f"{kind}:{getattr(owner, 'name', kind)}"), list(reads))
    watchers = observers()
    restorer = None
    for watcher in watchers:
        event.restored = watcher.restore_step(event)
        if event.restored is not None:
            restorer = watcher
            break
    event.forced = next((forced for watcher in watchers if (forced := watcher.force(event))), None)
    with ExitStack() as stack:
        for watcher in watchers:
            if watcher is not restorer:  # the others see a restored step too (a new checkpoint records it)
                stack.enter_context(watcher.step(event))
        yield event


def stage_key(run: Run, name: str) -> str:
    """`name#n`: the n-th execution of stage `name` in this run."""
    with run._lock:
        count = run.executions.get(name, 0)
        run.executions[name] = count + 1
    return f"{name}#{count}"


# Request inputs with these names are the request itself (kind "query": never compressed);
# other inputs are material supplied with it (kind "retrieved": compressible to fit a budget).
QUERY_FIELDS = ("query", "question", "prompt", "message", "ticket", "task")


@contextmanager
def open_run(inputs: dict, count) -> Iterator[Run]:
    """A new run whose context holds the request's inputs as sections `input.<field>`."""
    context = Context()
    for name, value in inputs.items():
        text = value if isinstance(value, str) else str(value)
        kind = "query" if name in QUERY_FIELDS else "retrieved"
        context.add(Section(name=name, kind=kind, source=INPUT, content=text, tokens=count(text)))
    request_id = uuid.uuid4().hex[:12]
    with track_usage() as ledger, request_scope(request_id):
        run = Run(request_id, context, ledger)
        with use_run(run), ExitStack() as watchers:
            for watcher in observers():
                watchers.enter_context(watcher.request(run, inputs))
            yield run
