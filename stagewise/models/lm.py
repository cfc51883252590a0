"""`StagewiseLM`: a `dspy.LM` built from a catalog entry, that accounts for every call.

One class serves the three kinds of engine: local (llama.cpp, in-process), provider
(any model string DSPy accepts, through DSPy's own engines) and replay (recorded
outcome tables). Whatever the engine, each call produces one
[`UsageRecord`][stagewise.models.usage.UsageRecord] with tokens, latency, cost and cache hit.

Use `get_lm` to build one by catalog name:

```python
lm = get_lm("smollm2-135m")
dspy.configure(lm=lm, adapter=dspy.JSONAdapter())
```
"""

from __future__ import annotations

import os
import time
from typing import Any

import dspy
from dspy.utils.callback import with_callbacks

from stagewise.errors import ConfigError, ModelError
from stagewise.models._dspy_compat import (
    IGNORED_CACHE_KEYS,
    Response,
    aexecute,
    execute,
    finalize,
    plain,
    prepare,
    value,
    warn_legacy_lm,
    warn_openai_messages,
)
from stagewise.models.async_engine import ThreadedAsyncEngine
from stagewise.models.catalog import ModelCatalog, ModelSpec, default_catalog
from stagewise.models.engine import Engine
from stagewise.models.tokens import count_chat_tokens, count_tokens
from stagewise.models.usage import UsageLedger, UsageRecord, capture_enabled, current_request, current_stage, record

STAGEWISE_DATA = "stagewise"  # key of our entry in Response.provider_data


class MissingAPIKeyError(ModelError, RuntimeError):
    """A hosted model's API key variable is not set."""


class StagewiseLM(dspy.LM):
    """A DSPy LM for one catalog entry. `lm.usage` holds the records of its calls.

    `engine`: an [`Engine`][stagewise.models.engine.Engine] (local, replay, or a user's own), or
    an engine selection DSPy accepts (`"auto"`, `"litellm"`) for a provider model.
    """

    def __init__(self, model: str, *, spec: ModelSpec | dict, engine: Engine | str = "auto", **kwargs: Any):
        super().__init__(model, engine=engine, **kwargs)
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec(**spec)  # a dict: from a saved program
        self.usage = UsageLedger()

    # dspy.BaseLM.__call__ and acall (DSPy 3.4.1), with a clock and a usage record around execute().
    @with_callbacks
    def __call__(self, prompt=None, *, messages=None, **kwargs):
        """Call the model as `dspy.LM` does, and add a usage record for the call."""
        call = self._prepared(prepare(self, prompt, messages, kwargs), messages)
        started = time.perf_counter()
        result = execute(self, call)
        self._account(call, result, time.perf_counter() - started)
        return finalize(self, call, result)

    @with_callbacks
    async def acall(self, prompt=None, *, messages=None, **kwargs):
        """Call the model asynchronously as `dspy.LM` does, and add a usage record for the call."""
        import asyncio

        prepared = await asyncio.to_thread(prepare, self, prompt, messages, kwargs, asynchronous=True)
        call = self._prepared(prepared, messages)
        started = time.perf_counter()
        result = await aexecute(self, call)
        self._account(call, result, time.perf_counter() - started)
        return finalize(self, call, result)

    def _prepared(self, call, messages):
        if not call.managed:
            warn_legacy_lm()
        warn_openai_messages(self, messages)
        return call

    def _account(self, call, result, latency_s: float) -> None:
        # A cache hit is recorded at the nominal tokens and cost of the call it replays (what the
        # configuration costs, for optimization), flagged so that spending counts it as free.
        spec = self.spec
        input_tokens, output_tokens, token_source = self._tokens(call, result)
        if call.cache:
            # DSPy drops usage from some cached responses: keep the original counts beside them.
            key = {**call.key(self, False), "_stagewise": "usage"}
            if result.cache_hit:
                stored = dspy.cache.get(key, IGNORED_CACHE_KEYS)
                if stored:
                    input_tokens, output_tokens, token_source = stored
            else:
                dspy.cache.put(key, [input_tokens, output_tokens, token_source], IGNORED_CACHE_KEYS)
        recorded = [r.provider_data.get(STAGEWISE_DATA, {}).get("cost_usd")
                    for r in result.responses if r.provider_data]
        if recorded and all(c is not None for c in recorded):
            cost, cost_source = float(sum(recorded)), "recorded"
        elif spec.input_price is not None and spec.output_price is not None:
            cost, cost_source = spec.cost(input_tokens, output_tokens), spec.catalog_price_source
        else:
            cost, cost_source = None, "unpriced"
        record(UsageRecord(model=spec.name, engine=spec.engine, input_tokens=input_tokens,
                           output_tokens=output_tokens, latency_s=latency_s, cost_usd=cost,
                           cache_hit=bool(result.cache_hit), token_source=token_source, cost_source=cost_source,
                           stage=current_stage(), request_id=current_request(), provider=spec.provider,
                           content=self._content(call, result) if capture_enabled() else None), self.usage)

    @staticmethod
    def _content(call, result) -> dict:
        prompt = call.messages if call.messages is not None else [{"role": "user", "content": str(call.prompt)}]
        outputs = [o if isinstance(o, str) else (o.get("text") if isinstance(o, dict) else str(o))
                   for o in result.outputs]
        return {"messages": prompt, "outputs": outputs}

    def _tokens(self, call, result) -> tuple[int, int, str]:
        usage = result.usage or {}
        if not usage and result.responses:  # a cache hit: the cached responses carry their usage
            counts = [(r.usage.input_tokens, r.usage.output_tokens) for r in result.responses]
            if all(i is not None and o is not None for i, o in counts):
                usage = {"prompt_tokens": sum(i for i, _ in counts), "completion_tokens": sum(o for _, o in counts)}
        if not usage and result.raw is not None and not isinstance(result.raw, Response):
            usage = plain(dict(value(result.raw, "usage", {}) or {}))  # a cache hit on the litellm route
        sources = {r.provider_data.get(STAGEWISE_DATA, {}).get("token_source")
                   for r in result.responses if r.provider_data} - {None}
        if "prompt_tokens" in usage and "completion_tokens" in usage:
            source = (sources.pop() if len(sources) == 1
                      else ("llama.cpp" if self.spec.engine == "llama_cpp" else "provider"))
            return int(usage["prompt_tokens"]), int(usage["completion_tokens"]), source
        # The provider reported no usage: count with the catalog's tokenizer.
        messages = call.legacy.get("messages") or [{"role": "user", "content": call.prompt or ""}]
        prompt = count_chat_tokens([m for m in messages if isinstance(m.get("content"), str)], self.spec.tokenizer)
        outputs = [o if isinstance(o, str) else (o.get("text") or "") for o in result.outputs]
        completion = sum(count_tokens(text, self.spec.tokenizer).tokens for text in outputs)
        return prompt.tokens * max(1, len(outputs)), completion, prompt.encoding

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for this model: its own tokenizer when local, else tiktoken."""
        tokenize = getattr(self.engine, "tokenize", None)
        if callable(tokenize):
            return len(tokenize(text))
        return count_tokens(text, self.spec.tokenizer).tokens

    def copy(self, **kwargs):
        """A copy as `dspy.LM.copy` makes it, accounting into the same usage ledger."""
        copied = super().copy(**kwargs)
        copied.usage = self.usage  # copies (DSPy makes many) account into one ledger
        return copied

    def dump_state(self):
        """DSPy's LM state plus the catalog entry (`spec`), which names an API key variable, never a key."""
        state = super().dump_state()
        state["spec"] = self.spec.model_dump(mode="json")  # names an API key variable, never a key
        return state


def get_lm(
    name: str | ModelSpec,
    *,
    catalog: ModelCatalog | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    cache: bool = True,
    replay_table=None,
    **kwargs: Any,
) -> StagewiseLM:
    """A ready `dspy.LM` for a catalog model, or for a model string DSPy accepts (`openai/gpt-4o`).

    Deterministic by default (temperature 0; local models also decode with a fixed seed).
    Replayed models need the outcome table to replay (`replay_table`, a
    [`OutcomeTable`][stagewise.data.OutcomeTable]).
    """
    spec = name if isinstance(name, ModelSpec) else (catalog or default_catalog()).resolve(name)
    # Small local models loop until the limit more often than they finish: keep theirs short.
    max_tokens = max_tokens or min(spec.max_output, 512 if spec.engine == "llama_cpp" else 1024)
    options: dict[str, Any] = dict(temperature=temperature, max_tokens=max_tokens, cache=cache, **kwargs)
    if spec.engine in ("llama_cpp", "replay"):
        # A local or recorded call has no transient failure to retry, unless the caller asks
        # (the resilience layer passes num_retries=0 itself: its policies do the retrying).
        options.setdefault("num_retries", 0)
    if spec.engine == "llama_cpp":
        from stagewise.models.local import LlamaCppEngine
        from stagewise.models.weights import weights_path

        weights_path(spec.model)  # a missing weights package is reported here, not at the first call
        n_ctx = min(spec.context_window, 8192)
        engine = LlamaCppEngine(spec.model, n_ctx=n_ctx, max_tokens=max_tokens)
        # The cache key holds the model string, not the engine: one string per catalog model.
        return StagewiseLM(f"local/{spec.name}", spec=spec, engine=engine, async_engine=ThreadedAsyncEngine(engine),
                           **options)
    if spec.engine == "replay":
        from stagewise.models.replay import ReplayEngine

        if replay_table is None:
            raise ConfigError(f"model {spec.name!r} replays recorded outcomes: "
                              "pass replay_table=OutcomeTable.load(...)")
        engine = ReplayEngine(replay_table, spec)
        return StagewiseLM(f"replay/{spec.name}@{replay_table.fingerprint[:12]}", spec=spec, engine=engine,
                           async_engine=ThreadedAsyncEngine(engine), **options)
    if spec.api_base:
        options.setdefault("api_base", spec.api_base)
        # DSPy's native OpenAI route sends max_completion_tokens, which OpenAI-compatible servers
        # (llama.cpp, vLLM, ...) ignore; its litellm route sends max_tokens.
        options.setdefault("engine", "litellm")
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise MissingAPIKeyError(
                f"model {spec.name!r} needs an API key: set the environment variable {spec.api_key_env}"
            )
        options.setdefault("api_key", key)
    elif spec.api_base:
        options.setdefault("api_key", "no-key")  # OpenAI-compatible local servers ignore it
    return StagewiseLM(spec.model, spec=spec, **options)
