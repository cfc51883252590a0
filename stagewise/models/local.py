"""The local engine: GGUF models in-process through llama.cpp (llama-cpp-python).

It implements DSPy 3.4's engine protocol (`complete(Request) -> Response`, `stream`,
`close`). Typed outputs always parse: when a request carries a JSON schema (DSPy's
JSONAdapter sends the signature's output fields as one, because this engine declares
`supports_response_schema`), decoding is constrained by a llama.cpp grammar compiled
from that schema, bounded so that it fits `max_tokens` (`stagewise.models.constrained`),
so the text the adapter parses is complete JSON of the right shape. Greedy constrained
decoding checks the likeliest token first (`LazyGrammarFilter`): same output, less work.

A model file is loaded once per process and shared: deep copies of the engine (DSPy
deep-copies LMs with their programs) return the same engine, and calls into one llama.cpp
context are serialized by a lock, so threads can share it safely. Every call starts from
an empty context (no KV prefix reuse) so the same request always gives the same output.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from stagewise.models._dspy_compat import (
    InvalidRequestError,
    Message,
    Response,
    Usage,
    response_to_events,
    validate_request,
)
from stagewise.models.constrained import (
    OPTIMISTIC_CHARS_PER_TOKEN,
    LazyGrammarFilter,
    check_grammar,
    grammar_for,
    schema_of,
)
from stagewise.models.weights import weights_path

DEFAULT_SEED = 0
DEFAULT_CONTEXT = 8192


@dataclass
class _SharedModel:
    llama: Any  # llama_cpp.Llama
    lock: threading.Lock


_models: dict[tuple[str, int, int], _SharedModel] = {}
_models_lock = threading.Lock()


@cache
def _llama_class():
    """llama_cpp.Llama, with greedy grammar-constrained sampling made cheap (LazyGrammarFilter)."""
    import ctypes

    import llama_cpp
    from llama_cpp import Llama, _internals

    class LazyGrammarLlama(Llama):
        def _init_sampler(self, **options):
            grammar = options.get("grammar")
            greedy = options.get("temp") == 0.0 and not options.get("mirostat_mode")
            if grammar is None or not greedy or options.get("logits_processor") is not None:
                return super()._init_sampler(**options)
            # Llama._init_sampler's greedy chain, with the lazy filter in front of the grammar.
            sampler = _internals.LlamaSampler()
            sampler.add_penalties(
                n_vocab=self._n_vocab, penalty_last_n=self.last_n_tokens_size,
                penalty_repeat=options.get("repeat_penalty", 1.0),
                penalty_freq=options.get("frequency_penalty", 0.0),
                penalty_present=options.get("presence_penalty", 0.0),
            )
            lazy = LazyGrammarFilter(self._model.vocab, grammar)
            llama_cpp.llama_sampler_chain_add(sampler.sampler, ctypes.pointer(lazy.sampler))
            # The chain must not free a sampler it does not own: listed here, it is removed first.
            sampler.custom_samplers.append((llama_cpp.llama_sampler_chain_n(sampler.sampler) - 1, lazy))
            sampler._exit_stack.callback(lazy.close)
            sampler.add_grammar(self._model, grammar)
            sampler.add_greedy()
            return sampler

    return LazyGrammarLlama


def _close_models() -> None:
    # Free llama.cpp while the interpreter is intact; its __del__ at shutdown prints errors.
    with _models_lock:
        for model in _models.values():
            model.llama.close()
        _models.clear()


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _quiet_llama_logs() -> None:
    """Send llama.cpp's own log lines to Python logging (llama-cpp-python prints some to stderr)."""
    import ctypes

    import llama_cpp

    logger = logging.getLogger("stagewise.llama_cpp")

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        logger.log(logging.ERROR if level == 3 else logging.DEBUG, text.decode("utf-8", "replace").rstrip())

    global _log_callback
    _log_callback = forward  # llama.cpp keeps a raw pointer: keep the callback alive
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


_log_callback = None


def shared_model(path: Path, n_ctx: int, n_threads: int) -> _SharedModel:
    """The process-wide llama.cpp model for this file and context size, loaded on first use."""
    key = (str(path), n_ctx, n_threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            if _log_callback is None:
                _quiet_llama_logs()
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):  # llama.cpp prints a few lines past its log callback
                llama = _llama_class()(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, seed=DEFAULT_SEED,
                              verbose=False)
            model = _models[key] = _SharedModel(llama, threading.Lock())
            if len(_models) == 1:
                atexit.register(_close_models)
        return model


def chat_messages(request) -> list[dict[str, str]]:
    """The request as OpenAI-style chat messages (text only)."""
    messages = []
    if request.system is not None:
        system = (request.system if isinstance(request.system, str)
                  else "".join(getattr(p, "text", "") for p in request.system))
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": message.text or ""})
    return messages


class LlamaCppEngine:
    """A DSPy engine running one GGUF model in-process (an [`Engine`][stagewise.models.engine.Engine]).

    Args:
        weights: a packaged weights id (see `stagewise.models.weights`) or a .gguf path.
        n_ctx: context size in tokens.
        n_threads: CPU threads for llama.cpp (default: up to 4).
        max_tokens: output limit when the request sets none.
    """

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "top_p", "max_tokens", "stop", "seed"})

    def __init__(self, weights: str, *, n_ctx: int = DEFAULT_CONTEXT, n_threads: int | None = None,
                 max_tokens: int = 512):
        self.weights = weights
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.max_tokens = max_tokens
        self._model: _SharedModel | None = None

    @property
    def model(self) -> _SharedModel:
        """The loaded model, shared by the process; loaded on first use."""
        if self._model is None:
            self._model = shared_model(weights_path(self.weights), self.n_ctx, self.n_threads)
        return self._model

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids for `text` (no BOS token)."""
        return self.model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def complete(self, request) -> Response:
        """Generate a response to `request`, greedy and seeded by default.

        With a JSON response format, decoding is grammar-constrained to the schema, bounded to fit
        `max_tokens`; output cut at the limit is decoded again with strict bounds. Every attempt's
        tokens are accounted for.

        Raises:
            InvalidRequestError: the schema cannot fit `max_tokens` or llama.cpp cannot compile its grammar.
        """
        validate_request(request)
        config = request.config
        constrained, schema = schema_of(config.response_format)
        max_tokens = config.max_tokens or self.max_tokens
        kwargs: dict[str, Any] = {
            "messages": chat_messages(request),
            "max_tokens": max_tokens,
            "temperature": 0.0 if config.temperature is None else config.temperature,
            "seed": DEFAULT_SEED if config.seed is None else config.seed,
            "stop": list(config.stop) or None,
        }
        if config.top_p is not None:
            kwargs["top_p"] = config.top_p
        # Strict string bounds always fit max_tokens; optimistic ones fit typical text and give
        # the model more room. Decode optimistically, and strictly only if the JSON was cut.
        grammars = [None]
        if constrained:
            try:
                grammars = [grammar_for(schema, max_tokens, 1)]  # fails here if even strict bounds cannot fit
                if schema is not None:
                    grammars.insert(0, grammar_for(schema, max_tokens, OPTIMISTIC_CHARS_PER_TOKEN))
                for grammar in grammars:
                    check_grammar(self.model.llama._model.vocab, grammar)
            except ValueError as exc:  # reaches the caller as dspy's LMInvalidRequestError
                raise InvalidRequestError(f"{exc}", provider="local") from exc
        input_tokens = output_tokens = 0
        for grammar in grammars:
            completion = self._generate({**kwargs, "grammar": grammar})
            input_tokens += completion["usage"]["prompt_tokens"]  # every attempt is accounted for
            output_tokens += completion["usage"]["completion_tokens"]
            if completion["choices"][0].get("finish_reason") != "length":
                break
        choice = completion["choices"][0]
        return Response(
            id=completion.get("id"),
            model=request.model,
            message=Message.assistant(choice["message"]["content"] or ""),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        )

    def _generate(self, kwargs: dict[str, Any]) -> dict:
        model = self.model
        with model.lock:
            model.llama.reset()  # no KV prefix reuse: identical requests give identical outputs
            return model.llama.create_chat_completion(**kwargs)

    def stream(self, request):
        """The events of the complete response (no token streaming)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release per engine: the loaded model is shared by the process."""

    def __deepcopy__(self, memo):
        return self

    def dump_state(self) -> dict:
        """A JSON-able state: weights, context size and output limit (not the thread count)."""
        return {"weights": self.weights, "n_ctx": self.n_ctx, "max_tokens": self.max_tokens}

    @classmethod
    def load_state(cls, state: dict) -> LlamaCppEngine:
        """The engine `dump_state` describes."""
        return cls(state["weights"], n_ctx=state.get("n_ctx", DEFAULT_CONTEXT), max_tokens=state.get("max_tokens", 512))
