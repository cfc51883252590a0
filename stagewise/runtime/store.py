"""The shared context store: namespaced state of runs, by run, stage and kind.

Every write is an append to an entry (`run`, `stage`, `kind`, `key`), so writers never
overwrite each other: `get` reads an entry's latest value, `values` all of them in write
order. Parallel branches of a run, and other processes, share state through it; a
[`ContextRecorder`][stagewise.runtime.ContextRecorder] mirrors every section a stage adds, so any later stage (or a
debugging session) can read what came before. Backends, chosen by URL:

- `sqlite:///path.db` (default): one file, transactions;
- `redis://host:port/db?ttl=SECONDS`: short-lived state, every entry of a run expiring
  `ttl` seconds after its last write (default one day);
- `postgresql://user:password@host/db`: long-lived state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stagewise.programs.run import Observer, StageEvent, StepEvent, current_run
from stagewise.redaction import redact, scrub
from stagewise.runtime.connections import StoreConnectionError, connect_postgres, connect_redis
from stagewise.runtime.privacy import PrivacyPolicy, current_privacy, privacy_scope, protecting

DEFAULT_URL = "sqlite:///stagewise-context.db"
DEFAULT_TTL = 86_400


class ContextStore(ABC):
    """Append-only entries by run, stage, kind and key (see the module).

    A backend implements `append` and `entries`; `values` and `get` read an entry through them.
    """

    url: str

    @abstractmethod
    def append(self, run: str, stage: str, kind: str, key: str, value: Any) -> None:
        """Add a value to an entry (JSON-serializable values)."""

    @abstractmethod
    def entries(self, run: str, stage: str | None = None, kind: str | None = None) -> list[dict]:
        """Every write of a run (optionally one stage's or kind's), in write order.

        Each is `{"stage", "kind", "key", "value"}`.
        """

    def values(self, run: str, stage: str, kind: str, key: str) -> list[Any]:
        """Every value written to an entry, in write order."""
        return [e["value"] for e in self.entries(run, stage, kind) if e["key"] == key]

    def get(self, run: str, stage: str, kind: str, key: str, default: Any = None) -> Any:
        """An entry's latest value, else `default`."""
        found = self.values(run, stage, kind, key)
        return found[-1] if found else default

    def close(self) -> None:  # noqa: B027 - a deliberate no-op default, not abstract: overriding is optional
        """Release the connection."""


_SCHEMA = ("CREATE TABLE IF NOT EXISTS stagewise_context (id {serial} PRIMARY KEY, run TEXT NOT NULL, "
           "stage TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL)")
_INDEX = "CREATE INDEX IF NOT EXISTS stagewise_context_run ON stagewise_context (run, id)"


def _filters(stage, kind, mark: str) -> tuple[str, list]:
    clauses, params = [], []
    for column, value in (("stage", stage), ("kind", kind)):
        if value is not None:
            clauses.append(f" AND {column} = {mark}")
            params.append(value)
    return "".join(clauses), params


class SQLiteContextStore(ContextStore):
    """A SQLite file (WAL mode); the threads of a process share one connection.

    Args:
        url: `sqlite:///path` (default path `stagewise-context.db`).

    Raises:
        StoreConnectionError: the file cannot be opened.
    """
    def __init__(self, url: str):
        self.url = url
        path = Path(url.removeprefix("sqlite:///") or "stagewise-context.db")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA.format(serial="INTEGER"))
            self._db.execute(_INDEX)
        except (sqlite3.Error, OSError) as exc:
            raise StoreConnectionError(f"cannot open the context store {redact(url)}: {scrub(str(exc), url)}") from None
        self._lock = threading.Lock()

    def append(self, run, stage, kind, key, value):
        """Add a value to an entry (JSON-serializable values)."""
        with self._lock:
            self._db.execute("INSERT INTO stagewise_context (run, stage, kind, key, value) VALUES (?, ?, ?, ?, ?)",
                             (run, stage, kind, key, json.dumps(value)))

    def entries(self, run, stage=None, kind=None):
        """Every write of a run (optionally one stage's or kind's), in write order."""
        where, params = _filters(stage, kind, "?")
        with self._lock:
            rows = self._db.execute(f"SELECT stage, kind, key, value FROM stagewise_context WHERE run = ?{where} "
                                    "ORDER BY id", [run, *params]).fetchall()
        return [{"stage": s, "kind": k, "key": key, "value": json.loads(v)} for s, k, key, v in rows]

    def close(self):
        """Close the connection."""
        self._db.close()


class PostgresContextStore(ContextStore):
    """A PostgreSQL table; many processes may write at once.

    Args:
        url: a `postgresql://` URL.

    Raises:
        StoreConnectionError: the database cannot be reached.
    """
    def __init__(self, url: str):
        self.url = url
        self._db = connect_postgres(url, "the context store", "stagewise_context",
                                    [_SCHEMA.format(serial="BIGSERIAL"), _INDEX])
        self._lock = threading.Lock()

    def append(self, run, stage, kind, key, value):
        """Add a value to an entry (JSON-serializable values)."""
        with self._lock:
            self._db.execute("INSERT INTO stagewise_context (run, stage, kind, key, value) VALUES (%s, %s, %s, %s, %s)",
                             (run, stage, kind, key, json.dumps(value)))

    def entries(self, run, stage=None, kind=None):
        """Every write of a run (optionally one stage's or kind's), in write order."""
        where, params = _filters(stage, kind, "%s")
        with self._lock:
            rows = self._db.execute(f"SELECT stage, kind, key, value FROM stagewise_context WHERE run = %s{where} "
                                    "ORDER BY id", [run, *params]).fetchall()
        return [{"stage": s, "kind": k, "key": key, "value": json.loads(v)} for s, k, key, v in rows]

    def close(self):
        """Close the connection."""
        self._db.close()


class RedisContextStore(ContextStore):
    """One Redis list per run (RPUSH is atomic); the run's list expires `ttl` seconds after its last write."""

    def __init__(self, url: str):
        self.url = url
        query = parse_qs(urlsplit(url).query)
        self.ttl = int(query.get("ttl", [DEFAULT_TTL])[0])
        self._db = connect_redis(url.split("?", 1)[0], "the context store", shown=url)

    def _key(self, run: str) -> str:
        return f"stagewise:context:{run}"

    def append(self, run, stage, kind, key, value):
        """Add a value to an entry (JSON-serializable values)."""
        entry = json.dumps({"stage": stage, "kind": kind, "key": key, "value": value})
        with self._db.pipeline(transaction=True) as pipe:
            pipe.rpush(self._key(run), entry)
            pipe.expire(self._key(run), self.ttl)
            pipe.execute()

    def entries(self, run, stage=None, kind=None):
        """Every write of a run (optionally one stage's or kind's), in write order."""
        found = [json.loads(raw) for raw in self._db.lrange(self._key(run), 0, -1)]
        return [e for e in found if (stage is None or e["stage"] == stage) and (kind is None or e["kind"] == kind)]

    def close(self):
        """Close the connection."""
        self._db.close()


def open_context_store(url: str | None = None) -> ContextStore:
    """The context store at `url` (see the module for the schemes; default `sqlite:///stagewise-context.db`)."""
    url = url or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SQLiteContextStore(url)
    if scheme in ("postgresql", "postgres"):
        return PostgresContextStore(url)
    if scheme in ("redis", "rediss"):
        return RedisContextStore(url)
    raise StoreConnectionError(f"context store {redact(url)}: unknown scheme {scheme!r} "
                               "(use sqlite:///path, redis://host:port/db or postgresql://...)")


class ContextRecorder(Observer):
    """Mirrors every section a stage adds into `store`, under the run's id (or request id).

    With `privacy` (or inside `protecting(policy)`, as `run(..., privacy=...)` is) each
    section's content and note are redacted before they are written.

    Args:
        store: the context store to write to.
        privacy: the policy that redacts what is written.
    """

    def __init__(self, store: ContextStore, *, privacy: PrivacyPolicy | None = None):
        self.store, self.privacy = store, privacy

    @contextmanager
    def request(self, run, inputs: dict):
        """Wraps a request under the recorder's privacy policy (if any), which learns the inputs."""
        with protecting(self.privacy) as scope:  # the run's stages find the policy
            if scope is not None:
                scope.learn(inputs)  # a dropped input quoted by a stage's output is replaced there too
            yield

    @contextmanager
    def stage(self, event: StageEvent):
        """Wraps a stage execution; when it is done, the sections it added are mirrored."""
        yield
        self._mirror(event, event.stage.name)

    @contextmanager
    def step(self, event: StepEvent):
        """A route's, a retrieval's or an aggregation's sections, mirrored like a stage's."""
        yield
        self._mirror(event, event.name)

    def _mirror(self, event: StageEvent | StepEvent, name: str) -> None:
        run = event.run.run_id or event.run.request_id
        scope = privacy_scope(self.privacy)
        if scope is not None and event.outputs:
            scope.learn(event.outputs)
        for section in event.added:
            content, note = section.content, section.note
            if scope is not None:
                content, note = scope.value(content, section.name), scope.text(note) if note else note
            self.store.append(run, name, section.kind, section.name,
                              {"id": section.id, "content": content, "tokens": section.tokens,
                               "lineage": list(section.lineage), "note": note})


class Shared:
    """The store as seen from inside a run: `shared(store).append(...)` in a stage or a branch."""

    def __init__(self, store: ContextStore, run: str):
        self.store, self.run = store, run

    def append(self, stage: str, kind: str, key: str, value: Any) -> None:
        """Append `value` to the run's entry (redacted under the run's privacy policy, if any)."""
        scope = current_privacy()
        self.store.append(self.run, stage, kind, key, scope.value(value, key) if scope is not None else value)

    def get(self, stage: str, kind: str, key: str, default: Any = None) -> Any:
        """The entry's latest value in this run, else `default`."""
        return self.store.get(self.run, stage, kind, key, default)

    def values(self, stage: str, kind: str, key: str) -> list[Any]:
        """Every value written to the entry in this run, in write order."""
        return self.store.values(self.run, stage, kind, key)


def shared(store: ContextStore) -> Shared:
    """The current run's namespace of `store` (call inside a program run)."""
    run = current_run()
    if run is None:
        raise RuntimeError("shared(store) reads the current run: call it while a program runs")
    return Shared(store, run.run_id or run.request_id)
