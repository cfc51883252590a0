"""Constrained decoding: from a request's JSON schema to a llama.cpp grammar that always parses.

A grammar alone does not guarantee parseable output: a small model at temperature 0 often
loops inside a string until `max_tokens` cuts the JSON in half. So before compiling,
the schema is bounded to the token budget: arrays get `maxItems` and strings get
`maxLength` so that the longest output the grammar admits fits in `max_tokens`. Bounds
already in the schema are kept when they are tighter. The engine first decodes with string
bounds that assume typical text (`OPTIMISTIC_CHARS_PER_TOKEN`); in the rare case that
output still hits the limit, it decodes again with strict bounds (one character per
token), which always fit.
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
MAX_STRING_CHARS = 1000  # llama.cpp refuses longer bounded repetitions in a grammar
OPTIMISTIC_CHARS_PER_TOKEN = 3


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


def bound_schema(schema: dict, max_tokens: int, chars_per_token: int = 1) -> dict:
    """A copy of `schema` whose longest admissible JSON fits in `max_tokens` tokens.

    Arrays without `maxItems` get at most `DEFAULT_MAX_ITEMS`, halved until every free
    string can still hold `MIN_STRING_CHARS` characters; strings share what is left, at
    `chars_per_token` characters per token. With 1 (strict) the bound always holds, since
    every token carries at least one character; larger values trust typical text.
    """
    items = DEFAULT_MAX_ITEMS
    while True:
        bounded = copy.deepcopy(schema)
        strings: dict[int, tuple[dict, int]] = {}
        fixed = _walk(bounded, bounded, 1, strings, items)
        slots = sum(count for _, count in strings.values())
        per_string = (max_tokens - fixed) * chars_per_token // slots if slots else max_tokens - fixed
        if per_string >= (MIN_STRING_CHARS if slots else 0):
            break
        if items == 1:
            strings_left = f", leaving too little for {slots} strings" if slots else ""
            raise ValueError(
                f"max_tokens={max_tokens} is too small for this output schema: its fixed parts alone can take "
                f"{fixed} tokens{strings_left}; raise max_tokens"
            )
        items //= 2
    for node, _ in strings.values():
        node["maxLength"] = min(node.get("maxLength", per_string), per_string, MAX_STRING_CHARS)
    return bounded


@lru_cache(maxsize=256)
def _compile(schema_json: str | None):
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


def grammar_for(schema: dict | None, max_tokens: int, chars_per_token: int = 1):
    """The llama.cpp grammar for `schema` bounded to `max_tokens` (None: any JSON). Cached."""
    if schema is None:
        return _compile(None)
    bounded = bound_schema(schema, max_tokens, chars_per_token)
    return _compile(json.dumps(bounded))  # not sort_keys: key order is the output order


def check_grammar(vocab, grammar) -> None:
    """Raise ValueError if llama.cpp refuses `grammar` (it would crash the sampler chain).

    llama.cpp's parser limits repetitions (for example a user schema's `maxItems` of
    thousands); llama-cpp-python compiles such a schema without complaint.
    """
    import llama_cpp

    checked = getattr(grammar, "_stagewise_checked", None)
    if checked is None:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode("utf-8"),
                                                       grammar._root.encode("utf-8"))
        checked = bool(sampler)
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        grammar._stagewise_checked = checked
    if not checked:
        raise ValueError(
            "llama.cpp cannot compile the grammar for this output schema: a bound in it (maxLength, "
            "maxItems) repeats too much; lower it"
        )


class LazyGrammarFilter:
    """A llama.cpp sampler that makes greedy grammar-constrained decoding cheap.

    llama.cpp's grammar sampler checks every vocabulary entry at every step (262k for
    Gemma 3), which makes constrained decoding several times slower than free decoding.
    Placed before the grammar sampler in a greedy chain, this filter first checks only the
    most likely token against a shadow copy of the grammar: when the grammar accepts it
    (nearly always), the candidates shrink to that one token, so the chain's grammar has
    one token to check. When it is rejected, the candidates are left whole and the grammar
    filters them all, as before. The chosen token is the same either way: the most likely
    token the grammar accepts. The shadow grammar advances on every accepted token.
    """

    def __init__(self, vocab, grammar) -> None:
        import ctypes

        import llama_cpp

        self._llama_cpp = llama_cpp
        self._shadow = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        self._single = llama_cpp.llama_token_data()
        self._probe = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._single), size=1, selected=-1, sorted=False
        )
        self._kept = llama_cpp.llama_token_data()

        def apply(_sampler, candidates) -> None:
            self._apply(candidates)

        def accept(_sampler, token) -> None:
            llama_cpp.llama_sampler_accept(self._shadow, token)

        # ctypes callbacks must outlive the sampler: keep them on the instance.
        self._callbacks = (llama_cpp.llama_sampler_i_apply(apply), llama_cpp.llama_sampler_i_accept(accept))
        iface = llama_cpp.llama_sampler_i()
        iface.apply, iface.accept = self._callbacks
        self._iface = iface
        self.sampler = llama_cpp.llama_sampler()
        self.sampler.iface = ctypes.pointer(iface)
        self.sampler.ctx = None

    def _apply(self, candidates) -> None:
        import ctypes

        import numpy as np

        array = candidates.contents
        size = array.size
        if size <= 1:
            return
        data = (self._llama_cpp.llama_token_data * size).from_address(ctypes.addressof(array.data.contents))
        logits = np.frombuffer(data, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        best = data[int(np.argmax(logits["logit"]))]
        self._single.id, self._single.logit, self._single.p = best.id, best.logit, best.p
        self._probe.size, self._probe.selected = 1, -1
        self._llama_cpp.llama_sampler_apply(self._shadow, ctypes.byref(self._probe))
        if self._single.logit != float("-inf"):
            self._kept.id, self._kept.logit, self._kept.p = best.id, best.logit, best.p
            array.data = ctypes.pointer(self._kept)  # llama.cpp lets samplers repoint the data
            array.size, array.sorted = 1, False

    def close(self) -> None:
        """Free the shadow grammar sampler (idempotent)."""
        if self._shadow is not None:
            self._llama_cpp.llama_sampler_free(self._shadow)
            self._shadow = None
