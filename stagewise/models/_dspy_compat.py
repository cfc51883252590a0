"""The one place stagewise touches DSPy internals; verified against DSPy 3.4.1.

Every other stagewise module imports these names from here, so a DSPy upgrade has one file
to check, and `tests/test_dspy_compat.py` (one test per name below) says what changed.
What each touched internal is for:

- `dspy.lm15`: `Request`/`Response`/`Message`/`Usage`, `InvalidRequestError` and
  `response_to_events`: the types of DSPy 3.4's engine protocol (`complete(Request) -> Response`).
  The local and replay engines build Responses (text, finish reason, usage, and
  `provider_data` carrying a recorded cost); `InvalidRequestError` reaches the caller as
  DSPy's `LMInvalidRequestError`; `response_to_events` turns one Response into the stream
  events `stream(request)` returns. DSPy calls `dspy.lm15` public, but it re-exports a
  vendored library and is marked for change in 3.5.
- `dspy.clients.engines.base.validate_request`: the check DSPy's own engines run on a
  request (a `Request`, no execution controls among its extensions).
- `dspy.clients.execution` (`prepare`, `execute`, `aexecute`, `finalize`,
  `IGNORED_CACHE_KEYS`): the steps of `dspy.BaseLM.__call__`/`acall`.
  `StagewiseLM` runs the same steps with a clock and a usage record
  around `execute`; it reads the prepared call (`managed`, `cache`, `prompt`,
  `messages`, `legacy`, `key(lm, asynchronous)`) and the call result (`responses`,
  `outputs`, `usage`, `raw`, `cache_hit`), and keeps token counts beside cached answers
  with `dspy.cache.get/put(key, IGNORED_CACHE_KEYS)`.
- `dspy.clients._deprecation` (`warn_legacy_lm`, `warn_openai_messages`): the two
  deprecation warnings `BaseLM.__call__` gives, given at the same points by `StagewiseLM`.
- `dspy.clients.legacy_outputs` (`plain`, `value`): read the usage of a cached
  litellm-route answer (an SDK object or a dict) without running pydantic serializers.
- `dspy.clients.lm._dump_engine`/`_load_engine`: how `dspy.LM` saves and loads a custom
  engine (`{"class": "module:QualName", "state": engine.dump_state()}`), used by
  `ThreadedAsyncEngine` for the engine it wraps.
- `dspy.settings.caller_modules`: the modules whose calls are running (DSPy's
  `Module.__call__` keeps it), which attributes a plain DSPy predictor's model calls to a
  stage (`caller_modules`).
"""

from __future__ import annotations

from typing import Any

from dspy.clients._deprecation import warn_legacy_lm, warn_openai_messages
from dspy.clients.engines.base import validate_request
from dspy.clients.execution import IGNORED_CACHE_KEYS, aexecute, execute, finalize, prepare
from dspy.clients.legacy_outputs import plain, value
from dspy.clients.lm import _dump_engine, _load_engine
from dspy.lm15 import InvalidRequestError, Message, Request, Response, Usage, response_to_events

VERIFIED_DSPY_VERSION = "3.4.1"
"""The DSPy version this module (and `tests/test_dspy_compat.py`) was checked against."""

__all__ = [
    "IGNORED_CACHE_KEYS", "VERIFIED_DSPY_VERSION", "InvalidRequestError", "Message", "Request", "Response", "Usage",
    "aexecute", "caller_modules", "dump_engine", "execute", "finalize", "load_engine", "plain", "prepare",
    "response_to_events", "validate_request", "value", "warn_legacy_lm", "warn_openai_messages",
]


def dump_engine(engine: Any, name: str) -> dict:
    """`engine` as `dspy.LM` saves a custom engine: its importable class path and `dump_state()`."""
    return _dump_engine(engine, name)


def load_engine(record: dict, name: str) -> Any:
    """The engine a `dump_engine` record describes (imports its class: trusted records only)."""
    return _load_engine(record, name, allow_custom_lm_class=True)


def caller_modules() -> list:
    """The DSPy modules whose calls are running, outermost first (empty outside any module call)."""
    import dspy

    return list(dspy.settings.caller_modules or [])
