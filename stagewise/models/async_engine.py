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
    """Wraps a sync [`Engine`][stagewise.models.engine.Engine]: `await complete(request)` runs
    `engine.complete` in a thread.
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def supports_response_schema(self) -> bool:
        return getattr(self.engine, "supports_response_schema", False)

    @property
    def supported_params(self) -> frozenset[str]:
        return getattr(self.engine, "supported_params", frozenset())

    async def complete(self, request):
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request) -> AsyncIterator:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release: the wrapped engine is borrowed."""

    def __deepcopy__(self, memo):
        return self

    def dump_state(self) -> dict:
        return {"engine": dump_engine(self.engine, "engine")}

    @classmethod
    def load_state(cls, state: dict) -> ThreadedAsyncEngine:
        # Only reached when the caller allowed custom engine classes (allow_unsafe_lm_state=True).
        return cls(load_engine(state["engine"], "engine"))
