"""The engine contract: what a model engine run in-process by stagewise must do.

The local engine (`LlamaCppEngine`) and the replay engine
(`ReplayEngine`) follow it; a user's engine that follows it
can stand in for either in a `StagewiseLM`, with
`ThreadedAsyncEngine` as its async face.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stagewise.models._dspy_compat import Request, Response

__all__ = ["Engine"]


class Engine(Protocol):
    """A model engine: one request in, one response out (DSPy 3.4's engine protocol), plus what stagewise adds.

    - `complete(request)`: answers one DSPy lm15 `Request` with one lm15 `Response`.
      It checks the request first (`validate_request` of `stagewise.models._dspy_compat`).
      A request it cannot answer (a prompt not recorded, a schema that cannot fit) raises
      `InvalidRequestError`, which reaches the caller as `dspy.LMInvalidRequestError`. It
      does not retry or cache: the LM around it does.
    - Usage: the Response's `usage` has the call's `input_tokens` and `output_tokens`
      (every attempt counted, when the engine tries more than once). Its `provider_data` may
      hold a `"stagewise"` entry with `cost_usd` (a recorded cost, which StagewiseLM accounts
      instead of the catalog price) and `token_source` (what counted the tokens). With no
      token counts, StagewiseLM counts the prompt and the answer with the catalog's tokenizer.
    - `stream(request)`: the same answer as stream events
      (`response_to_events(self.complete(request))`).
    - `close()`: releases what the engine owns (nothing, for an engine whose model or table
      is shared).
    - `supports_response_schema`: True when it honours a request's JSON schema (DSPy's
      JSONAdapter then sends the signature's output fields as one); `supported_params`: the
      request options it reads.
    - Deep copies return the engine itself (`__deepcopy__` returns `self`): DSPy deep-copies
      an LM with every copy of a program, and a loaded model or an outcome table is shared by
      every copy. Threads share it too, so `complete` must be safe to call concurrently.
    - `dump_state()` returns JSON-serializable settings (never a secret) and the classmethod
      `load_state(state)` builds the engine again from them: a saved program records the
      engine's class (defined at module level, so a loader can import it) and this state.

    An engine may also have `tokenize(text) -> list[int]` (its model's own tokenizer), which
    `StagewiseLM.count_tokens` uses when present.
    """

    supports_response_schema: bool
    supported_params: frozenset[str]

    def complete(self, request: Request) -> Response:
        """One response to one request."""
        ...

    def stream(self, request: Request) -> Iterator[Any]:
        """The response to `request` as stream events."""
        ...

    def close(self) -> None:
        """Release what the engine owns."""
        ...

    def __deepcopy__(self, memo: dict) -> Engine:
        """The engine itself: copies of an LM share its engine."""
        ...

    def dump_state(self) -> dict:
        """JSON-serializable settings that rebuild the engine (no secrets)."""
        ...

    @classmethod
    def load_state(cls, state: dict) -> Engine:
        """The engine `dump_state` describes."""
        ...
