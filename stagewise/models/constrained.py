"""Constrained decoding: from a request's JSON schema to a llama.cpp grammar that always parses.

A grammar alone does not guarantee parseable output: a small model at temperature 0 often
loops inside a string until ``max_tokens`` cuts the JSON in half. So before compiling,
the schema is bounded to the token budget: arrays get ``maxItems`` and strings get
``maxLength`` so that the longest output the grammar admits still fits in ``max_tokens``
(counting, conservatively, one token per character). Bounds already in the schema are
kept when they are tighter.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

DEFAULT_MAX_ITEMS = 8
# Longest values of llama.cpp's number rules: sign and 16 digits; then a 16-digit fraction and
# an exponent with sign and 16 digits. Some tokenizers (Gemma's) spend one token per digit.
INTEGER_CHARS = 17
NUMBER_CHARS = 52
SEPARATOR_TOKENS = 1  # a whitespace run the grammar allows around a separator: one token
MIN_STRING_CHARS = 8


def schema_of(response_format: dict | None) -> tuple[bool, dict | None]:
    """(constrain to JSON?, the JSON schema if one is given) for an OpenAI-style response_format."""
    if not response_format or response_format.get("type") in (None, "text"):
        return False, None
    schema = response_format.get("schema")
    if schema is None and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
    return True, schema


def _resolve(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return target
    return node


def _walk(node: dict, root: dict, multiplicity: int, strings: dict[int, tuple[dict, int]], items: int,
          depth: int = 0) -> int:
    """Worst-case characters of everything but free strings; records free strings and how often they repeat."""
    if depth > 32:
        raise ValueError("JSON schema nests deeper than 32 levels (recursive $ref?)")
    node = _resolve(node, root)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return max(_walk(option, root, multiplicity, strings, items, depth + 1) for option in node[key])
    if "enum" in node:
        return multiplicity * max(len(json.dumps(value)) for value in node["enum"])
    if "const" in node:
        return multiplicity * len(json.dumps(node["const"]))
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        if "maxLength" in node and node["maxLength"] <= MIN_STRING_CHARS:
            return multiplicity * (node["maxLength"] + 2)
        previous = strings.get(id(node), (node, 0))[1]
        strings[id(node)] = (node, previous + multiplicity)
        return multiplicity * 2  # the quotes
    if kind == "integer":
        return multiplicity * INTEGER_CHARS
    if kind == "number":
        return multiplicity * NUMBER_CHARS
    if kind == "boolean":
        return multiplicity * 5
    if kind == "null":
        return multiplicity * 4
    if kind == "array":
        count = node.setdefault("maxItems", items)
        inner = _walk(node.get("items") or {}, root, multiplicity * count, strings, items, depth + 1) if count else 0
        return multiplicity * (2 + count * (1 + SEPARATOR_TOKENS)) + inner
    if kind == "object" or "properties" in node:
        total = multiplicity * 2
        for name, child in (node.get("properties") or {}).items():
            total += multiplicity * (len(json.dumps(name)) + 2 + 2 * SEPARATOR_TOKENS)
            total += _walk(child, root, multiplicity, strings, items, depth + 1)
        return total
    return multiplicity * 64  # an unconstrained value: llama.cpp's generic JSON value


def bound_schema(schema: dict, max_tokens: int) -> dict:
    """A copy of ``schema`` whose longest admissible JSON fits in ``max_tokens`` tokens.

    Arrays without ``maxItems`` get at most ``DEFAULT_MAX_ITEMS``, halved until every free
    string can still hold ``MIN_STRING_CHARS`` characters; strings share what is left.
    """
    items = DEFAULT_MAX_ITEMS
    while True:
        bounded = copy.deepcopy(schema)
        strings: dict[int, tuple[dict, int]] = {}
        fixed = _walk(bounded, bounded, 1, strings, items)
        slots = sum(count for _, count in strings.values())
        per_string = (max_tokens - fixed) // slots if slots else max_tokens - fixed
        if per_string >= (MIN_STRING_CHARS if slots else 0):
            break
        if items == 1:
            raise ValueError(
                f"max_tokens={max_tokens} is too small for this output schema: its fixed parts alone can take "
                f"{fixed} tokens, leaving too little for {slots} strings; raise max_tokens"
            )
        items //= 2
    for node, _ in strings.values():
        node["maxLength"] = min(node.get("maxLength", per_string), per_string)
    return bounded


@lru_cache(maxsize=256)
def _compile(schema_json: str | None):
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


def grammar_for(schema: dict | None, max_tokens: int):
    """The llama.cpp grammar for ``schema`` bounded to ``max_tokens`` (None: any JSON). Cached."""
    if schema is None:
        return _compile(None)
    return _compile(json.dumps(bound_schema(schema, max_tokens)))  # key order is the output order
