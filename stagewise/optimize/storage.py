"""Where a study lives: any Optuna storage, chosen by URL, shared by every worker of the study.

- `sqlite:///path.db`: the default, one process (`OUT/optuna.db`);
- `postgresql://user:password@host/db`: many workers on many machines;
- `journal:///path.log` (a journal file, for processes on one machine or a shared disk) or
  `redis://host:port/db` (a Redis journal).

Database storages keep a heartbeat per running trial: the trial of a worker that died is
marked failed after `GRACE_PERIOD` seconds without one, and run again by the next worker
(`RetryHeartbeatStaleTrialCallback`), so it is neither lost nor counted twice.

Workers share a study on these terms: the study records its config key by key when it is
created (`open_study`) and a worker whose config differs is refused, naming the keys;
trials past the study's budget are not run (`within_budget`); the process that created
the study waits for trials still running elsewhere (`wait_for_others`).
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from stagewise.errors import BudgetError, StoreError
from stagewise.redaction import redact, scrub

__all__ = ["StorageError", "TrialBudgetSpent", "counted", "differences", "open_storage", "open_study",
           "study_names", "trial_budget", "wait_for_others", "within_budget"]

# Heartbeats, stale-trial retries and fail_stale_trials are flagged "experimental" by Optuna 5.0 (pinned).
warnings.filterwarnings("ignore", category=ExperimentalWarning)

HEARTBEAT_INTERVAL = 2
GRACE_PERIOD = 10


class StorageError(StoreError, ValueError):
    """A study storage that cannot be opened, or a study that is not in it."""


def open_storage(url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD):
    """The Optuna storage at `url`; a clear error (without the password) when it cannot be opened."""
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
    """The names of the studies in `storage`."""
    return sorted(optuna.study.get_all_study_names(storage))


# --- a study shared by workers ------------------------------------------------------------------

SIGNATURE_ATTR = "stagewise_config"  # the study's config, key by key (Study.signature)
LEGACY_SIGNATURE_ATTR = "stagewise_signature"  # before: by group (space, splits, ...), not comparable key by key
BUDGET_ATTR = "stagewise_trials"  # the study's trial budget (a rerun of optimize may raise it)


class TrialBudgetSpent(BudgetError):
    """A trial asked for after the study's budget was spent (by concurrent workers)."""


def differences(signature: dict[str, str], study: optuna.Study, *, trials: int | None, create: bool) -> list[str]:
    """Each key in which `signature` differs from `study`'s, with both values.

    `split.examples` is left out when a split setting or the data already explains it; the
    trial budget counts for a worker only (`optimize` may raise it; a worker's `--trials`
    caps its own trials and is not the config's).
    """
    theirs = study.user_attrs.get(SIGNATURE_ATTR, {})
    keys = sorted(k for k in set(signature) | set(theirs) if signature.get(k) != theirs.get(k))
    explained = [k for k in keys if k == "data" or (k.startswith("split.") and k != "split.examples")]
    if "split.examples" in keys and explained:
        keys.remove("split.examples")
    shown = {k: (theirs.get(k, "(none)"), signature.get(k, "(none)")) for k in keys}
    budget = study.user_attrs.get(BUDGET_ATTR)
    if not create and trials is not None and budget is not None and budget != trials:
        shown["search.trials"] = (budget, trials)
    return [f"{key} (the study's {study_value}, this config's {value})"
            for key, (study_value, value) in sorted(shown.items())]


def open_study(name: str, url: str, *, objectives: list[str], sampler, pruner, signature: dict[str, str],
               trials: int | None, create: bool) -> optuna.Study:
    """The study `name` in the storage at `url`: created (or continued) when `create`, else joined by a worker.

    Its config `signature` is recorded once; a config that differs from the recorded one, key by
    key, is a `StorageError` naming the keys.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    if not create and name not in study_names(storage):
        names = study_names(storage)
        raise StorageError(f"no study named {name!r} in {redact(url)} (studies: {', '.join(names) or 'none'}); "
                           "start it with stagewise optimize")
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, directions=directions,
                                sampler=sampler, pruner=pruner)
    if create and not study.metric_names:  # optuna-dashboard shows the objectives by these names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(objectives)
    if SIGNATURE_ATTR not in study.user_attrs:
        if not create and LEGACY_SIGNATURE_ATTR in study.user_attrs:
            raise StorageError(f"study {name!r} was started by an older stagewise, which recorded its config by "
                               "group: run stagewise optimize on it once (with its own config) to record it key by "
                               "key, then start the workers")
        study.set_user_attr(SIGNATURE_ATTR, signature)
    differing = differences(signature, study, trials=trials, create=create)
    if differing:
        remedy = ("a worker must run the study's own config (its --trials caps only its own trials)" if not create
                  else "continue it with its own config, or start another study (--study NAME)")
        raise StorageError(f"study {name!r}: this config differs from the study's in {'; '.join(differing)}; "
                           f"{remedy}")
    if create and trials is not None:  # a rerun of optimize may raise the budget
        study.set_user_attr(BUDGET_ATTR, trials)
    return study


def trial_budget(study: optuna.Study, trials: int | None) -> int:
    """The trials the study may run: `trials`, else the budget its creator recorded."""
    return int(study.user_attrs.get(BUDGET_ATTR, trials)) if trials is None else trials


def counted(study: optuna.Study) -> int:
    """Trials that count against the budget: completed or pruned (failed ones are retried)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def within_budget(study: optuna.Study, budget: int, objective):
    """`objective`, checking the trial budget first.

    A trial whose number falls past the budget (workers asked for trials at once) is not run, and
    stops this worker (`TrialBudgetSpent`).
    """

    def checked(trial: optuna.Trial):
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
                   and t.state != TrialState.FAIL]
        if len(earlier) >= budget:
            study.stop()  # this worker is done: the budget is taken (some trials may still be running)
            raise TrialBudgetSpent(f"trial {trial.number}: the study's {budget} trials are already taken")
        return objective(study, trial)

    return checked


def wait_for_others(study: optuna.Study, objective, timeout_s: float = 900) -> None:
    """Until no trial is running elsewhere.

    A dead worker's trial turns failed after its grace period and is queued again
    (RetryHeartbeatStaleTrialCallback): queued trials left over are run here.
    """
    from optuna.storages import fail_stale_trials

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(1.0)
            continue
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            return
        study.optimize(objective, n_trials=len(waiting), catch=(TrialBudgetSpent,))
