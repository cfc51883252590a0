"""Connections of the runtime's stores to PostgreSQL and Redis, with errors that name the URL without its password."""

from __future__ import annotations

from stagewise.errors import StoreError
from stagewise.redaction import redact, scrub


class StoreConnectionError(StoreError, ConnectionError):
    """A store URL that cannot be opened; the message shows the URL without its password."""


def connect_postgres(url: str, what: str, table: str, ddl: list[str]):
    """An autocommit PostgreSQL connection, with `table` created by `ddl`.

    The table is created under an advisory lock: processes opening the store at once must not race
    on CREATE TABLE.
    """
    import psycopg

    try:
        db = psycopg.connect(url, autocommit=True, connect_timeout=5)
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            for statement in ddl:
                db.execute(statement)
    except psycopg.Error as exc:
        raise StoreConnectionError(f"cannot connect to {what} {redact(url)}: {scrub(str(exc).strip(), url)}") from None
    return db


def connect_redis(url: str, what: str, *, shown: str | None = None, socket_timeout: float | None = None):
    """A Redis client that answered a ping (bytes responses, as pybreaker needs).

    Args:
        url: the Redis URL to connect to.
        what: what the connection is for, for error messages.
        shown: the URL the user gave, when `url` is a cleaned-up form of it.
        socket_timeout: seconds a command may wait for Redis before it fails (None: redis-py's default).

    Raises:
        StoreConnectionError: Redis does not answer the ping (the message redacts the URL's password).
    """
    import redis

    shown = shown or url
    options = {} if socket_timeout is None else {"socket_timeout": socket_timeout}
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, **options)
        client.ping()
    except redis.RedisError as exc:
        raise StoreConnectionError(f"cannot connect to {what} {redact(shown)}: {scrub(str(exc), shown)}") from None
    return client
