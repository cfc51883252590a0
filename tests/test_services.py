"""CI cannot pass by skipping: a required service that is missing fails the run, naming the service."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from .conftest import ROOT

REDIS_TEST = "tests/test_resilience.py::test_breaker_state_is_shared_through_redis"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STAGEWISE_")} | env
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("required", [True, False])
def test_a_test_whose_redis_does_not_answer_fails_when_services_are_required(required):
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    env = {"STAGEWISE_TEST_REDIS_URL": url} | ({"STAGEWISE_REQUIRE_SERVICES": "1"} if required else {})
    result = _pytest("-rfs", REDIS_TEST, **env)
    if required:
        assert result.returncode == 1, result.stdout
        assert "1 failed" in result.stdout and "Redis is not available: nothing answers at 127.0.0.1" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "1 skipped" in result.stdout and "Redis is not available" in result.stdout


def test_an_unset_service_is_named_too():
    result = _pytest("-rf", REDIS_TEST, STAGEWISE_REQUIRE_SERVICES="1")
    assert result.returncode == 1
    assert "Redis is not available: $STAGEWISE_TEST_REDIS_URL is not set" in result.stdout


def test_services_script_exits_non_zero_naming_redis_when_it_cannot_start_it(tmp_path):
    # Something that is not Redis holds the port: redis-server cannot bind it, and nothing answers PING.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    stop = threading.Event()

    def refuse():
        squatter.settimeout(0.2)
        while not stop.is_set():
            try:
                squatter.accept()[0].close()
            except OSError:
                pass

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        result = subprocess.run(["bash", "tests/services.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "STAGEWISE_SERVICES": "redis", "STAGEWISE_REDIS_PORT": str(port),
                                     "STAGEWISE_SERVICES_DIR": str(tmp_path)})
    finally:
        stop.set()
        thread.join()
        squatter.close()
    assert result.returncode == 1
    assert "Redis" in result.stderr and "STAGEWISE_TEST_REDIS_URL" not in result.stdout
