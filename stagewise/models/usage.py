"""Usage and cost accounting: one record per model call, whatever the engine.

Every call through a `StagewiseLM` produces a
[`UsageRecord`][stagewise.models.UsageRecord] (model, stage, request, tokens, latency, cost, cache hit). Records go
to the LM's own ledger and to every ledger opened with [`track_usage`][stagewise.models.track_usage] around the
call, so a run, a request or a test can collect exactly the calls made inside it.
Ledgers add records up per stage, per request and per model, and read as a DataFrame.

Stage and request names come from context: programs wrap each stage in
`stage_scope(name)` and each request in `request_scope(id)`. The scopes are context
variables, so they follow `contextvars.copy_context()` into worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

import pandas as pd

_stage: ContextVar[str | None] = ContextVar("stagewise_stage", default=None)
_request: ContextVar[str | None] = ContextVar("stagewise_request", default=None)
_ledgers: ContextVar[tuple[UsageLedger, ...]] = ContextVar("stagewise_ledgers", default=())
_capture: ContextVar[bool] = ContextVar("stagewise_capture_content", default=False)


@dataclass(frozen=True)
class UsageRecord:
    """One model call.

    `cost_usd` is the call's nominal cost; a cache hit (answered from DSPy's cache, no model called)
    keeps the nominal tokens and cost of the call it replays, and `spent_usd` is what was actually
    spent (zero for a cache hit).
    """

    model: str
    engine: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float | None
    cache_hit: bool
    token_source: str  # "llama.cpp", "provider", or the tiktoken encoding that counted
    cost_source: str  # "notional", "litellm", "explicit", "recorded" or "unpriced"
    stage: str | None = None
    request_id: str | None = None
    timestamp: float = field(default_factory=time.time)  # when the call ended (seconds since the epoch)
    provider: str | None = None  # the catalog's provider ("local", "openai", "replay", ...)
    content: dict | None = None  # the prompt and response, only inside `capturing_content()`

    @property
    def spent_usd(self) -> float:
        """What the call actually cost: zero for a cache hit or an unpriced call, else `cost_usd`."""
        return 0.0 if self.cache_hit else (self.cost_usd or 0.0)


class UsageLedger:
    """A thread-safe list of usage records with totals per stage, request and model."""

    def __init__(self) -> None:
        self._records: list[UsageRecord] = []
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> UsageLedger:
        return self  # DSPy deep-copies programs and their LMs: the copies account into one ledger

    def add(self, record: UsageRecord) -> None:
        """Append `record`."""
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[UsageRecord]:
        """A copy of the records, in the order they were added."""
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per record: its fields and `spent_usd`."""
        columns = [*UsageRecord.__dataclass_fields__, "spent_usd"]
        return pd.DataFrame([{**asdict(r), "spent_usd": r.spent_usd} for r in self.records], columns=columns)

    def totals(self, by: str | list[str] | None = None) -> pd.DataFrame:
        """Calls, tokens, latency, nominal cost and spending summed per `by` (`stage`, `request_id`, `model`)."""
        frame = self.to_dataframe()
        frame["calls"] = 1
        frame["cache_hits"] = frame["cache_hit"].astype(int)
        sums = ["calls", "cache_hits", "input_tokens", "output_tokens", "latency_s", "cost_usd", "spent_usd"]
        if by is None:
            return frame[sums].sum(min_count=1).to_frame().T
        return frame.groupby(by, dropna=False)[sums].sum(min_count=1)

    @property
    def total_cost(self) -> float:
        """Nominal cost of every call recorded (cache hits at the cost of the call they replay)."""
        return sum(r.cost_usd or 0.0 for r in self.records)

    @property
    def total_spent(self) -> float:
        """What was actually spent: cache hits are free."""
        return sum(r.spent_usd for r in self.records)


def record(entry: UsageRecord, own: UsageLedger | None = None) -> None:
    """Send a record to `own` (the LM's ledger) and to every ledger open in this context."""
    if own is not None:
        own.add(entry)
    for ledger in _ledgers.get():
        if ledger is not own:
            ledger.add(entry)


@contextmanager
def track_usage(ledger: UsageLedger | None = None) -> Iterator[UsageLedger]:
    """Collect the records of every call made inside the block (in this context)."""
    ledger = ledger if ledger is not None else UsageLedger()  # an empty ledger is falsy
    token = _ledgers.set((*_ledgers.get(), ledger))
    try:
        yield ledger
    finally:
        _ledgers.reset(token)


@contextmanager
def stage_scope(name: str) -> Iterator[None]:
    """Model calls inside the block are recorded under stage `name`."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Model calls inside the block are recorded under request `request_id`."""
    token = _request.set(request_id)
    try:
        yield
    finally:
        _request.reset(token)


STAGE_MARK = "_stagewise_stage"  # set on a plain DSPy predictor: the stage its calls are accounted under


def current_stage() -> str | None:
    """The stage a model call made now belongs to, or None.

    That is the innermost stagewise stage running, else the innermost marked plain predictor
    among DSPy's calling modules (see `stages_of`).
    """
    name = _stage.get()
    if name is not None:
        return name
    from stagewise.models._dspy_compat import caller_modules  # imports DSPy: keep `import stagewise.models` light

    for module in reversed(caller_modules()):
        name = getattr(module, STAGE_MARK, None)
        if name is not None:
            return name
    return None


def current_request() -> str | None:
    """The request id of the innermost `request_scope`, or None."""
    return _request.get()


@contextmanager
def capturing_content() -> Iterator[None]:
    """Calls in this block keep their prompt and response on their usage record (opt-in: tracing)."""
    token = _capture.set(True)
    try:
        yield
    finally:
        _capture.reset(token)


def capture_enabled() -> bool:
    """Whether calls made now keep their prompt and response (inside `capturing_content()`)."""
    return _capture.get()
