r"""Personal data kept out of what a run stores: a redaction policy applied before anything leaves a request.

A [`PrivacyPolicy`][stagewise.runtime.PrivacyPolicy] says what is personal data and what becomes of it:

- built-in detectors, each on or off: `email` addresses, `credit_card` numbers (13 to 19
  digits, spaces or dashes between groups, Luhn-checked), `phone` numbers (validated with
  `phonenumbers`, Google's libphonenumber: international numbers of any country, national ones
  of `phone_regions`) and `iban` account numbers (the country's length and the ISO 13616
  mod-97 checksum);
- custom regular expressions, each with its name: `ORDER_ID = "ORD-\d{6}"`;
- fields, by name, whose whole value is dropped (`<DROPPED>`) or replaced by a keyed hash
  (`<HASH:16 hex digits>`, HMAC-SHA256 under a secret key: equal values give equal hashes, so
  stored runs can still be joined, but nobody without the key can test a guess).

A match is replaced by the `replacement` format, `<{entity}>` by default: `<EMAIL>`,
`<CREDIT_CARD>`, `<PHONE>`, `<IBAN>`, `<ORDER_ID>`.

Where it applies: `run(program, inputs, privacy=policy)` (and `resume`, `replay`) or
`with protecting(policy):` make every record of the run pass through the policy once, at the
point where it leaves the request: checkpoints ([`Checkpointer`][stagewise.runtime.runs.Checkpointer]),
the context store ([`ContextRecorder`][stagewise.runtime.store.ContextRecorder], `shared(store)`), spans
with content ([`Tracer`][stagewise.runtime.tracing.Tracer]), and log records made while the run
runs. The model still sees the original text: the policy changes what is kept, never what is
asked. The values of dropped and hashed fields are also replaced wherever they appear in the
run's texts (a prompt quoting an input field, a later stage's section).

Why not presidio-analyzer: its recognizers for these four entities are regular expressions with
the same checks (Luhn, mod-97, `phonenumbers`), but importing any of them imports its NLP
engines (spaCy, and transformers with torch when installed: 7.9 s and 490 MB here), its e-mail
check fetches the Public Suffix List from the network on first use, and its phone recognizer
scans the whole text once per region: the four take 8 to 19 ms per KB of a request's text here,
these detectors 0.24 to 0.8 ms (the budget: well under 1 ms). tests/test_privacy.py checks that
everything presidio's recognizers find in a corpus is redacted here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from stagewise.errors import ConfigError
from stagewise.redaction import redact_log_record

__all__ = ["DEFAULT_KEY_ENV", "DEFAULT_PHONE_REGIONS", "DETECTORS", "IBAN_LENGTHS", "Finding", "PrivacyFilter",
           "PrivacyPolicy", "PrivacyScope", "current_privacy", "iban_valid", "luhn_valid", "privacy_scope",
           "protecting"]

DETECTORS = ("email", "credit_card", "phone", "iban")
_ENTITY = {"email": "EMAIL", "credit_card": "CREDIT_CARD", "phone": "PHONE", "iban": "IBAN"}
# presidio's PhoneRecognizer's default regions (national numbers); international ones need none.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")
DEFAULT_KEY_ENV = "STAGEWISE_PRIVACY_KEY"
MAX_PATTERN_CHARS = 1_000

_EMAIL = re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
                    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")
# Digit groups with single spaces or dashes between them: cut into 13-19 digit windows below.
_DIGIT_RUN = re.compile(r"(?<![\w.,])\d+(?:[ -]\d+)+(?![\w])|(?<![\w.,])\d{13,19}(?![\w])")
# Not inside a word or a code (ORD-2024-0001, v3.11.7, 12/05): no word, dash, slash or dot just around it.
_PHONE = re.compile(r"(?<![\w+\-/.])(?:\+|00)?(?:\(\d{1,5}\)[ .\-/]?)?\d(?:[ .\-/]?\(?\d+\)?){1,8}"
                    r"(?![\w@]|[\-/.]\w)")
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{1,2}:\d{2}(?::\d{2})?")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){10,32}")
_HASHED = re.compile(r"<HASH:[0-9a-f]{16}>")
_DIGITS = re.compile(r"\d+")

# ISO 13616 registry: each country's IBAN length.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """Whether `text` (spaces and dashes allowed) is an IBAN: its country's length and a mod-97 of 1."""
    compact = re.sub(r"[ -]", "", text).upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


@dataclass(frozen=True)
class Finding:
    """One piece of personal data in a text: what it is and where (`text[start:end]`)."""

    entity: str
    start: int
    end: int


class PrivacyPolicy:
    """What is personal data in a run's records, and what it becomes (see the module).

    `detect` names the built-in detectors that are on (`DETECTORS`); `patterns` maps a
    name to a regular expression; `drop` and `hash` name input/output fields (and context
    sections of that name); `hash_key` keys the hash (required when `hash` names a field).
    `replacement` is a format with `{entity}`. A policy is immutable and thread-safe.

    Args:
        detect: the built-in detectors to use (default: all of `DETECTORS`).
        patterns: name -> a regular expression of your own.
        drop: fields whose values are replaced by a marker.
        hash: fields whose values are replaced by a keyed hash.
        hash_key: the hash key (required with `hash`).
        replacement: what a detected entity becomes, a format with `{entity}`.
        phone_regions: the regions whose phone numbers are detected.

    Raises:
        ConfigError: an unknown detector, a field both dropped and hashed, `hash` without a key, or a
            replacement that is not a format with only `{entity}`.
    """

    def __init__(self, *, detect: tuple[str, ...] | list[str] = DETECTORS, patterns: Mapping[str, str] | None = None,
                 drop: tuple[str, ...] | list[str] = (), hash: tuple[str, ...] | list[str] = (),
                 hash_key: bytes | str | None = None, replacement: str = "<{entity}>",
                 phone_regions: tuple[str, ...] | list[str] = DEFAULT_PHONE_REGIONS):
        unknown = [d for d in detect if d not in DETECTORS]
        if unknown:
            raise ConfigError(f"privacy: unknown detector(s) {unknown} (known: {', '.join(DETECTORS)})")
        self.detect = tuple(dict.fromkeys(detect))
        self.patterns = {name: _compiled(name, pattern) for name, pattern in (patterns or {}).items()}
        both = sorted(set(drop) & set(hash))
        if both:
            raise ConfigError(f"privacy: field(s) {both} are both dropped and hashed: name each in one list")
        self.drop, self.hash = frozenset(drop), frozenset(hash)
        if self.hash and not hash_key:
            raise ConfigError(f"privacy: hash = {sorted(self.hash)} needs a key: pass hash_key, or set "
                              f"${DEFAULT_KEY_ENV} (or the variable hash_key_env names)")
        self._key = hash_key.encode() if isinstance(hash_key, str) else hash_key
        try:
            replacement.format(entity="EMAIL")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"privacy: replacement {replacement!r} is not a format with only {{entity}} "
                              f"({exc!r})") from None
        self.replacement = replacement
        self.phone_regions = tuple(r.upper() for r in phone_regions)
        if "phone" in self.detect:
            _check_regions(self.phone_regions)

    def __repr__(self) -> str:  # never the key
        return (f"PrivacyPolicy(detect={list(self.detect)}, patterns={sorted(self.patterns)}, "
                f"drop={sorted(self.drop)}, hash={sorted(self.hash)})")

    @classmethod
    def from_config(cls, table: Mapping[str, Any], *, where: str = "[privacy]",
                    environ: Mapping[str, str] | None = None) -> PrivacyPolicy:
        """A policy from a `[privacy]` TOML table.

        The keys are `detect`, `patterns`, `drop`, `hash`, `hash_key_env`, `replacement` and
        `phone_regions`. The hash key is read from the environment variable `hash_key_env` names,
        never from the file.

        Raises:
            ConfigError: a key is unknown or its value is invalid; the message names the key.
        """
        environ = os.environ if environ is None else environ
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table, not {type(table).__name__}")
        allowed = ("detect", "patterns", "drop", "hash", "hash_key_env", "replacement", "phone_regions")
        unknown = [k for k in table if k not in allowed]
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(allowed)})")

        def strings(key: str, default):
            value = table.get(key, default)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where} {key}: expected a list of names, got {value!r}")
            return list(value)

        detect = strings("detect", list(DETECTORS))
        bad = [d for d in detect if d not in DETECTORS]
        if bad:
            raise ConfigError(f"{where} detect: unknown detector(s) {bad} (known: {', '.join(DETECTORS)})")
        patterns = table.get("patterns", {})
        if not isinstance(patterns, Mapping) or not all(isinstance(v, str) for v in patterns.values()):
            raise ConfigError(f"{where} patterns: expected a table of NAME = \"regex\", got {patterns!r}")
        for name, pattern in patterns.items():
            _compiled(name, pattern, where=f"{where} patterns.{name}")
        replacement = table.get("replacement", "<{entity}>")
        if not isinstance(replacement, str):
            raise ConfigError(f"{where} replacement: expected a string such as \"<{{entity}}>\", got {replacement!r}")
        regions = strings("phone_regions", list(DEFAULT_PHONE_REGIONS))
        try:
            _check_regions(regions)
        except ConfigError as exc:
            raise ConfigError(f"{where} phone_regions: {exc}") from None
        drop, hashed = strings("drop", []), strings("hash", [])
        key_env = table.get("hash_key_env", DEFAULT_KEY_ENV)
        if not isinstance(key_env, str) or not key_env:
            raise ConfigError(f"{where} hash_key_env: expected the name of an environment variable, got {key_env!r}")
        key = environ.get(key_env)
        if hashed and not key:
            raise ConfigError(f"{where} hash: hashing {hashed} needs a secret key in the environment variable "
                              f"${key_env} (hash_key_env), which is not set")
        try:
            return cls(detect=detect, patterns=dict(patterns), drop=drop, hash=hashed, hash_key=key,
                       replacement=replacement, phone_regions=regions)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).removeprefix('privacy: ')}") from None

    @classmethod
    def from_option(cls, value: str, *, environ: Mapping[str, str] | None = None) -> PrivacyPolicy:
        """A policy from a command-line option (`--redact`).

        The option is `all`, detector names separated by commas (`email,credit_card`), or a TOML
        file whose `[privacy]` table says the rest.
        """
        value = value.strip()
        if value.endswith(".toml"):
            from pathlib import Path

            from stagewise.tomlfiles import read_toml

            path = Path(value)
            data = read_toml(path, f"privacy file {value!r}", ConfigError)
            if "privacy" not in data:
                raise ConfigError(f"privacy file {value!r} has no [privacy] table")
            return cls.from_config(data["privacy"], where=f"privacy file {value!r}: [privacy]", environ=environ)
        names = list(DETECTORS) if value == "all" else [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in DETECTORS]
        if not names or unknown:
            raise ConfigError(f"--redact {value!r}: expected 'all', detectors separated by commas "
                              f"({', '.join(DETECTORS)}) or a .toml file with a [privacy] table")
        return cls(detect=names)

    # --- finding ---------------------------------------------------------------------------------

    def findings(self, text: str) -> list[Finding]:
        """The personal data in `text`, in order, without overlaps (the earlier, then longer, wins)."""
        found: list[Finding] = []
        if "email" in self.detect and "@" in text:
            found += [Finding("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(text)]
        if "iban" in self.detect:
            found += _ibans(text)
        if "credit_card" in self.detect:
            found += _cards(text)
        for name, pattern in self.patterns.items():
            found += [Finding(name, m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()]
        if "phone" in self.detect:
            taken = _without_overlaps(found)
            found = taken + _phones(text, self.phone_regions, taken)
        return _without_overlaps(found)

    # --- applying ----------------------------------------------------------------------------------

    def text(self, text: str, known: Mapping[str, str] | None = None) -> str:
        """`text` with every finding replaced (and every `known` value, longest first, by its marker)."""
        if not isinstance(text, str) or not text:
            return text
        if known:
            for value in sorted(known, key=len, reverse=True):
                if value in text:
                    text = text.replace(value, known[value])
        findings = self.findings(text)
        if not findings:
            return text
        parts, position = [], 0
        for finding in findings:
            parts += [text[position:finding.start], self.replacement.format(entity=finding.entity)]
            position = finding.end
        parts.append(text[position:])
        return "".join(parts)

    def marker(self, field: str, value: Any) -> Any:
        """What a value of `field` becomes: `<DROPPED>`, its keyed hash, or the value (other fields)."""
        if field in self.drop:
            return self.replacement.format(entity="DROPPED")
        if field in self.hash:
            if isinstance(value, str) and _HASHED.fullmatch(value):
                return value  # already hashed (a resumed run's stored inputs)
            raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            return f"<HASH:{hmac.new(self._key, raw.encode(), hashlib.sha256).hexdigest()[:16]}>"
        return value

    def value(self, value: Any, field: str | None = None, known: Mapping[str, str] | None = None) -> Any:
        """Any JSON-like value, redacted.

        A dropped or hashed field's value becomes its marker, strings are redacted by `text`, lists
        and dicts item by item (a dict's keys are the field names of its values).
        """
        if field is not None and (field in self.drop or field in self.hash):
            return self.marker(field, value)
        if isinstance(value, str):
            return self.text(value, known)
        if isinstance(value, Mapping):
            return {k: self.value(v, str(k), known) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v, None, known) for v in value]
        return value

    def record(self, fields: Mapping[str, Any], known: Mapping[str, str] | None = None) -> dict:
        """A record of named fields (a request's inputs, a stage's outputs) redacted field by field."""
        return {name: self.value(v, name, known) for name, v in fields.items()}

    apply = value

    def sensitive(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The string values of dropped and hashed fields in `fields`, each with its marker."""
        known = {}
        for name, v in fields.items():
            if (name in self.drop or name in self.hash) and isinstance(v, str) and len(v) >= 3:
                known[v] = self.marker(name, v)
        return known


def _compiled(name: Any, pattern: str, *, where: str | None = None) -> re.Pattern:
    where = where or f"privacy: pattern {name!r}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
        raise ConfigError(f"{where}: a pattern's name is a word of letters, digits and _ (it becomes <NAME>)")
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise ConfigError(f"{where}: expected a regular expression of 1 to {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: not a regular expression: {exc}") from None
    if compiled.fullmatch(""):
        raise ConfigError(f"{where}: {pattern!r} matches the empty string")
    return compiled


def _check_regions(regions) -> None:
    import phonenumbers

    bad = [r for r in regions if str(r).upper() not in phonenumbers.SUPPORTED_REGIONS]
    if bad:
        raise ConfigError(f"unknown phone region(s) {bad} (ISO 3166 codes such as US, GB, DE)")


def _overlaps(finding: Finding, others: list[Finding]) -> bool:
    return any(finding.start < o.end and o.start < finding.end for o in others)


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for finding in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept


def _groups(match_text: str, offset: int) -> list[tuple[int, int, str]]:
    return [(offset + g.start(), offset + g.end(), g.group()) for g in _DIGITS.finditer(match_text)]


def _cards(text: str) -> list[Finding]:
    found = []
    for run in _DIGIT_RUN.finditer(text):
        groups = _groups(run.group(), run.start())
        i = 0
        while i < len(groups):  # the longest Luhn-valid window of whole groups starting at group i
            hit = None
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j][2]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    hit = j
            if hit is None:
                i += 1
                continue
            found.append(Finding("CREDIT_CARD", groups[i][0], groups[hit][1]))
            i = hit + 1
    return found


def _ibans(text: str) -> list[Finding]:
    found, position = [], 0
    while (match := _IBAN.search(text, position)) is not None:
        position = match.start() + 1  # a candidate runs on greedily: the next IBAN may start inside it
        candidate = match.group()
        length = IBAN_LENGTHS.get(candidate[:2].upper())
        if length is None:
            continue
        count, end = 0, None
        for index, char in enumerate(candidate):  # exactly the country's number of characters
            if char.isalnum():
                count += 1
                if count == length:
                    end = index + 1
                    break
        if end is not None and iban_valid(candidate[:end]):
            found.append(Finding("IBAN", match.start(), match.start() + end))
            position = match.start() + end
    return found


def _phones(text: str, regions: tuple[str, ...], taken: list[Finding]) -> list[Finding]:
    import phonenumbers

    found = []
    for match in _PHONE.finditer(text):
        candidate = match.group()
        if _overlaps(Finding("", match.start(), match.end()), taken):
            continue  # a card number or an IBAN, already found
        digits = sum(c.isdigit() for c in candidate)
        international = candidate.startswith(("+", "00"))
        if not 7 <= digits - (2 if candidate.startswith("00") else 0) <= 15 or _DATE.fullmatch(candidate.strip()):
            continue  # E.164: at most 15 digits
        number = "+" + candidate[2:] if candidate.startswith("00") else candidate
        for region in (None,) if international else regions:
            try:
                parsed = phonenumbers.parse(number, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(parsed):
                found.append(Finding("PHONE", match.start(), match.end()))
                break
    return found


# --- where a policy applies: the current request ------------------------------------------------

class PrivacyScope:
    """A policy as one request applies it.

    It remembers the values of the dropped and hashed fields seen so far (inputs, stage outputs),
    so that they are replaced wherever a later text quotes them. Every observer of the request
    (checkpoints, context store, spans, logs) writes through it.

    Args:
        policy: the policy to apply.
    """

    def __init__(self, policy: PrivacyPolicy):
        self.policy = policy
        self.known: dict[str, str] = {}
        self._lock = threading.Lock()  # fan-out branches learn concurrently

    def learn(self, fields: Mapping[str, Any]) -> None:
        """Remember the sensitive values among `fields` (a request's inputs, a stage's outputs)."""
        found = self.policy.sensitive(fields)
        if found:
            with self._lock:
                self.known.update(found)

    def _known(self) -> dict[str, str]:
        with self._lock:  # a snapshot: another branch may be learning
            return dict(self.known)

    def text(self, text: str) -> str:
        """[`PrivacyPolicy.text`][stagewise.runtime.PrivacyPolicy.text] with the values learnt so far."""
        return self.policy.text(text, self._known())

    def value(self, value: Any, field: str | None = None) -> Any:
        """[`PrivacyPolicy.value`][stagewise.runtime.PrivacyPolicy.value] with the values learnt so far."""
        return self.policy.value(value, field, self._known())

    def record(self, fields: Mapping[str, Any]) -> dict:
        """[`PrivacyPolicy.record`][stagewise.runtime.PrivacyPolicy.record] with the values learnt so far.

        The sensitive values of `fields` are learnt first.
        """
        self.learn(fields)
        return self.policy.record(fields, self._known())


_scope: ContextVar[PrivacyScope | None] = ContextVar("stagewise_privacy", default=None)


def current_privacy() -> PrivacyScope | None:
    """The scope of the policy the current request runs under (`protecting`), or None."""
    return _scope.get()


def privacy_scope(policy: PrivacyPolicy | PrivacyScope | None) -> PrivacyScope | None:
    """The scope an observer writes through.

    That is the current request's when it runs under `policy` (or `policy` is None), else a new one for `policy`.
    """
    if isinstance(policy, PrivacyScope):
        return policy
    current = _scope.get()
    if policy is None or (current is not None and current.policy is policy):
        return current
    return PrivacyScope(policy)


@contextmanager
def protecting(policy: PrivacyPolicy | None) -> Iterator[PrivacyScope | None]:
    """Requests in this block keep their records through `policy` (None: no change).

    The observers that write them find it, and log records made in the block (this thread, its
    tasks and the threads that copy its context) are redacted when they are made.
    """
    if policy is None:
        yield _scope.get()
        return
    _install_log_redaction()
    scope = privacy_scope(policy)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


_factory_lock = threading.Lock()
_installed = False


def _install_log_redaction() -> None:
    """Wrap the log record factory once.

    A record made under a policy is then redacted as it is made, whichever logger or handler sees it later.
    """
    global _installed
    with _factory_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):
            record = previous(*args, **kwargs)
            scope = _scope.get()
            if scope is not None:
                redact_log_record(record, scope.text)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class PrivacyFilter(logging.Filter):
    """A logging filter that redacts every record it passes with `policy` (whatever request made it).

    Add it to a handler to keep personal data out of everything the handler writes, including
    records made outside any request: `handler.addFilter(PrivacyFilter(policy))`.

    Args:
        policy: the policy to redact with.
    """

    def __init__(self, policy: PrivacyPolicy):
        super().__init__()
        self.policy = policy

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place (message, traceback, stack) and pass it."""
        scope = _scope.get()
        redact_log_record(record, scope.text if scope is not None and scope.policy is self.policy
                           else self.policy.text)
        return True
