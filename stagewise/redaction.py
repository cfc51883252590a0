"""Keeping secrets out of messages, log lines and stored records.

`redact` takes any text (a URL, an error message, a log line) and replaces with `***`:

- a URL's password: `postgresql://user:***@host/db`;
- the value of a secret-named setting, in a query string, a key=value DSN, a header, JSON or
  an environment listing: `?password=***`, `host=db user=x password=***`,
  `"client_secret": "***"`, `OPENAI_API_KEY=***`, `X-Api-Key: ***`; names such as
  `key`, `token`, `auth` or `signature` are redacted when their value looks like a
  token (16 or more letters, digits and `+/=_.-`);
- the credentials of an `Authorization` header and any `Bearer` token;
- API-key-shaped strings wherever they stand, keeping the prefix that says whose key it was:
  `sk-***` (OpenAI), `sk-ant-***` (Anthropic), `AIza***` (Google), `hf_***`
  (Hugging Face), `ghp_***` (GitHub), `xoxb-***` (Slack), `AKIA***` (AWS), `gsk_***` (Groq).

`RedactingFilter` applies it to every record of a logger or handler it is added to.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

__all__ = ["RedactingFilter", "redact", "redact_log_record", "redacted_logger", "scrub"]

MASK = "***"

# A URL's authority: scheme://[user[:password]@]host..., up to the path.
_URL_AUTHORITY = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<authority>[^\s/?#\"'<>]*)")

# Names whose value is always a secret, whatever it looks like (a name may carry a prefix:
# db_password, OPENAI_API_KEY, x-api-key, client_secret).
_SECRET_NAME = (r"[\w.\-]*?(?:password|passwd|passphrase|pwd|secret|api[_\-]?key|access[_\-]?key"
                r"|private[_\-]?key|secret[_\-]?key|access[_\-]?token|refresh[_\-]?token|id[_\-]?token"
                r"|auth[_\-]?token|session[_\-]?token|bearer[_\-]?token|token|credentials?)")
# Names whose value is a secret when it looks like one: a long token.
_TOKEN_NAME = r"[\w.\-]*?(?:key|auth|signature|sig|sas|session)"
_TOKEN_VALUE = r"[A-Za-z0-9+/=_.~\-]{16,}"

_SEPARATOR = r"(?P<sep>[\"']?\s*[:=]\s*)"
_VALUE = r"(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s&;,\"'<>(){}\[\]]+))"
_NAMED_SECRET = re.compile(rf"(?i)(?<![\w.\-])(?P<name>{_SECRET_NAME}){_SEPARATOR}{_VALUE}")
_NAMED_TOKEN = re.compile(rf"(?i)(?<![\w.\-])(?P<name>{_TOKEN_NAME}){_SEPARATOR}(?P<q>[\"']?)"
                          rf"(?P<value>{_TOKEN_VALUE})")

_AUTHORIZATION = re.compile(r"(?i)(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
                            r"(?:(?P<scheme>[A-Za-z][\w\-]*)\s+)?(?P<credentials>[^\s\"',;]+)")
# The HTTP scheme is spelled "Bearer"; "a bearer token" in prose is not one.
_BEARER = re.compile(r"\b(?P<scheme>Bearer)\s+(?P<credentials>[A-Za-z0-9+/=_.~\-]+)")

# API keys by their shape: the prefix stays (it says whose key it was), the rest goes.
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?P<prefix>sk-ant-|sk-(?:proj-|svcacct-|admin-)?|AIza|hf_|gh[pousr]_|github_pat_"
    r"|xox[abposr]-|AKIA|ASIA|gsk_|r8_|glpat-)(?P<rest>[A-Za-z0-9_\-]{16,})")


def _userinfo(match: re.Match) -> str:
    authority = match["authority"]
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return match[0]
    user = userinfo.split(":", 1)[0]
    return f"{match['scheme']}{user}:{MASK}@{host}"


def _named(match: re.Match) -> str:
    if match["dq"] is not None:
        value = f'"{MASK}"'
    elif match["sq"] is not None:
        value = f"'{MASK}'"
    else:
        value = MASK
    return f"{match['name']}{match['sep']}{value}"


def redact(text: str) -> str:
    """`text` with every password, token and API key in it replaced by `***` (see the module)."""
    if not isinstance(text, str):
        text = str(text)
    text = _URL_AUTHORITY.sub(_userinfo, text)
    text = _AUTHORIZATION.sub(lambda m: m["head"] + (f"{m['scheme']} " if m["scheme"] else "") + MASK, text)
    text = _BEARER.sub(lambda m: f"{m['scheme']} {MASK}", text)
    text = _NAMED_SECRET.sub(_named, text)
    text = _NAMED_TOKEN.sub(lambda m: f"{m['name']}{m['sep']}{m['q']}{MASK}", text)
    return _KEY_SHAPES.sub(lambda m: f"{m['prefix']}{MASK}", text)


def scrub(message: str, url: str) -> str:
    """An error message with the URL's password removed, wherever a driver quoted it (then `redact`)."""
    password = urlsplit(url).password
    message = message.replace(password, MASK) if password else message
    return redact(message)


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record with its message and traceback redacted.

    Add it to a logger (it then sees the records logged on that logger) or to a handler (every
    record the handler emits): `handler.addFilter(RedactingFilter())`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place: its message formatted and redacted, its traceback text redacted."""
        redact_log_record(record, redact)
        return True


def redact_log_record(record: logging.LogRecord, redact_text) -> None:
    """Rewrite `record` in place with `redact_text` (a `str -> str`) applied.

    It applies to the record's formatted message, its traceback text and its stack; a record whose
    arguments do not fit its message is left for logging to report.
    """
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a record whose arguments do not fit: logging reports it itself
        return
    record.msg, record.args = redact_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def redacted_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with a `RedactingFilter` (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
