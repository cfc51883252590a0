"""Replay of recorded outcomes: real API models, offline, at their real cost.

An [`OutcomeTable`][stagewise.data.outcomes.OutcomeTable] (RouterBench, RouteLLM or a plain score
table; see `stagewise.data.outcomes`) holds, for each prompt and model, the model's
recorded response, whether it was correct, and (when recorded) what the call cost.

A `ReplayEngine` makes one model of a table a DSPy engine: asked a prompt, it
returns that model's recorded response, never an invented one. Tokens are counted on the
recorded prompt and response with the catalog's tiktoken encoding; the cost is the
recorded one, or the catalog price of those tokens when the table records none.
"""

from __future__ import annotations

import json
import re

from stagewise.data.outcomes import NotRecordedError, OutcomeTable, _snippet
from stagewise.models._dspy_compat import (
    InvalidRequestError,
    Message,
    Response,
    Usage,
    response_to_events,
    validate_request,
)
from stagewise.models.catalog import ModelSpec
from stagewise.models.constrained import schema_of
from stagewise.models.tokens import count_tokens

_FIELD_HEADER = re.compile(r"\[\[ ## \w+ ## \]\]\n")


class ReplayEngine:
    """A DSPy engine that answers with one model's recorded responses from an outcome table.

    It is an [`Engine`][stagewise.models.engine.Engine]; `get_lm` builds one for a `recorded/<model>` name.

    Args:
        table: the outcome table.
        spec: the catalog entry; its `model` names the table column to answer from.

    Raises:
        NotRecordedError: the table has no column `spec.model`.
    """

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens"})

    def __init__(self, table: OutcomeTable, spec: ModelSpec):
        if spec.model not in table.models:
            raise NotRecordedError(f"model {spec.name!r} (column {spec.model!r}) is not in outcome table "
                                   f"{table.source!r}; its models are {table.models}")
        self.table = table
        self.spec = spec

    def _recorded_prompt(self, request) -> str:
        """The table prompt this request asks: the last user message, or one of its input fields."""
        text = next((m.text or "" for m in reversed(request.messages) if m.role == "user"), "")
        if self.table.find(text) is not None:
            return text
        # A DSPy adapter writes each input field under a `[[ ## name ## ]]` header and may add
        # instructions after the last one: try each field, dropping trailing paragraphs.
        for section in _FIELD_HEADER.split(text)[1:]:
            paragraphs = section.split("\n\n")
            for end in range(len(paragraphs), 0, -1):
                candidate = "\n\n".join(paragraphs[:end])
                if self.table.find(candidate) is not None:
                    return candidate
        raise NotRecordedError(f"prompt not in outcome table {self.table.source!r}: {_snippet(text)}")

    def complete(self, request) -> Response:
        """The recorded response to the request's prompt, with recorded cost and counted tokens.

        The prompt is the last user message, or one of its input fields. With a JSON response format,
        the response is wrapped as the value of the schema's single text field.

        Raises:
            InvalidRequestError: the prompt is not in the table (reaches the caller as DSPy's
                `LMInvalidRequestError`).
        """
        validate_request(request)
        try:
            outcome = self.table.outcome(self._recorded_prompt(request), self.spec.model)
            text = outcome.response
            constrained, schema = schema_of(request.config.response_format)
            if constrained:
                text = json.dumps({_single_text_field(schema, self.spec.name): outcome.response})
        except NotRecordedError as exc:
            # An lm15 error reaches the caller as dspy's LMInvalidRequestError, with this message.
            raise InvalidRequestError(str(exc), provider="replay") from exc
        prompt_tokens = count_tokens(outcome.prompt, self.spec.tokenizer)
        response_tokens = count_tokens(outcome.response, self.spec.tokenizer)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(text),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_tokens.tokens, output_tokens=response_tokens.tokens),
            provider_data={"stagewise": {"cost_usd": outcome.cost_usd, "correct": outcome.correct,
                                         "token_source": prompt_tokens.encoding}},
        )

    def stream(self, request):
        """The events of the complete response (no token streaming)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the table is plain data."""

    def __deepcopy__(self, memo):
        return self  # the table is read-only and can be large

    def dump_state(self) -> dict:
        """A JSON-able state: the table's source and the catalog name."""
        return {"table": self.table.source, "model": self.spec.name}

    @classmethod
    def load_state(cls, state: dict) -> ReplayEngine:
        """The engine `dump_state` describes (the catalog name is looked up in the default catalog)."""
        from stagewise.models.catalog import default_catalog

        return cls(OutcomeTable.load(state["table"]), default_catalog()[state["model"]])


def _single_text_field(schema: dict | None, model: str) -> str:
    """The one output field a recorded response can fill."""
    if schema is None:
        raise NotRecordedError(f"replayed model {model!r} needs a JSON schema naming its one text output field")
    properties = schema.get("properties", {})
    names = [n for n, p in properties.items() if p.get("type") == "string"]
    if len(properties) != 1 or len(names) != 1:
        raise NotRecordedError(
            f"replayed model {model!r} returns one recorded text; the signature asks for fields {list(properties)}. "
            "Give the replayed stage a signature with one str output field."
        )
    return names[0]
