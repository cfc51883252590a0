"""Keeping secrets out of messages: store and storage URLs are shown without their password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scrub(message: str, url: str) -> str:
    """An error message with the URL's password removed, wherever a driver quoted it."""
    password = urlsplit(url).password
    return message.replace(password, "***") if password else message
