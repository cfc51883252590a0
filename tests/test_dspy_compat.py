"""The DSPy internals stagewise touches (``stagewise.models._dspy_compat``), one test per internal.

Each test calls the internal the way stagewise does and checks what stagewise relies on; a
failure names the internal and what changed, so a DSPy upgrade that breaks one says where.
"""

import asyncio
import inspect
import warnings

import dspy
import pytest

from stagewise.models import _dspy_compat as compat


def changed(internal: str, what: str) -> str:
    return (f"DSPy {dspy.__version__} changed {internal} (stagewise.models._dspy_compat was verified against "
            f"DSPy {compat.VERIFIED_DSPY_VERSION}): {what}")


class EchoEngine:
    """A minimal DSPy 3.4 engine: answers with the last user message, reporting usage."""

    def __init__(self):
        self.requests = []

    def complete(self, request):
        compat.validate_request(request)
        self.requests.append(request)
        text = request.messages[-1].text or ""
        return compat.Response(id=None, model=request.model, message=compat.Message.assistant(f"echo: {text}"),
                               finish_reason="stop", usage=compat.Usage(input_tokens=3, output_tokens=2),
                               provider_data={"stagewise": {"cost_usd": 0.5}})

    def stream(self, request):
        return compat.response_to_events(self.complete(request))

    def close(self):
        pass


class RefusingEngine(EchoEngine):
    def complete(self, request):
        raise compat.InvalidRequestError("not recorded: 'hello'", provider="replay")


def lm_with(engine, **kwargs) -> dspy.LM:
    return dspy.LM("echo/model", engine=engine, num_retries=0, cache=False, **kwargs)


def test_lm15_types_build_the_responses_the_engines_return():
    response = compat.Response(id=None, model="m", message=compat.Message.assistant("hi"), finish_reason="stop",
                               usage=compat.Usage(input_tokens=4, output_tokens=1),
                               provider_data={"stagewise": {"cost_usd": 0.25}})
    assert response.message.text == "hi", changed("dspy.lm15.Message.assistant", "its .text is not the text given")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 1), \
        changed("dspy.lm15.Usage", "input_tokens/output_tokens are not kept")
    assert response.provider_data == {"stagewise": {"cost_usd": 0.25}}, \
        changed("dspy.lm15.Response", "provider_data (where engines record a call's cost) is not kept")
    assert response.finish_reason == "stop", changed("dspy.lm15.Response", "finish_reason is not kept")
    request = compat.Request(model="m", messages=(compat.Message.user("question"),), system="be brief")
    # What the local and replay engines read from a request.
    assert [(m.role, m.text) for m in request.messages] == [("user", "question")], \
        changed("dspy.lm15.Request.messages", "messages no longer have .role and .text")
    assert request.system == "be brief" or "".join(getattr(p, "text", "") for p in request.system) == "be brief", \
        changed("dspy.lm15.Request.system", "the system prompt is neither a string nor parts with .text")
    for option in ("response_format", "max_tokens", "temperature", "seed", "stop", "top_p"):
        assert hasattr(request.config, option), changed("dspy.lm15.Config", f"it has no {option!r}")


def test_response_to_events_streams_one_response():
    response = compat.Response(id=None, model="m", message=compat.Message.assistant("some text"),
                               finish_reason="stop", usage=compat.Usage(input_tokens=1, output_tokens=2))
    events = list(compat.response_to_events(response))
    kinds = [event.type for event in events]
    assert kinds[0] == "start" and kinds[-1] == "end", \
        changed("dspy.lm15.response_to_events", f"a stream no longer starts and ends with start/end events: {kinds}")
    texts = [event.delta.text for event in events if event.type == "delta"]
    assert texts == ["some text"], changed("dspy.lm15.response_to_events", f"the text deltas are {texts}")


def test_invalid_request_error_reaches_the_caller_as_dspy_error():
    error = compat.InvalidRequestError("not recorded: 'hello'", provider="replay")
    assert "not recorded: 'hello'" in str(error), changed("dspy.lm15.InvalidRequestError", "the message is lost")
    with pytest.raises(dspy.LMInvalidRequestError, match="not recorded: 'hello'"):
        lm_with(RefusingEngine())("hello")


def test_validate_request_accepts_requests_and_refuses_the_rest():
    compat.validate_request(compat.Request(model="m", messages=(compat.Message.user("q"),)))
    with pytest.raises(TypeError):
        compat.validate_request({"model": "m"})


def test_execution_steps_run_a_call_as_stagewise_lm_does():
    engine = EchoEngine()
    lm = lm_with(engine)
    call = compat.prepare(lm, "hello", None, {})
    for attribute in ("managed", "cache", "prompt", "messages", "legacy", "request"):
        assert hasattr(call, attribute), changed("dspy.clients.execution.prepare", f"a call has no .{attribute}")
    assert call.managed, changed("dspy.clients.execution.prepare", "a dspy.LM with an engine is not 'managed'")
    assert call.prompt == "hello" and call.messages is None
    assert isinstance(call.legacy.get("messages"), list), \
        changed("dspy.clients.execution.PreparedCall.legacy", "it holds no rendered 'messages' list")
    assert isinstance(call.key(lm, False), dict), changed("dspy.clients.execution.PreparedCall.key", "not a dict")
    result = compat.execute(lm, call)
    for attribute in ("responses", "outputs", "usage", "raw", "cache_hit"):
        assert hasattr(result, attribute), changed("dspy.clients.execution.execute", f"a result has no .{attribute}")
    assert [r.provider_data for r in result.responses] == [{"stagewise": {"cost_usd": 0.5}}], \
        changed("dspy.clients.execution.execute", "the engine's responses (and their provider_data) are not kept")
    assert result.usage.get("prompt_tokens") == 3 and result.usage.get("completion_tokens") == 2, \
        changed("dspy.clients.execution.execute", f"usage is {result.usage!r}, not prompt/completion_tokens")
    assert result.cache_hit is False
    assert compat.finalize(lm, call, result) == ["echo: hello"], \
        changed("dspy.clients.execution.finalize", "a prompt call no longer returns the list of outputs")


def test_async_execution_steps():
    async def call():
        prepared = compat.prepare(lm, "hello", None, {}, asynchronous=True)
        return compat.finalize(lm, prepared, await compat.aexecute(lm, prepared))

    from stagewise.models.async_engine import ThreadedAsyncEngine

    lm = lm_with(EchoEngine(), async_engine=ThreadedAsyncEngine(EchoEngine()))
    assert asyncio.run(call()) == ["echo: hello"], changed("dspy.clients.execution.aexecute", "async call failed")


def test_base_lm_call_is_still_prepare_execute_finalize():
    """StagewiseLM.__call__/acall copy dspy.BaseLM's with a clock around execute: both must still be these steps."""
    for method, steps in ((dspy.BaseLM.__call__, ("prepare(", "execute(", "finalize(")),
                          (dspy.BaseLM.acall, ("prepare", "aexecute(", "finalize("))):
        source = inspect.getsource(method)
        for step in (*steps, "warn_legacy_lm()", "warn_openai_messages(self, messages)"):
            assert step in source, changed(f"dspy.BaseLM.{method.__name__}",
                                           f"it no longer calls {step.rstrip('(')}: update StagewiseLM to match")
        assert hasattr(method, "__wrapped__"), changed(f"dspy.BaseLM.{method.__name__}",
                                                       "it is no longer wrapped by @with_callbacks")


def test_cache_keeps_entries_under_ignored_keys():
    assert {"api_key", "api_base"} <= set(compat.IGNORED_CACHE_KEYS), \
        changed("dspy.clients.execution.IGNORED_CACHE_KEYS", f"it is {compat.IGNORED_CACHE_KEYS!r}")
    key = {"model": "m", "_stagewise": "usage", "api_key": "one"}
    dspy.cache.put(key, [3, 2, "o200k_base"], compat.IGNORED_CACHE_KEYS)
    assert dspy.cache.get({**key, "api_key": "another"}, compat.IGNORED_CACHE_KEYS) == [3, 2, "o200k_base"], \
        changed("dspy.cache.get/put with IGNORED_CACHE_KEYS", "an entry is not found under a different API key")


def test_deprecation_warnings_take_the_arguments_stagewise_passes():
    lm = lm_with(EchoEngine())
    with pytest.warns(DeprecationWarning):
        compat.warn_legacy_lm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.warn_openai_messages(lm, None)  # no messages: no warning
    with pytest.warns(DeprecationWarning):
        compat.warn_openai_messages(lm, [{"role": "user", "content": "hi"}])


def test_legacy_outputs_read_usage_from_dicts_and_objects():
    from pydantic import BaseModel

    class Usage(BaseModel):
        prompt_tokens: int
        completion_tokens: int

    class Raw:
        usage = Usage(prompt_tokens=5, completion_tokens=7)

    assert compat.value({"usage": {"prompt_tokens": 1}}, "usage", {}) == {"prompt_tokens": 1}, \
        changed("dspy.clients.legacy_outputs.value", "it does not read a dict's key")
    assert compat.plain(dict(compat.value(Raw(), "usage", {}))) == {"prompt_tokens": 5, "completion_tokens": 7}, \
        changed("dspy.clients.legacy_outputs.value/plain", "an SDK object's usage does not read as a plain dict")
    assert compat.value({}, "usage", {}) == {}


def test_dump_and_load_engine_round_trip():
    from stagewise.models.async_engine import ThreadedAsyncEngine
    from stagewise.models.local import LlamaCppEngine

    engine = LlamaCppEngine("smollm2-135m-instruct", n_ctx=2048, max_tokens=64)  # loads no weights until called
    record = compat.dump_engine(engine, "engine")
    assert record == {"class": "stagewise.models.local:LlamaCppEngine",
                      "state": {"weights": "smollm2-135m-instruct", "n_ctx": 2048, "max_tokens": 64}}, \
        changed("dspy.clients.lm._dump_engine", f"the saved record is {record!r}")
    loaded = compat.load_engine(record, "engine")
    assert type(loaded) is LlamaCppEngine and (loaded.weights, loaded.n_ctx, loaded.max_tokens) == (
        "smollm2-135m-instruct", 2048, 64), changed("dspy.clients.lm._load_engine", "the engine did not come back")
    wrapped = ThreadedAsyncEngine.load_state(ThreadedAsyncEngine(engine).dump_state())
    assert type(wrapped.engine) is LlamaCppEngine and wrapped.engine.n_ctx == 2048


def test_lm_engine_is_the_engine_given():
    engine = EchoEngine()
    assert lm_with(engine).engine is engine, changed("dspy.LM.engine", "it is not the engine object passed in")


def test_caller_modules_lists_the_running_modules():
    seen = []

    class Outer(dspy.Module):
        def forward(self):
            seen.extend(compat.caller_modules())
            return dspy.Prediction()

    module = Outer()
    module()
    assert module in seen, changed("dspy.settings.caller_modules", "a running module is not listed")
    assert compat.caller_modules() == [], changed("dspy.settings.caller_modules", "it is not empty outside a call")
