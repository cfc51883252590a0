"""Resilience of stage calls: retries, fallback models, circuit breakers, a shared rate limiter, budgets.

Install a `Resilience` guard around program calls (`with guarding(resilience): ...`,
as `stagewise serve` does). For every stage call it applies the stage's `StagePolicy`,
whose `mode` is a `FailureMode` (or its string):

- `retry`: retryable errors only (rate limits, timeouts, 5xx, lost connections) are retried
  with exponential backoff and jitter (tenacity); anything else fails the request;
- `fallback`: after the retries, the next model of `fallbacks` is called, with the context
  rendered in its own format and fitted to its own budget (the stage runs again on it);
- `skip`: when every model failed, the stage's outputs are empty and the request goes on,
  marked degraded (`prediction.degraded`);
- `fail`: the first error fails the request.

A circuit breaker per provider endpoint (pybreaker: closed, open, half-open with one probe call)
stops calls to an endpoint after `fail_max` failures for `reset_s` seconds; with a Redis URL
its state is shared by every process. A `RateLimiter` counts requests and tokens per
provider in a sliding window across stages and processes (Redis when configured) and queues or
sheds a call before the provider's limit (`LimitPolicy`). A [`Budget`][stagewise.runtime.Budget]
(`stagewise.runtime.budgets`) reserves each call's worst-case cost before it and settles it after, and stops a request
before the call that would exceed its cost budget (or its tenant's daily budget), keeping the partial
results. Inside `deadline_scope`, no call starts after the deadline (`DeadlineExceeded`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pybreaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from stagewise.context.record import Section
from stagewise.errors import BudgetError, ConfigError, ModelError, StoreError
from stagewise.models.usage import track_usage
from stagewise.programs.run import CallGuard, Run, StageRun
from stagewise.redaction import redact
from stagewise.runtime.budgets import Budget, BudgetExceeded, tenant_scope
from stagewise.runtime.connections import connect_redis

__all__ = [
    "Breakers", "Budget", "BudgetExceeded", "DeadlineExceeded", "EndpointBreaker", "FailureMode", "Limit",
    "LimitPolicy", "RateLimited", "RateLimiter", "Resilience", "StageFailed", "StagePolicy", "deadline_scope",
    "endpoint_of", "is_retryable", "provider_of", "tenant_scope",
]

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
# Exception class names that mean "try again": litellm's, openai's, httpx's and DSPy's own
# (LMTransportError, LMRateLimitError, LMTimeoutError, LMServerError).
RETRYABLE_NAMES = ("timeout", "connection", "transport", "ratelimit", "serviceunavailable", "internalserver",
                   "badgateway", "servererror")


class StageFailed(ModelError, RuntimeError):
    """Every model a stage may use failed; `errors` says how, per model."""

    def __init__(self, stage: str, errors: list[str]):
        super().__init__(f"stage {stage!r} failed on every model: " + "; ".join(errors))
        self.stage, self.errors = stage, errors


class RateLimited(BudgetError, RuntimeError):
    """A call shed by the rate limiter (policy `shed`, or waited longer than `max_wait_s`)."""


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, 5xx and lost connections; not bad requests or parse errors.

    A 4xx answer other than 408, 409, 425 and 429 is the endpoint's definite answer to this
    request (a client error): not retryable, whatever the exception's class or cause is called.
    The circuit breakers count only retryable errors as the endpoint's failures.
    """
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        if type(candidate).__module__.split(".")[0] == "redis":  # our own store, not the model provider
            return False
        status = (getattr(candidate, "status_code", None) or getattr(candidate, "status", None)
                  or getattr(getattr(candidate, "response", None), "status_code", None))
        if isinstance(status, int) and (status in RETRYABLE_STATUS or status >= 500):
            return True
        if isinstance(status, int) and 400 <= status < 500:  # the endpoint answered: a client error
            return False
        if isinstance(candidate, (TimeoutError, ConnectionError)):
            return True
        if any(name in type(candidate).__name__.lower() for name in RETRYABLE_NAMES):
            return True
    return False


class FailureMode(StrEnum):
    """What a `StagePolicy` does when a stage's model call fails (see the module).

    A member equals its string (`FailureMode.SKIP == "skip"`), so the strings of a TOML file or
    of the command line work wherever a mode is expected.
    """

    RETRY = "retry"  # retry retryable errors on the stage's own model, then fail the request
    FALLBACK = "fallback"  # after the retries, the next model of `fallbacks`
    SKIP = "skip"  # as FALLBACK; when every model failed, empty outputs and a degraded request
    FAIL = "fail"  # the first error fails the request (no retry)


@dataclass(frozen=True)
class StagePolicy:
    """How a stage's failed calls are handled: a failure mode, fallback models, retries and backoff.

    `mode` is a `FailureMode` or its string (retry, fallback, skip, fail); a string mode is stored as
    its FailureMode.

    Raises:
        ConfigError: `mode` is not a failure mode.
    """

    mode: FailureMode = FailureMode.RETRY
    fallbacks: tuple[str, ...] = ()  # catalog names, tried in order after the stage's own model
    retries: int = 2  # retries of retryable errors, per model
    backoff_s: float = 0.5  # first backoff; doubles per retry, with jitter
    max_backoff_s: float = 8.0

    def __post_init__(self):
        try:
            object.__setattr__(self, "mode", FailureMode(self.mode))
        except ValueError:
            raise ConfigError(f"stage policy mode {self.mode!r}: use retry, fallback, skip or fail") from None


def endpoint_of(lm) -> str:
    """The provider endpoint a model is called at (its API base, else its catalog name)."""
    spec = getattr(lm, "spec", None)
    base = (getattr(lm, "kwargs", None) or {}).get("api_base") or getattr(spec, "api_base", None)
    return base or getattr(spec, "name", None) or getattr(lm, "model", "unknown")


def provider_of(lm) -> str:
    """The provider a model's calls count against in the rate limiter (its catalog provider)."""
    spec = getattr(lm, "spec", None)
    return getattr(spec, "provider", None) or getattr(lm, "model", "unknown").split("/", 1)[0]


# --- circuit breakers ---------------------------------------------------------------------

class EndpointBreaker(pybreaker.CircuitBreaker):
    """pybreaker's circuit breaker for one endpoint, with a half-open state that admits one probe.

    pybreaker's `calling()` releases its lock before the guarded block runs, so in the half-open
    state every concurrent caller goes through, and it counts an excluded error as a success
    (which closes a half-open circuit). Here, when the reset timeout has passed, exactly one call
    (across processes, with Redis) becomes the probe; the others are refused with
    `pybreaker.CircuitBreakerError` until the probe ends. Only retryable errors
    (`is_retryable`: rate limits, timeouts, 5xx, lost connections) count as failures; any
    other error (a 4xx client error, a parse error) neither opens nor closes the circuit, and
    leaves the failure count as it was. A probe that fails so reopens the circuit; one that succeeds
    closes it; one that ends in a client error leaves it half-open for the next call to probe.

    Args:
        endpoint: the endpoint's name.
        fail_max: retryable failures in a row that open the circuit.
        reset_s: seconds the open circuit stays open before a probe.
        probe_lease_s: the longest a probe holds its slot.
        redis: a Redis client holding the probe slot, shared across processes (None: this process only).
        storage: pybreaker's state storage (None: pybreaker's, in memory).
    """

    def __init__(self, endpoint: str, *, fail_max: int, reset_s: float, probe_lease_s: float,
                 redis=None, storage: pybreaker.CircuitBreakerStorage | None = None):
        super().__init__(fail_max=fail_max, reset_timeout=reset_s, state_storage=storage,
                         exclude=[lambda exc: not is_retryable(exc)], name=endpoint)
        self.probe_lease_s = probe_lease_s
        self._redis = redis
        self._probe_key = f"stagewise:{endpoint}:probe"
        self._probe_local: tuple[str, float] | None = None  # (token, lease end) without Redis

    # The probe slot: one holder at a time, with a lease so a process that died mid-probe frees it.
    def _take_probe(self) -> str | None:
        token = uuid.uuid4().hex
        if self._redis is not None:
            taken = self._redis.set(self._probe_key, token, nx=True, px=max(1, int(self.probe_lease_s * 1000)))
            return token if taken else None
        now = time.monotonic()
        if self._probe_local is not None and self._probe_local[1] > now:
            return None
        self._probe_local = (token, now + self.probe_lease_s)
        return token

    def _release_probe(self, token: str) -> None:
        if self._redis is not None:
            self._redis.eval(_RELEASE_PROBE, 1, self._probe_key, token)
            return
        with self._lock:
            if self._probe_local is not None and self._probe_local[0] == token:
                self._probe_local = None

    def _admit(self) -> str | None:
        """Admit a call: None in the closed state, the probe token for the half-open probe.

        Raises:
            pybreaker.CircuitBreakerError: the call may not reach the endpoint.
        """
        with self._lock:
            state = self.current_state
            if state == pybreaker.STATE_CLOSED:
                return None
            if state == pybreaker.STATE_OPEN:
                opened_at = self._state_storage.opened_at
                if opened_at and dt.datetime.now(dt.UTC) < opened_at + dt.timedelta(seconds=self.reset_timeout):
                    raise pybreaker.CircuitBreakerError(f"circuit open for {redact(self.name)}: not called until "
                                                        f"{self.reset_timeout:g} s after it opened")
            token = self._take_probe()
            if token is None:
                raise pybreaker.CircuitBreakerError(f"circuit half-open for {redact(self.name)}: a probe call "
                                                    "is in flight")
            state = self.current_state  # another process's probe may have ended while this one took the slot
            if state == pybreaker.STATE_CLOSED:
                self._release_probe(token)
                return None
            if state == pybreaker.STATE_OPEN:
                opened_at = self._state_storage.opened_at
                if opened_at and dt.datetime.now(dt.UTC) < opened_at + dt.timedelta(seconds=self.reset_timeout):
                    self._release_probe(token)
                    raise pybreaker.CircuitBreakerError(f"circuit open for {redact(self.name)}: the probe failed")
                self.half_open()
            return token

    def _failed(self, exc: BaseException, probe: bool) -> None:
        """Count a retryable failure; raises CircuitBreakerError (from `exc`) when it opens the circuit."""
        with self._lock:
            self._inc_counter()
            state = self.current_state
            if state == pybreaker.STATE_OPEN and not probe:  # a call admitted before it opened: already open
                return
            if probe or state == pybreaker.STATE_HALF_OPEN or self.fail_counter >= self.fail_max:
                self.open()
                if self._throw_new_error_on_trip:
                    raise pybreaker.CircuitBreakerError(
                        f"circuit opened for {redact(self.name)} after {type(exc).__name__}") from exc

    def _succeeded(self, probe: bool) -> None:
        """Reset the failure count; the probe's success closes the circuit.

        Only the probe closes it: a call admitted before the circuit opened says nothing about the endpoint now.
        """
        with self._lock:
            self._state_storage.reset_counter()
            if probe:
                self.close()

    @contextmanager
    def calling(self):
        """Run the `with` block as one call to the endpoint, by the rules above."""
        token = self._admit()
        try:
            yield
        except BaseException as exc:
            if is_retryable(exc):
                self._failed(exc, probe=token is not None)
            raise  # a client error: the circuit stays as it was
        else:
            self._succeeded(probe=token is not None)
        finally:
            if token is not None:
                self._release_probe(token)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`func(*args, **kwargs)` as one call to the endpoint (see `calling`)."""
        with self.calling():
            return func(*args, **kwargs)


_RELEASE_PROBE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Breakers:
    """One `EndpointBreaker` per endpoint; shared through Redis when `redis_url` is given.

    `fail_max` retryable failures in a row open an endpoint's circuit for `reset_s` seconds;
    then one probe call goes through (one in every process sharing the Redis). `probe_lease_s`
    bounds how long a probe may hold its slot: a process that dies mid-probe frees it then.
    A Redis command waits at most `socket_timeout_s` (a stalled Redis fails the call, not hangs it).

    Args:
        fail_max: retryable failures in a row that open a circuit.
        reset_s: seconds an open circuit stays open before a probe.
        redis_url: a Redis to share the circuits' state through (None: this process only).
        probe_lease_s: the longest a probe holds its slot.
        socket_timeout_s: seconds a Redis command may wait.
    """

    def __init__(self, fail_max: int = 3, reset_s: float = 30.0, redis_url: str | None = None,
                 probe_lease_s: float = 120.0, socket_timeout_s: float = 2.0):
        if fail_max < 1:
            raise ConfigError(f"circuit breaker fail_max must be at least 1, got {fail_max!r}")
        if reset_s < 0 or probe_lease_s <= 0:
            raise ConfigError(f"circuit breaker reset_s must be >= 0 and probe_lease_s > 0, got {reset_s!r} "
                              f"and {probe_lease_s!r}")
        self.fail_max, self.reset_s, self.redis_url = fail_max, reset_s, redis_url
        self.probe_lease_s = probe_lease_s
        self._redis = None
        if redis_url:
            self._redis = connect_redis(redis_url, "the circuit breakers' Redis", socket_timeout=socket_timeout_s)
        self._breakers: dict[str, EndpointBreaker] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: str) -> EndpointBreaker:
        """The breaker of `endpoint` (created on first use)."""
        with self._lock:
            if endpoint not in self._breakers:
                storage = None
                if self._redis is not None:
                    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, self._redis,
                                                            namespace=f"stagewise:{endpoint}")
                self._breakers[endpoint] = EndpointBreaker(
                    endpoint, fail_max=self.fail_max, reset_s=self.reset_s, probe_lease_s=self.probe_lease_s,
                    redis=self._redis, storage=storage)
            return self._breakers[endpoint]

    def state(self, endpoint: str) -> str:
        """`closed`, `open` or `half-open`: the state the endpoint's circuit is stored in."""
        return self(endpoint).current_state


# --- rate limiter -------------------------------------------------------------------------

_SLIDING_WINDOW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local window, max_requests = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_tokens, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local count, used = 0, 0
for i = 1, #entries, 2 do
  count = count + 1
  used = used + tonumber(string.match(entries[i], '|(%d+)$'))
end
if (max_requests > 0 and count + 1 > max_requests) or (max_tokens > 0 and count > 0 and used + tokens > max_tokens) then
  return {0, tostring(tonumber(entries[2]) + window - t)}
end
redis.call('ZADD', KEYS[1], t + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil((window + lease) * 1000))
return {1, '0'}
"""

_RELEASE = """
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[1])
return 1
"""


_COUNT = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(now[1]) + tonumber(now[2]) / 1000000 - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""


@dataclass
class Limit:
    """A rate limit per window: at most `requests` calls and `tokens` tokens (0: no limit)."""

    requests: int = 0
    tokens: int = 0


class LimitPolicy(StrEnum):
    """What a `RateLimiter` does with a call when its window is full.

    A member equals its string (`LimitPolicy.SHED == "shed"`), so `policy="shed"` works too.
    """

    QUEUE = "queue"  # wait for room, at most `max_wait_s`; then RateLimited
    SHED = "shed"  # refuse at once: RateLimited


class RateLimiter:
    """Requests and tokens per provider per `window_s` (60: per minute), across stages and processes.

    A call holds its slot while it is in flight and is counted from the moment it ends, so a
    provider never sees more than the limit in any window of its own, however long a call takes
    to leave (`lease_s` bounds the hold of a process that died mid-call). `policy="queue"`
    waits for room (at most `max_wait_s`), `"shed"` refuses at once (`RateLimited`); see
    `LimitPolicy`.

    Keys ("providers") may be many (`stagewise serve` keys by tenant or client address): in
    process, a key whose window is empty is dropped, and the whole table is swept when it holds
    more than `max_keys`; in Redis each key expires with its window. A Redis command waits at
    most `socket_timeout_s`; a Redis error reaches the caller (`redis.RedisError`).

    Args:
        limits: key (a provider) -> its [`Limit`][stagewise.runtime.resilience.Limit].
        window_s: the window's length in seconds.
        policy: `"queue"` or `"shed"` (a `LimitPolicy`).
        max_wait_s: the longest a queued call waits for room.
        redis_url: a Redis to share the windows through (None: this process only).
        lease_s: the longest a call holds its slot.
        socket_timeout_s: seconds a Redis command may wait.
        max_keys: in process, the number of keys above which the table is swept.

    Raises:
        ConfigError: `policy` is neither queue nor shed.
        StoreConnectionError: `redis_url` is given and Redis does not answer.
    """

    def __init__(self, limits: dict[str, Limit], *, window_s: float = 60.0,
                 policy: LimitPolicy | str = LimitPolicy.QUEUE, max_wait_s: float = 60.0, redis_url: str | None = None,
                 lease_s: float = 300.0, socket_timeout_s: float = 2.0, max_keys: int = 10_000):
        try:
            policy = LimitPolicy(policy)
        except ValueError:
            raise ConfigError(f"rate limiter policy {policy!r}: use queue or shed") from None
        self.limits, self.policy, self.max_wait_s = limits, policy, max_wait_s
        self.window_s, self.lease_s, self.redis_url = window_s, lease_s, redis_url
        self.max_keys = max_keys
        self._script = self._release = self._count = None
        if redis_url:
            client = connect_redis(redis_url, "the rate limiter's Redis", socket_timeout=socket_timeout_s)
            self._script = client.register_script(_SLIDING_WINDOW)
            self._release = client.register_script(_RELEASE)
            self._count = client.register_script(_COUNT)
        self._local: dict[str, list[list]] = {}  # key -> [score, tokens, member]
        self._swept = 0.0
        self._lock = threading.Lock()

    def _sweep(self, now: float) -> None:
        """Drop every key whose window is empty (under the lock)."""
        for key in [k for k, entries in self._local.items() if all(e[0] <= now - self.window_s for e in entries)]:
            del self._local[key]

    def blocked(self, key: str) -> bool:
        """Whether the next call on `key` would be refused now, without counting one."""
        limit = self.limits.get(key) or self.limits.get("*")
        if limit is None or not limit.requests:
            return False
        if self._count is not None:
            return int(self._count(keys=[self._key(key)], args=[self.window_s])) >= limit.requests
        with self._lock:
            now = time.monotonic()
            return sum(1 for e in self._local.get(key, ()) if e[0] > now - self.window_s) >= limit.requests

    @staticmethod
    def _key(provider: str) -> str:
        return f"stagewise:ratelimit:{provider}"

    def _try(self, provider: str, limit: Limit, tokens: int, member: str) -> float:
        """0 when the call may go now (its slot is taken, in flight), else seconds until room may free up."""
        if self._script is not None:
            ok, wait = self._script(keys=[self._key(provider)], args=[self.window_s, limit.requests, limit.tokens,
                                                                     tokens, f"{member}|{tokens}", self.lease_s])
            return 0.0 if int(ok) == 1 else max(0.01, float(wait))
        with self._lock:
            now = time.monotonic()
            if provider not in self._local and len(self._local) >= self.max_keys and \
                    now - self._swept > min(1.0, self.window_s):  # at most one sweep per window (or second)
                self._sweep(now)
                self._swept = now
            entries = self._local.setdefault(provider, [])
            entries[:] = [e for e in entries if e[0] > now - self.window_s]
            entries.sort(key=lambda e: e[0])
            used = sum(e[1] for e in entries)
            if (limit.requests and len(entries) + 1 > limit.requests) or (
                    limit.tokens and entries and used + tokens > limit.tokens):
                return max(0.01, entries[0][0] + self.window_s - now)
            entries.append([now + self.lease_s, tokens, member])
            return 0.0

    def _end(self, provider: str, member: str, tokens: int) -> None:
        if self._release is not None:
            import redis

            try:
                self._release(keys=[self._key(provider)], args=[f"{member}|{tokens}"])
            except redis.RedisError as exc:  # the call was made: never lose its result; the lease frees the slot
                log.warning("rate limiter: could not release a slot in %s: %s", redact(self.redis_url), exc)
            return
        with self._lock:
            for entry in self._local.get(provider, ()):
                if entry[2] == member:
                    entry[0] = time.monotonic()

    @contextmanager
    def slot(self, provider: str, tokens: int = 0):
        """Hold room for one call of `tokens` while it runs; yields the seconds waited for it."""
        limit = self.limits.get(provider) or self.limits.get("*")
        if limit is None:
            yield 0.0
            return
        member = uuid.uuid4().hex
        waited, deadline = 0.0, time.monotonic() + self.max_wait_s
        while True:
            wait = self._try(provider, limit, tokens, member)
            if wait == 0.0:
                break
            if self.policy == LimitPolicy.SHED or time.monotonic() + min(wait, 0.25) > deadline:
                raise RateLimited(f"provider {provider!r}: {limit.requests or '-'} requests / "
                                  f"{limit.tokens or '-'} tokens per {self.window_s:g} s reached"
                                  + ("" if self.policy == LimitPolicy.SHED else f"; waited {waited:.1f} s"))
            pause = min(wait, 0.25)  # a slot held by a call in flight frees up when the call ends
            time.sleep(pause)
            waited += pause
        try:
            yield waited
        finally:
            self._end(provider, member, tokens)

    def acquire(self, provider: str, tokens: int = 0) -> float:
        """Count one call now (its slot is released at once); returns the seconds waited."""
        with self.slot(provider, tokens) as waited:
            return waited


# --- deadlines -----------------------------------------------------------------------------

class DeadlineExceeded(BudgetError, RuntimeError):
    """The request's deadline passed: no further model call is made for it."""


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("stagewise_deadline", default=None)


@contextmanager
def deadline_scope(deadline: float | None):
    """Model calls inside the block are refused (`DeadlineExceeded`) once `time.monotonic()` passes `deadline`.

    None: no deadline. A call already on its way is not interrupted.
    """
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _check_deadline(stage: str) -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the request's deadline passed before stage {stage!r}")


# --- the guard ------------------------------------------------------------------------------

@dataclass
class Resilience(CallGuard):
    """The call guard: each stage call under its `StagePolicy`, breakers, limiter and budget.

    Install it with `with guarding(resilience): ...`. Errors of the guard's own stores (Redis,
    SQLite) and [`BudgetExceeded`][stagewise.runtime.BudgetExceeded], `RateLimited` and `DeadlineExceeded` reach the
    caller as they are; a model's failures become `StageFailed` (or a degraded result).
    """

    policies: dict[str, StagePolicy] = field(default_factory=dict)  # stage name -> policy
    default: StagePolicy = field(default_factory=StagePolicy)
    breakers: Breakers = field(default_factory=Breakers)
    limiter: RateLimiter | None = None
    budget: Budget | None = None
    catalog: Any = None
    _lms: dict = field(default_factory=dict, repr=False)

    def _lm(self, name: str):
        if name not in self._lms:
            from stagewise.models.lm import get_lm

            self._lms[name] = get_lm(name, catalog=self.catalog, num_retries=0)  # retries are the policy's
        return self._lms[name]

    def call(self, stage, run: Run, attempt: Callable[[Any], dict]) -> dict:
        """Run `stage`'s call (`attempt`) under its policy: its own model, then its fallbacks."""
        policy = self.policies.get(stage.name, self.default)
        models = [stage.lm] + ([self._lm(m) for m in policy.fallbacks]
                               if policy.mode in (FailureMode.FALLBACK, FailureMode.SKIP) else [])
        errors: list[str] = []
        for position, lm in enumerate(models):
            endpoint = endpoint_of(lm)
            breaker = self.breakers(endpoint)
            try:
                outputs = self._with_retries(stage, run, lm, attempt, breaker, policy, fallback=position > 0)
            except (BudgetExceeded, RateLimited, DeadlineExceeded, StoreError):
                raise
            except pybreaker.CircuitBreakerError:  # open: the endpoint is not called until its reset timeout
                errors.append(f"{redact(endpoint)}: circuit open")
                continue
            except Exception as exc:  # noqa: BLE001 - any failure moves on to the next model
                if type(exc).__module__.split(".")[0] == "redis":  # our own store failed, not the model
                    raise
                errors.append(f"{redact(endpoint)}: {type(exc).__name__}: {redact(str(exc))[:200]}")
                if policy.mode in (FailureMode.FAIL, FailureMode.RETRY):
                    raise StageFailed(stage.name, errors) from exc
                continue
            return outputs
        if policy.mode == FailureMode.SKIP:
            return self._degraded(stage, run, errors)
        raise StageFailed(stage.name, errors)

    def _with_retries(self, stage, run, lm, attempt, breaker, policy: StagePolicy, *, fallback: bool) -> dict:
        def once():
            # The deadline, the budget and the rate limiter act before the breaker: only the model call
            # itself can count as a failure or a success of the endpoint (a success closes a half-open circuit).
            _check_deadline(stage.name)
            input_tokens, max_output = stage.estimate(run, lm)
            reservation = None
            if self.budget is not None:
                spec = getattr(lm, "spec", None)
                estimate = spec.cost(input_tokens, max_output) if spec is not None and spec.input_price is not None \
                    else 0.0
                reservation = self.budget.reserve(stage.name, run, estimate)  # the worst case, before the call
            called = False
            try:
                slot = self.limiter.slot(provider_of(lm), input_tokens + max_output) if self.limiter else nullcontext()
                with slot, breaker.calling():  # calling() does not hold the breaker's lock during the call
                    called = True
                    with track_usage() as call:
                        outputs = attempt(None if lm is stage.lm else lm)
            except BaseException:
                if reservation is not None:  # a failed call may be billed: it keeps its estimate
                    self.budget.settle(reservation, reservation.estimate_usd if called else 0.0)
                raise
            if reservation is not None:
                self.budget.settle(reservation, call.total_cost)
            return outputs

        retries = 0 if policy.mode == FailureMode.FAIL else policy.retries
        retrying = Retrying(stop=stop_after_attempt(retries + 1), reraise=True,
                            wait=wait_exponential_jitter(multiplier=policy.backoff_s, max=policy.max_backoff_s),
                            retry=retry_if_exception(lambda e: is_retryable(e) and not isinstance(
                                e, (pybreaker.CircuitBreakerError, RateLimited, BudgetExceeded, DeadlineExceeded))))
        outputs = retrying(once)
        if fallback:
            log.warning("stage %r answered by fallback model %s", stage.name, redact(endpoint_of(lm)))
        return outputs

    @staticmethod
    def _degraded(stage, run: Run, errors: list[str]) -> dict:
        outputs = {name: None for name in stage.signature.output_fields}
        for name in outputs:
            run.context.add(Section(name=name, kind="stage_output", source=stage.name, content="", tokens=0,
                                    note="degraded: the stage was skipped after every model failed"))
        run.log(StageRun(stage.name, None, [], [f"{stage.name}.{n}" for n in outputs],
                         ["degraded: skipped after " + "; ".join(errors)]))
        run.degraded.append(stage.name)
        return outputs
