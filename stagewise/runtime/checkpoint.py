"""Checkpoints of program runs, and the stores that keep them.

After every stage a run writes a checkpoint: a plain, versioned JSON record (like LangGraph's
checkpoints) of the run so far. Record version 1:

- `run_id`, `status` (`running`, `failed`, `completed`), `updated` (UTC, ISO 8601);
- `program`: how to rebuild the program (`{"factory", "kwargs"}` or
  `{"export": dir}`), when known; `models`: each stage's model;
- `inputs`; `steps`: the completed stage executions in order, each with its `key`
  (`stage#n`), outputs, the context sections it added and received, notes, tokens, cost,
  latency and model; `error` and `position` of a failed run (the stage it failed at);
  `outputs` of a completed one.

Stores share one small interface and are chosen by URL: `sqlite:///path.db` (the embedded
default), `postgresql://user:password@host/db`, `memory://name` (one process). Each save
appends a row, so a run's history is kept; `load` returns its latest record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt, ValidationError

from stagewise.context.record import SectionKind
from stagewise.errors import StoreError
from stagewise.redaction import redact, scrub
from stagewise.runtime.connections import StoreConnectionError, connect_postgres

CHECKPOINT_VERSION = 1
DEFAULT_URL = "sqlite:///stagewise-runs.db"


class CheckpointError(StoreError, LookupError):
    """A checkpoint that cannot be found or read; the message names the run and the store."""

    def __str__(self) -> str:
        return self.args[0]


class UnknownRunError(CheckpointError):
    """The checkpoint store holds no run with this id."""


class CorruptCheckpointError(CheckpointError):
    """A run's latest checkpoint is not a record stagewise wrote: not JSON, another version, a bad field."""


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


MAX_RECORD_CHARS = 64_000_000  # one run's checkpoint; a larger row is not one stagewise wrote


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class _SectionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")  # rebuilt as a Section: exactly its fields
    name: str
    kind: SectionKind
    source: str
    content: str
    tokens: NonNegativeInt
    lineage: list[str] = []
    note: str | None = None


class _Step(_Row):
    stage: str
    key: str
    model: str | None = None
    outputs: dict[str, Any]
    sections: list[_SectionRecord]
    received: list[str] = []
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat | None = None


class _Record(_Row):
    """The fields of a checkpoint that resume, replay and diff read, with their types."""

    run_id: str
    status: Literal["running", "failed", "completed"]
    program: dict[str, Any] | None = None
    models: dict[str, str | None] = {}
    inputs: dict[str, Any]
    context: list[_SectionRecord] = []
    steps: list[_Step]
    error: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None


class CheckpointStore(ABC):
    """Where checkpoints live: `save` appends one, `load` reads a run's latest."""

    url: str

    @abstractmethod
    def _append(self, run_id: str, status: str, updated: str, text: str) -> None: ...

    @abstractmethod
    def _latest(self, run_id: str) -> str | None: ...

    @abstractmethod
    def _summaries(self, limit: int) -> list[tuple[str, str, str]]: ...

    def save(self, record: dict) -> None:
        """Append `record` as its run's latest checkpoint, stamping its `version` and `updated` time."""
        record["version"], record["updated"] = CHECKPOINT_VERSION, now()
        self._append(record["run_id"], record["status"], record["updated"], json.dumps(record, default=str))

    def load(self, run_id: str) -> dict:
        """The latest checkpoint of `run_id`, checked field by field before anything reads it.

        Raises:
            UnknownRunError: the store has no run `run_id`.
            CorruptCheckpointError: the checkpoint is unreadable or invalid; the message names the run,
                the store and the field at fault.
        """
        text = self._latest(run_id)
        if text is None:
            raise UnknownRunError(f"no run {run_id!r} in the checkpoint store {redact(self.url)}")
        if len(text) > MAX_RECORD_CHARS:
            raise CorruptCheckpointError(f"run {run_id!r}: its latest checkpoint in {redact(self.url)} holds "
                                         f"{len(text):,} characters, more than {MAX_RECORD_CHARS:,}")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptCheckpointError(f"run {run_id!r}: its latest checkpoint in {redact(self.url)} is not valid "
                                         f"JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(record, dict) or record.get("version") != CHECKPOINT_VERSION:
            version = record.get("version") if isinstance(record, dict) else None
            raise CorruptCheckpointError(f"run {run_id!r}: checkpoint version {version!r} in {redact(self.url)}, "
                                         f"expected {CHECKPOINT_VERSION}")
        missing = [k for k in ("run_id", "status", "inputs", "steps") if k not in record]
        if missing:
            raise CorruptCheckpointError(f"run {run_id!r}: its checkpoint in {redact(self.url)} lacks {missing}")
        try:
            _Record.model_validate(record)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise CorruptCheckpointError(f"run {run_id!r}: its checkpoint in {redact(self.url)} has a bad field "
                                         f"{where!r}: {problem['msg']}") from None
        return record

    def runs(self, limit: int = 50) -> list[dict]:
        """The latest runs: id, status, last update."""
        return [{"run_id": r, "status": s, "updated": u} for r, s, u in self._summaries(limit)]

    def find(self, *, since: str | None = None, status: str | None = None, stage: str | None = None,
             limit: int = 50) -> list[dict]:
        """The latest runs (newest first), filtered, each with its stages, calls, tokens and cost.

        With `since` (an ISO 8601 UTC time), the runs updated at or after it; with `status`, the runs
        in that status; with `stage`, the runs that executed that stage. A run whose checkpoint cannot
        be read is listed with status `unreadable`.

        Raises:
            StoreError: `status` is not `running`, `failed` or `completed`.
        """
        if status is not None and status not in ("running", "failed", "completed"):
            raise StoreError(f"status {status!r}: expected running, failed or completed")
        scanned = self._summaries(min(limit * 20, 10_000) if stage else limit * 4 if (since or status) else limit)
        found = []
        for run_id, run_status, updated in scanned:
            if (since is not None and updated < since) or (status is not None and run_status != status):
                continue
            try:
                record = self.load(run_id)
            except CheckpointError as exc:
                found.append({"run_id": run_id, "status": "unreadable", "updated": updated, "stages": [],
                              "calls": 0, "tokens": 0, "cost_usd": 0.0, "error": str(exc)})
                continue
            stages = [step["stage"] for step in record["steps"]]
            if stage is not None and stage not in stages:
                continue
            found.append({"run_id": run_id, "status": run_status, "updated": updated, "stages": stages,
                          "calls": sum(step.get("calls", 0) for step in record["steps"]),
                          "tokens": sum(step.get("input_tokens", 0) + step.get("output_tokens", 0)
                                        for step in record["steps"]),
                          "cost_usd": sum(step.get("cost_usd") or 0.0 for step in record["steps"]),
                          "error": (record.get("error") or {}).get("message")})
            if len(found) == limit:
                break
        return found

    def close(self) -> None:  # noqa: B027 - a deliberate no-op default, not abstract: overriding is optional
        """Release connections (stores that hold none do nothing)."""


class MemoryCheckpoints(CheckpointStore):
    """In one process; stores of the same `memory://name` share their records."""

    _shared: dict[str, dict[str, list[tuple[str, str, str]]]] = {}

    def __init__(self, url: str = "memory://"):
        self.url = url
        self._rows = self._shared.setdefault(url, {})
        self._lock = threading.Lock()

    def _append(self, run_id, status, updated, text):
        with self._lock:
            self._rows.setdefault(run_id, []).append((status, updated, text))

    def _latest(self, run_id):
        rows = self._rows.get(run_id)
        return rows[-1][2] if rows else None

    def _summaries(self, limit):
        latest = [(run_id, rows[-1][0], rows[-1][1]) for run_id, rows in self._rows.items()]
        return sorted(latest, key=lambda row: row[2], reverse=True)[:limit]


_SCHEMA = ("CREATE TABLE IF NOT EXISTS stagewise_checkpoints (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
           "status TEXT NOT NULL, updated TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (run_id, seq))")


class SQLiteCheckpoints(CheckpointStore):
    """A SQLite file (WAL mode: readers never block the writing run).

    The file is created by the first checkpoint written to it: looking a run up in a store that
    does not exist is an [`UnknownRunError`][stagewise.runtime.UnknownRunError] that says so, and leaves no empty file
    behind.
    """

    def __init__(self, url: str):
        self.url = url
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://")
        self.path = Path(path or "stagewise-runs.db")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if self.path.exists():
            self._connect()
        else:  # fail now, not at the first checkpoint, when the file could never be created
            folder = next(parent for parent in self.path.absolute().parents if parent.exists())
            if not folder.is_dir():
                raise StoreConnectionError(f"cannot open the checkpoint store {url}: {folder} is not a directory")

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise StoreConnectionError(f"cannot open the checkpoint store {redact(self.url)}: "
                                           f"{scrub(str(exc), self.url)}") from None
            self._db = db
        return self._db

    def _reader(self) -> sqlite3.Connection | None:
        """The connection, or None while the file does not exist (another process may create it)."""
        return self._db if self._db is not None or not self.path.exists() else self._connect()

    def load(self, run_id: str) -> dict:
        """The latest checkpoint of `run_id` (see `CheckpointStore.load`).

        Raises:
            UnknownRunError: the store's file does not exist, or it has no run `run_id`.
            CorruptCheckpointError: the checkpoint is unreadable or invalid.
        """
        with self._lock:
            missing = self._reader() is None
        if missing:
            raise UnknownRunError(f"no run {run_id!r}: the checkpoint store {redact(self.url)} does not exist "
                                  f"(no file {str(self.path.absolute())!r})")
        return super().load(run_id)

    def _append(self, run_id, status, updated, text):
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO stagewise_checkpoints VALUES (?, (SELECT COALESCE(MAX(seq), -1) + 1 FROM "
                    "stagewise_checkpoints WHERE run_id = ?), ?, ?, ?)", (run_id, run_id, status, updated, text))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _latest(self, run_id):
        with self._lock:
            db = self._reader()
            row = None if db is None else db.execute(
                "SELECT record FROM stagewise_checkpoints WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
                (run_id,)).fetchone()
        return row[0] if row else None

    def _summaries(self, limit):
        with self._lock:
            db = self._reader()
            return [] if db is None else db.execute(
                "SELECT c.run_id, c.status, c.updated FROM stagewise_checkpoints c JOIN (SELECT run_id, MAX(seq) AS "
                "seq FROM stagewise_checkpoints GROUP BY run_id) m ON c.run_id = m.run_id AND c.seq = m.seq "
                "ORDER BY c.updated DESC LIMIT ?", (limit,)).fetchall()

    def close(self):
        """Close the connection, if one was opened."""
        if self._db is not None:
            self._db.close()


class PostgresCheckpoints(CheckpointStore):
    """A PostgreSQL table; many processes may write runs at once."""

    def __init__(self, url: str):
        self.url = url
        self._db = connect_postgres(url, "the checkpoint store", "stagewise_checkpoints",
                                    [_SCHEMA.replace("seq INTEGER", "seq BIGINT")])
        self._lock = threading.Lock()

    def _append(self, run_id, status, updated, text):
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (run_id,))
            self._db.execute(
                "INSERT INTO stagewise_checkpoints VALUES (%s, (SELECT COALESCE(MAX(seq), -1) + 1 FROM "
                "stagewise_checkpoints WHERE run_id = %s), %s, %s, %s)", (run_id, run_id, status, updated, text))

    def _latest(self, run_id):
        with self._lock:
            row = self._db.execute("SELECT record FROM stagewise_checkpoints WHERE run_id = %s ORDER BY seq DESC "
                                   "LIMIT 1", (run_id,)).fetchone()
        return row[0] if row else None

    def _summaries(self, limit):
        with self._lock:
            return self._db.execute(
                "SELECT run_id, status, updated FROM (SELECT DISTINCT ON (run_id) run_id, status, updated "
                "FROM stagewise_checkpoints ORDER BY run_id, seq DESC) latest ORDER BY updated DESC LIMIT %s",
                (limit,)).fetchall()

    def close(self):
        """Close the connection."""
        self._db.close()


def open_checkpoints(url: str | None = None) -> CheckpointStore:
    """The checkpoint store at `url` (default: `sqlite:///stagewise-runs.db`)."""
    url = url or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SQLiteCheckpoints(url)
    if scheme in ("postgresql", "postgres"):
        return PostgresCheckpoints(url)
    if scheme == "memory":
        return MemoryCheckpoints(url)
    raise StoreConnectionError(f"checkpoint store {redact(url)}: unknown scheme {scheme!r} "
                               "(use sqlite:///path, postgresql://... or memory://)")
