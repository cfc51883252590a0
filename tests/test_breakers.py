"""Circuit breakers: the half-open state admits exactly one probe (threads in one process, and two
processes' breakers sharing Redis), and client errors (4xx) neither open nor close a circuit."""

import threading
import time

import dspy
import pybreaker
import pytest

from stagewise.errors import ConfigError
from stagewise.programs import Stage
from stagewise.programs.run import guarding
from stagewise.runtime.resilience import Breakers, Resilience, StageFailed, StagePolicy, is_retryable

from .conftest import require_service


class Status(Exception):
    """An error carrying an HTTP status, as litellm's and openai's do."""

    def __init__(self, status_code):
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class Endpoint:
    """A fake endpoint: counts the calls that reach it; each call takes ``seconds``."""

    def __init__(self, seconds=0.0):
        self.seconds, self.calls = seconds, 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        time.sleep(self.seconds)
        return "ok"


def _down():
    raise ConnectionError("down")


def _raising(exc):
    def call():
        raise exc
    return call


def _trip(breaker, failures):
    for _ in range(failures):
        with pytest.raises((ConnectionError, pybreaker.CircuitBreakerError)):
            breaker.call(_down)


def _at_once(callers: list, call) -> list:
    """Run ``call(caller)`` for every caller in its own thread, released together; each result or error."""
    start = threading.Barrier(len(callers))
    results = [None] * len(callers)

    def run(index):
        start.wait()
        try:
            results[index] = call(callers[index])
        except Exception as exc:  # noqa: BLE001 - the test counts refusals
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_half_open_admits_exactly_one_of_many_concurrent_calls():
    breakers = Breakers(fail_max=2, reset_s=0.3)
    breaker = breakers("http://endpoint/v1")
    _trip(breaker, 2)
    assert breakers.state("http://endpoint/v1") == pybreaker.STATE_OPEN
    endpoint = Endpoint(seconds=1.0)  # the probe is still in flight while the others arrive
    time.sleep(0.35)
    results = _at_once([breaker] * 8, lambda b: b.call(endpoint))
    assert endpoint.calls == 1
    assert results.count("ok") == 1
    assert sum(isinstance(r, pybreaker.CircuitBreakerError) for r in results) == 7
    assert breakers.state("http://endpoint/v1") == pybreaker.STATE_CLOSED  # the probe succeeded
    assert _at_once([breaker] * 4, lambda b: b.call(endpoint)) == ["ok"] * 4  # closed: everyone goes
    assert endpoint.calls == 5


def test_a_failed_probe_reopens_the_circuit_and_the_others_never_reach_the_endpoint():
    breakers = Breakers(fail_max=1, reset_s=0.3)
    breaker = breakers("e")
    _trip(breaker, 1)
    time.sleep(0.35)
    reached = Endpoint()

    def slow_failure(b):
        def failing():
            reached()
            time.sleep(0.3)
            raise ConnectionError("still down")
        return b.call(failing)

    results = _at_once([breaker] * 6, slow_failure)
    assert reached.calls == 1
    assert all(isinstance(r, pybreaker.CircuitBreakerError) for r in results)
    assert breakers.state("e") == pybreaker.STATE_OPEN
    with pytest.raises(pybreaker.CircuitBreakerError, match="circuit open"):
        breaker.call(reached)  # a new reset timeout started when the probe failed
    assert reached.calls == 1


def test_client_errors_neither_open_nor_close_a_circuit():
    assert not is_retryable(Status(400)) and not is_retryable(Status(404)) and is_retryable(Status(429))
    wrapped = RuntimeError("provider said no")
    wrapped.__cause__ = Status(401)
    assert not is_retryable(wrapped)

    breakers = Breakers(fail_max=2, reset_s=0.3)
    breaker = breakers("e")
    for _ in range(5):  # closed: client errors never open it
        with pytest.raises(Status):
            breaker.call(_raising(Status(400)))
    assert breakers.state("e") == pybreaker.STATE_CLOSED and breaker.fail_counter == 0

    _trip(breaker, 1)
    with pytest.raises(Status):  # nor do they reset the count of real failures
        breaker.call(_raising(Status(422)))
    assert breaker.fail_counter == 1
    _trip(breaker, 1)
    assert breakers.state("e") == pybreaker.STATE_OPEN

    time.sleep(0.35)
    with pytest.raises(Status):  # a probe answered with a client error: still half-open
        breaker.call(_raising(Status(400)))
    assert breakers.state("e") == pybreaker.STATE_HALF_OPEN
    endpoint = Endpoint()
    assert breaker.call(endpoint) == "ok"  # the next call is the probe, and closes it
    assert breakers.state("e") == pybreaker.STATE_CLOSED


def test_a_client_error_through_the_guard_fails_the_request_and_leaves_the_circuit_alone():
    class Rejecting(dspy.utils.DummyLM):
        def __init__(self):
            super().__init__([{"answer": "ok"}] * 5, adapter=dspy.JSONAdapter())
            self.model, self.calls = "rejecting", 0

        def forward(self, prompt=None, messages=None, **kwargs):
            self.calls += 1
            raise Status(400)

    lm = Rejecting()
    breakers = Breakers(fail_max=1, reset_s=30)
    resilience = Resilience(default=StagePolicy("retry", retries=2, backoff_s=0.01, max_backoff_s=0.02),
                            breakers=breakers)
    stage = Stage("s", "question -> answer", lm=lm)
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience):
        for _ in range(3):
            with pytest.raises(StageFailed, match="Status"):
                stage(question="q")
    assert lm.calls == 3  # not retried, and the circuit never opened (fail_max=1)
    assert breakers.state("rejecting") == pybreaker.STATE_CLOSED


def test_breaker_settings_are_checked():
    with pytest.raises(ConfigError, match="fail_max"):
        Breakers(fail_max=0)
    with pytest.raises(ConfigError, match="probe_lease_s"):
        Breakers(probe_lease_s=0)


def test_half_open_admits_one_probe_among_processes_sharing_redis():
    redis_url = require_service("redis")
    endpoint = f"http://probe-endpoint-{time.time_ns()}/v1"
    # Each Breakers has its own Redis connection and breaker objects, as a server process has.
    processes = [Breakers(fail_max=1, reset_s=1, redis_url=redis_url) for _ in range(4)]
    _trip(processes[0](endpoint), 1)
    assert all(p.state(endpoint) == pybreaker.STATE_OPEN for p in processes)
    time.sleep(2.1)  # pybreaker stores the opening time in whole seconds
    reached = Endpoint(seconds=1.0)
    results = _at_once([p(endpoint) for p in processes for _ in range(3)], lambda b: b.call(reached))
    assert reached.calls == 1 and results.count("ok") == 1
    assert all(p.state(endpoint) == pybreaker.STATE_CLOSED for p in processes)
