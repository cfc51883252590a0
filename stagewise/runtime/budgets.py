"""Cost budgets that hold under concurrency and restarts: per request, and per tenant per day.

Before each model call, [`Budget`][stagewise.runtime.Budget] *reserves* the call's worst-case cost (its input tokens
and `max_tokens` of output at the model's prices) against the request's budget and its
tenant's daily budget, atomically; after the call it *settles* the reservation to what the call
cost. A call that failed or never answered (a timed-out request) stays charged its estimate: the
provider may bill it. Concurrent requests of one tenant, parallel branches of one request and
server processes sharing a store therefore never spend more than the budget, whatever their
timing.

A tenant's daily spend lives in a [`SpendStore`][stagewise.runtime.SpendStore], chosen by URL
([`open_spend_store`][stagewise.runtime.open_spend_store]):

- `None`: in process memory, under a lock (forgotten on restart);
- `sqlite:///path/spend.db`: a SQLite file; every reservation is one `BEGIN IMMEDIATE`
  transaction, so processes sharing the file share the spend;
- `redis://host:port/db`: Redis, each reservation one Lua script (atomic across processes);
  keys `stagewise:spend:<tenant>:<day>` expire after a week.

Amounts are stored as integer nano-dollars (1e-9 USD) so that sums are exact. Days are UTC dates.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagewise.errors import BudgetError, ConfigError, StoreError
from stagewise.redaction import redact
from stagewise.runtime.connections import connect_redis

__all__ = [
    "Budget", "BudgetExceeded", "MemorySpendStore", "RedisSpendStore", "Reservation", "SQLiteSpendStore",
    "SpendStore", "current_tenant", "describe_store", "open_spend_store", "tenant_scope",
]

NANO = 1_000_000_000  # nano-dollars per dollar


def to_units(usd: float) -> int:
    """USD as integer nano-dollars, rounded up (a reservation never undercounts)."""
    units = usd * NANO
    return int(units) + (units > int(units))


def _usd(amount: float) -> str:
    """An amount in US dollars to the nano-dollar budgets count in, without trailing zeros: `$0.0000025`."""
    return "$" + (f"{amount:.9f}".rstrip("0").rstrip(".") or "0")


def today() -> str:
    """The current UTC date, `YYYY-MM-DD`: the day a tenant's budget counts."""
    return dt.datetime.now(dt.UTC).date().isoformat()


class BudgetExceeded(BudgetError, RuntimeError):
    """The next call would take the request (or its tenant's day) over its cost budget."""

    def __init__(self, message: str, partial: dict[str, str], estimate_usd: float = 0.0):
        super().__init__(message)
        self.partial = partial  # section id -> content: what the request produced before it was stopped
        self.estimate_usd = estimate_usd  # the worst-case cost of the call that was not made


_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("stagewise_tenant", default=None)


@contextmanager
def tenant_scope(tenant: str | None):
    """Calls inside the block are charged to `tenant`'s daily budget."""
    token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(token)


def current_tenant() -> str | None:
    """The tenant set by the innermost [`tenant_scope`][stagewise.runtime.tenant_scope], if any."""
    return _tenant.get()


# --- spend stores ---------------------------------------------------------------------------

class SpendStore:
    """Where tenants' daily spend is kept (integer nano-dollars per tenant and UTC day).

    Contract: `reserve` checks and adds in one atomic step, for every thread and every
    process sharing the store; `add` adjusts (a settlement: actual minus reserved, which may
    be negative); `spent` reads. Methods are thread safe. A store that cannot be reached
    raises [`StoreError`][stagewise.errors.StoreError] (or the driver's error, e.g. `redis.RedisError`).
    """

    def reserve(self, tenant: str, day: str, amount: int, limit: int) -> int | None:
        """Add `amount` unless the day's spend would go over `limit`: None when added, else the spend."""
        raise NotImplementedError

    def add(self, tenant: str, day: str, amount: int) -> None:
        """Add `amount` (may be negative) to the tenant's day, without a limit."""
        raise NotImplementedError

    def spent(self, tenant: str, day: str) -> int:
        """The tenant's spend (settled and reserved) on `day`."""
        raise NotImplementedError


class MemorySpendStore(SpendStore):
    """In process memory under a lock; forgotten on restart. Days other than today are pruned."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _prune(self, day: str) -> None:
        for key in [k for k in self._spent if k[1] < day]:
            del self._spent[key]

    def reserve(self, tenant: str, day: str, amount: int, limit: int) -> int | None:
        """See [`SpendStore.reserve`][stagewise.runtime.SpendStore.reserve]."""
        with self._lock:
            self._prune(day)
            spent = self._spent.get((tenant, day), 0)
            if spent + amount > limit:
                return spent
            self._spent[(tenant, day)] = spent + amount
            return None

    def add(self, tenant: str, day: str, amount: int) -> None:
        """See [`SpendStore.add`][stagewise.runtime.SpendStore.add]."""
        with self._lock:
            self._spent[(tenant, day)] = self._spent.get((tenant, day), 0) + amount

    def spent(self, tenant: str, day: str) -> int:
        """See [`SpendStore.spent`][stagewise.runtime.SpendStore.spent]."""
        with self._lock:
            return self._spent.get((tenant, day), 0)


class SQLiteSpendStore(SpendStore):
    """A SQLite file: table `stagewise_spend(tenant, day, nano_usd)`; shared by processes on one machine.

    Args:
        path: the database file.

    Raises:
        StoreError: the file cannot be opened.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS stagewise_spend (tenant TEXT NOT NULL, day TEXT NOT NULL, "
                             "nano_usd INTEGER NOT NULL, PRIMARY KEY (tenant, day))")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the spend store {str(self.path)!r}: {exc}") from None
        self._lock = threading.Lock()

    def _transaction(self, tenant: str, day: str, amount: int, limit: int | None) -> int | None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")  # the write lock first: check and add are one step
                try:
                    row = self._db.execute("SELECT nano_usd FROM stagewise_spend WHERE tenant = ? AND day = ?",
                                           (tenant, day)).fetchone()
                    spent = row[0] if row else 0
                    if limit is not None and spent + amount > limit:
                        self._db.execute("ROLLBACK")
                        return spent
                    self._db.execute("INSERT INTO stagewise_spend (tenant, day, nano_usd) VALUES (?, ?, ?) "
                                     "ON CONFLICT (tenant, day) DO UPDATE SET nano_usd = nano_usd + excluded.nano_usd",
                                     (tenant, day, amount))
                    self._db.execute("COMMIT")
                    return None
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"the spend store {str(self.path)!r}: {exc}") from None

    def reserve(self, tenant: str, day: str, amount: int, limit: int) -> int | None:
        """See [`SpendStore.reserve`][stagewise.runtime.SpendStore.reserve]."""
        return self._transaction(tenant, day, amount, limit)

    def add(self, tenant: str, day: str, amount: int) -> None:
        """See [`SpendStore.add`][stagewise.runtime.SpendStore.add]."""
        self._transaction(tenant, day, amount, None)

    def spent(self, tenant: str, day: str) -> int:
        """See [`SpendStore.spent`][stagewise.runtime.SpendStore.spent]."""
        with self._lock:
            try:
                row = self._db.execute("SELECT nano_usd FROM stagewise_spend WHERE tenant = ? AND day = ?",
                                       (tenant, day)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"the spend store {str(self.path)!r}: {exc}") from None
        return row[0] if row else 0


_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit >= 0 and spent + amount > limit then return {0, spent} end
redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], 604800)
return {1, spent + amount}
"""


class RedisSpendStore(SpendStore):
    """Redis, shared by every process using it; each reservation is one Lua script.

    Calls time out after `socket_timeout_s` (a stalled Redis fails the call instead of hanging it).

    Args:
        url: the Redis URL.
        socket_timeout_s: seconds a command may wait for Redis.

    Raises:
        StoreConnectionError: Redis does not answer.
    """

    def __init__(self, url: str, *, socket_timeout_s: float = 2.0) -> None:
        self.url = url
        client = connect_redis(url, "the spend store's Redis", socket_timeout=socket_timeout_s)
        self._client = client
        self._script = client.register_script(_RESERVE)

    @staticmethod
    def _key(tenant: str, day: str) -> str:
        return f"stagewise:spend:{tenant}:{day}"

    def reserve(self, tenant: str, day: str, amount: int, limit: int) -> int | None:
        """See [`SpendStore.reserve`][stagewise.runtime.SpendStore.reserve]."""
        ok, spent = self._script(keys=[self._key(tenant, day)], args=[amount, limit])
        return None if int(ok) == 1 else int(spent)

    def add(self, tenant: str, day: str, amount: int) -> None:
        """See [`SpendStore.add`][stagewise.runtime.SpendStore.add]."""
        self._script(keys=[self._key(tenant, day)], args=[amount, -1])

    def spent(self, tenant: str, day: str) -> int:
        """See [`SpendStore.spent`][stagewise.runtime.SpendStore.spent]."""
        return int(self._client.get(self._key(tenant, day)) or 0)


def open_spend_store(url: str | None) -> SpendStore:
    """The spend store at `url`: None (memory), `sqlite:///path` or `redis://...` (see the module)."""
    if not url:
        return MemorySpendStore()
    if url.startswith("sqlite:///"):
        return SQLiteSpendStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSpendStore(url)
    raise ConfigError(f"spend store URL {redact(url)!r}: use sqlite:///PATH or redis://HOST:PORT/DB")


# --- the budget -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reservation:
    """A call's reserved worst case.

    [`Budget.settle`][stagewise.runtime.Budget.settle] replaces it with what the call cost.
    """

    tenant: str | None
    day: str
    estimate_usd: float
    units: int  # the tenant's reserved nano-dollars (0 without a tenant budget)
    ledger: Any  # the request's usage ledger (its per-request reservations)


class Budget:
    """A cost budget per request and per tenant per day (USD, nominal costs), reserved before each call.

    `per_tenant_day_usd` is every tenant's daily budget unless `tenant_day_usd` names its own;
    `store` keeps the spend (a [`SpendStore`][stagewise.runtime.SpendStore] or a URL for
    [`open_spend_store`][stagewise.runtime.open_spend_store]). Thread safe; with a shared store (SQLite, Redis), safe
    across processes.

    Args:
        per_request_usd: the most one request may cost (None: unlimited).
        per_tenant_day_usd: every tenant's daily budget (None: unlimited).
        tenant_day_usd: tenant -> its own daily budget.
        store: the spend store, or its URL (None: in memory, for this process only).

    Raises:
        ConfigError: a budget is not a number >= 0.
    """

    def __init__(self, per_request_usd: float | None = None, per_tenant_day_usd: float | None = None, *,
                 tenant_day_usd: dict[str, float] | None = None, store: SpendStore | str | None = None):
        for name, value in [("per_request_usd", per_request_usd), ("per_tenant_day_usd", per_tenant_day_usd),
                            *((f"tenant_day_usd[{t!r}]", v) for t, v in (tenant_day_usd or {}).items())]:
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"budget {name} must be a number >= 0, got {value!r}")
        self.per_request_usd, self.per_tenant_day_usd = per_request_usd, per_tenant_day_usd
        self.tenant_day_usd = dict(tenant_day_usd or {})
        self.store = store if isinstance(store, SpendStore) else open_spend_store(store)
        self._outstanding: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ledger -> reserved USD
        self._lock = threading.Lock()

    def tenant_limit(self, tenant: str | None) -> float | None:
        """The tenant's daily budget (its own, else `per_tenant_day_usd`); None: unlimited."""
        if not tenant:
            return None
        return self.tenant_day_usd.get(tenant, self.per_tenant_day_usd)

    def tenant_spent(self, tenant: str, day: str | None = None) -> float:
        """What the tenant spent (and has reserved) on `day` (default: today, UTC), in USD."""
        return self.store.spent(tenant, day or today()) / NANO

    def reserve(self, stage: str, run, estimate_usd: float) -> Reservation:
        """Reserve a call's worst case for `run`'s request and the current tenant.

        Raises:
            BudgetExceeded: the worst case does not fit (the error carries the request's partial results).
        """
        ledger, tenant, day = run.ledger, current_tenant(), today()
        problem = None
        with self._lock:  # the request's check and reservation are one step for its parallel branches
            outstanding = self._outstanding.get(ledger, 0.0)
            spent = ledger.total_cost + outstanding
            if self.per_request_usd is not None and spent + estimate_usd > self.per_request_usd:
                problem = (f"request budget {_usd(self.per_request_usd)}: spent {_usd(spent)}, stage {stage!r} would "
                           f"cost up to {_usd(estimate_usd)}")
            else:
                self._outstanding[ledger] = outstanding + estimate_usd
        units, limit = 0, self.tenant_limit(tenant)
        if problem is None and limit is not None:
            units = to_units(estimate_usd)
            try:
                refused = self.store.reserve(tenant, day, units, int(limit * NANO))
            except BaseException:
                self._release(ledger, estimate_usd)
                raise
            if refused is not None:
                self._release(ledger, estimate_usd)
                problem = (f"tenant {tenant!r} daily budget {_usd(limit)}: spent {_usd(refused / NANO)} today "
                           f"(this request {_usd(spent)}), stage {stage!r} would cost up to {_usd(estimate_usd)}")
        if problem:
            partial = {s.id: s.content for s in run.context.sections.values() if s.kind == "stage_output"}
            raise BudgetExceeded(f"stopped before stage {stage!r}: {problem}", partial, estimate_usd)
        return Reservation(tenant, day, estimate_usd, units, ledger)

    def _release(self, ledger, estimate_usd: float) -> None:
        with self._lock:
            left = self._outstanding.get(ledger, 0.0) - estimate_usd
            if left > 1e-15:
                self._outstanding[ledger] = left
            else:
                self._outstanding.pop(ledger, None)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the reservation by what the call cost.

        That is its estimate for a call that failed, 0 for a call that was never made. The call's
        recorded cost is in the request's ledger by now.
        """
        self._release(reservation.ledger, reservation.estimate_usd)
        if reservation.units:
            delta = to_units(cost_usd) - reservation.units
            if delta:
                self.store.add(reservation.tenant, reservation.day, delta)


def describe_store(store: SpendStore) -> str:
    """Where a spend store keeps the spend, for messages (passwords hidden)."""
    if isinstance(store, SQLiteSpendStore):
        return f"SQLite {str(store.path)!r}"
    if isinstance(store, RedisSpendStore):
        return f"Redis {redact(store.url)}"
    return "process memory"

