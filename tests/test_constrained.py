"""Bounding JSON schemas to a token budget, so constrained output always closes."""

import json

import pytest
from pydantic import BaseModel

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
