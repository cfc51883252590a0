"""Where a study lives: any Optuna storage, chosen by URL, shared by every worker of the study.

- ``sqlite:///path.db``: the default, one process (``OUT/optuna.db``);
- ``postgresql://user:password@host/db``: many workers on many machines;
- ``journal:///path.log`` (a journal file, for processes on one machine or a shared disk) or
  ``redis://host:port/db`` (a Redis journal).

Database storages keep a heartbeat per running trial: the trial of a worker that died is
marked failed after ``GRACE_PERIOD`` seconds without one, and run again by the next worker
(``RetryHeartbeatStaleTrialCallback``), so it is neither lost nor counted twice.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from stagewise.errors import StoreError
from stagewise.redaction import redact, scrub

# Heartbeats, stale-trial retries and fail_stale_trials are flagged "experimental" by Optuna 5.0 (pinned).
warnings.filterwarnings("ignore", category=ExperimentalWarning)

HEARTBEAT_INTERVAL = 2
GRACE_PERIOD = 10


class StorageError(StoreError, ValueError):
    """A study storage that cannot be opened, or a study that is not in it."""


def open_storage(url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD):
    """The Optuna storage at ``url``; a clear error (without the password) when it cannot be opened."""
    scheme = url.split(":", 1)[0].lower()
    try:
        if scheme in ("sqlite", "postgresql", "postgres", "mysql") or scheme.startswith(("postgresql+", "mysql+")):
            if scheme == "postgres":
                url = "postgresql" + url[len("postgres"):]
            engine = {"pool_pre_ping": True}
            if scheme != "sqlite":
                engine["connect_args"] = {"connect_timeout": 5}
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        if scheme == "journal":
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
        if scheme in ("redis", "rediss"):
            from optuna.storages.journal import JournalRedisBackend

            return optuna.storages.JournalStorage(JournalRedisBackend(url))
    except Exception as exc:  # SQLAlchemy, psycopg, redis and OS errors: all mean "cannot open"
        message = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
        raise StorageError(f"cannot open the study storage {redact(url)}: {message}") from None
    raise StorageError(f"study storage {redact(url)}: unknown scheme {scheme!r} "
                       "(sqlite:///path, postgresql://..., journal:///path or redis://...)")


def study_names(storage) -> list[str]:
    return sorted(optuna.study.get_all_study_names(storage))
