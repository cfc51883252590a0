"""The state of one request while a program runs: its context, usage ledger and stage log.

A top-level program call opens a :class:`Run`; nested programs and stages find it through a
context variable, so a route can be a chain and a fan-out branch a cascade without passing
state around. Fan-out branches run in worker threads with a copy of the context variables
and a forked run (their own copy of the context), merged back when they finish.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

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
    request_id: str
    context: Context
    ledger: UsageLedger
    stages: list[StageRun] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self, stage_run: StageRun) -> None:
        with self._lock:
            self.stages.append(stage_run)

    def fork(self, context: Context | None = None) -> Run:
        """A run over ``context`` (default: a copy of this one's), sharing the ledger and the stage log."""
        forked = Run(self.request_id, self.context.copy() if context is None else context, self.ledger, self.stages)
        forked._lock = self._lock
        return forked


_current: ContextVar[Run | None] = ContextVar("stagewise_run", default=None)


def current_run() -> Run | None:
    return _current.get()


@contextmanager
def use_run(run: Run) -> Iterator[Run]:
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)


# Request inputs with these names are the request itself (kind "query": never compressed);
# other inputs are material supplied with it (kind "retrieved": compressible to fit a budget).
QUERY_FIELDS = ("query", "question", "prompt", "message", "ticket", "task")


@contextmanager
def open_run(inputs: dict, count) -> Iterator[Run]:
    """A new run whose context holds the request's inputs as sections ``input.<field>``."""
    context = Context()
    for name, value in inputs.items():
        text = value if isinstance(value, str) else str(value)
        kind = "query" if name in QUERY_FIELDS else "retrieved"
        context.add(Section(name=name, kind=kind, source=INPUT, content=text, tokens=count(text)))
    request_id = uuid.uuid4().hex[:12]
    with track_usage() as ledger, request_scope(request_id):
        run = Run(request_id, context, ledger)
        with use_run(run):
            yield run
