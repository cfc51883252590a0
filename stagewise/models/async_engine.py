"""An async face for stagewise's in-process engines, so `await lm.acall(...)` works.

DSPy awaits `async_engine.complete` on its async path. The local and replay engines do
their work synchronously (llama.cpp, a table lookup), so the async engine runs it in a
worker thread; the event loop stays free while a model generates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from stagewise.models._dspy_compat import dump_engine, load_engine, response_to_events
from stagewise.models.engine import Engine


class ThreadedAsyncEngine:
    """An async engine over a sync [`Engine`][stagewise.models.engine.Engine].

    `await complete(request)` runs `engine.complete` in a thread.

    Args:
        engine: the sync engine to wrap; it is borrowed, not closed by `aclose`.
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def supports_response_schema(self) -> bool:
        """Whether the wrapped engine supports a response schema (False if it does not say)."""
        return getattr(self.engine, "supports_response_schema", False)

    @property
    def supported_params(self) -> frozenset[str]:
        """The request parameters the wrapped engine supports (none if it does not say)."""
        return getattr(self.engine, "supported_params", frozenset())

    async def complete(self, request):
        """The wrapped engine's response to `request`, computed in a worker thread."""
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request) -> AsyncIterator:
        """The events of the complete response, yielded once it is computed (no token streaming)."""
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release: the wrapped engine is borrowed."""

    def __deepcopy__(self, memo):
        return self

    def dump_state(self) -> dict:
        """A JSON-able state: the wrapped engine's dumped state."""
        return {"engine": dump_engine(self.engine, "engine")}

    @classmethod
    def load_state(cls, state: dict) -> ThreadedAsyncEngine:
        """The engine `dump_state` describes."""
        # Only reached when the caller allowed custom engine classes (allow_unsafe_lm_state=True).
        return cls(load_engine(state["engine"], "engine"))
