"""Bounding JSON schemas to a token budget, so constrained output always closes."""

import json

import pytest
from pydantic import BaseModel, Field

from stagewise.models.constrained import (
    DEFAULT_MAX_ITEMS,
    INTEGER_CHARS,
    MIN_STRING_CHARS,
    bound_schema,
    grammar_for,
    schema_of,
)


class Item(BaseModel):
    name: str
    count: int


class Order(BaseModel):
    items: list[Item]
    note: str


def _worst_case_chars(schema: dict, root: dict | None = None) -> int:
    """Longest compact JSON the bounded schema admits (an independent re-computation)."""
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    kind = schema.get("type")
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    if kind == "string":
        return schema["maxLength"] + 2
    if kind == "integer":
        return INTEGER_CHARS
    if kind == "boolean":
        return 5
    if kind == "array":
        return 2 + schema["maxItems"] * (1 + _worst_case_chars(schema["items"], root))
    if kind == "object":
        return 2 + sum(len(json.dumps(k)) + 2 + _worst_case_chars(v, root) for k, v in schema["properties"].items())
    raise AssertionError(schema)


def test_strings_and_arrays_get_bounds_that_fit_the_budget():
    schema = Order.model_json_schema()
    for budget in (96, 128, 512):
        bounded = bound_schema(schema, budget)
        assert _worst_case_chars(bounded) <= budget
        assert bounded["properties"]["note"]["maxLength"] >= MIN_STRING_CHARS
    assert bound_schema(schema, 4096)["properties"]["items"]["maxItems"] == DEFAULT_MAX_ITEMS
    assert bound_schema(schema, 96)["properties"]["items"]["maxItems"] < DEFAULT_MAX_ITEMS
    assert "maxLength" not in schema["properties"]["note"]  # the input is not modified


def test_property_order_is_kept_because_it_is_the_output_order():
    schema = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}
    assert list(bound_schema(schema, 100)["properties"]) == ["zeta", "alpha"]


def test_tighter_bounds_in_the_schema_are_kept():
    schema = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 3},
                                               "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}
    bounded = bound_schema(schema, 1000)
    assert bounded["properties"]["code"]["maxLength"] == 3
    assert bounded["properties"]["tags"]["maxItems"] == 2


def test_a_budget_too_small_for_the_schema_is_a_clear_error():
    with pytest.raises(ValueError, match="max_tokens=10 is too small"):
        bound_schema(Order.model_json_schema(), 10)


def test_response_formats_are_read_in_all_their_shapes():
    schema = {"type": "object"}
    assert schema_of(None) == (False, None)
    assert schema_of({"type": "text"}) == (False, None)
    assert schema_of({"type": "json_object"}) == (True, None)
    assert schema_of({"type": "json_object", "schema": schema}) == (True, schema)
    assert schema_of({"type": "json_schema", "schema": schema}) == (True, schema)
    assert schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == (True, schema)


def test_grammars_compile_once_per_schema_and_budget():
    schema = Order.model_json_schema()
    assert grammar_for(schema, 256) is grammar_for(schema, 256)
    assert grammar_for(schema, 256) is not grammar_for(schema, 512)
    assert grammar_for(None, 256) is not None


# --- the lazy grammar filter: the same tokens as llama.cpp's full grammar check ---------------

class Word(BaseModel):
    word: str = Field(max_length=12)


LAZY_CASES = [
    # Prose prompts under a JSON grammar: the likeliest first tokens are prose, which the grammar
    # rejects, so the filter's fallback (the whole vocabulary checked) is exercised too.
    ("smollm2-135m-instruct", "My card was stolen, what now? Answer as JSON.", Item, 64),
    ("gemma-3-270m", "Write a haiku about the sea.", Word, 32),  # 262k tokens: where the filter saves most
]


@pytest.mark.parametrize("weights, prompt, schema, max_tokens", LAZY_CASES,
                         ids=["smollm2", "gemma3"])
def test_the_lazy_grammar_filter_decodes_the_same_tokens_as_the_full_check(weights, prompt, schema, max_tokens,
                                                                          monkeypatch):
    import functools

    from llama_cpp import Llama

    from stagewise.models import constrained
    from stagewise.models.local import shared_model
    from stagewise.models.weights import weights_path

    model = shared_model(weights_path(weights), 2048, 2)
    grammar = grammar_for(schema.model_json_schema(), max_tokens, 3)
    seen = {"kept": 0, "fallback": 0}
    apply = constrained.LazyGrammarFilter._apply

    def counting(self, candidates):  # was the likeliest token accepted (kept alone) or not (all checked)?
        before = candidates.contents.size
        apply(self, candidates)
        if before > 1:
            seen["kept" if candidates.contents.size == 1 else "fallback"] += 1

    monkeypatch.setattr(constrained.LazyGrammarFilter, "_apply", counting)

    def decode():
        with model.lock:
            model.llama.reset()
            completion = model.llama.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, seed=0,
                grammar=grammar, logprobs=False)
        return completion["choices"][0]["message"]["content"], completion["usage"]["completion_tokens"]

    lazy = decode()
    assert seen["kept"] > 0 and seen["fallback"] > 0, seen  # both paths of the filter ran
    with monkeypatch.context() as full:  # llama.cpp's own greedy chain: the grammar checks every token
        full.setattr(model.llama, "_init_sampler", functools.partial(Llama._init_sampler, model.llama))
        calls = dict(seen)
        checked = decode()
        assert seen == calls  # the filter was not in this chain
    assert lazy == checked
    assert set(json.loads(lazy[0], strict=False)) == set(schema.model_fields)  # JSON of the schema's shape
