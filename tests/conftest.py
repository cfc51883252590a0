import logging
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import stagewise  # noqa: F401  (offline price map before DSPy loads)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
ROUTERBENCH_TEST = DATA / "routerbench" / "arc_challenge_test.csv"
ROUTELLM = DATA / "routellm" / "gsm8k_responses.csv"

# `make test` sets STAGEWISE_REQUIRE_SERVICES=1 (tests/services.sh prints it): there a test whose service is
# missing fails, so CI cannot pass by skipping. A plain `pytest` on a laptop skips such tests, saying why.
SERVICES = {"redis": ("Redis", "STAGEWISE_TEST_REDIS_URL"), "postgres": ("PostgreSQL", "STAGEWISE_TEST_POSTGRES_URL"),
            "chromium": ("Chromium", "STAGEWISE_TEST_CHROMIUM")}


def services_required() -> bool:
    return os.environ.get("STAGEWISE_REQUIRE_SERVICES", "") not in ("", "0")


def require_service(kind: str) -> str:
    """The URL (Redis, PostgreSQL) or executable (Chromium) of a test service that `make test` provides.

    When it is not configured or does not answer: the test fails under STAGEWISE_REQUIRE_SERVICES=1, and is
    skipped otherwise; either way the message names the service and says why.
    """
    name, variable = SERVICES[kind]
    value = os.environ.get(variable, "")
    if not value:
        problem = f"{name} is not available: ${variable} is not set"
    elif kind == "chromium":
        problem = None if shutil.which(value) else f"{name} is not available: {value!r} is not an executable"
    else:
        parts = urlsplit(value)
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=2).close()
            problem = None
        except OSError as exc:
            problem = f"{name} is not available: nothing answers at {parts.hostname}:{parts.port} ({exc})"
    if problem is None:
        return value
    if services_required():
        pytest.fail(f"{problem}; STAGEWISE_REQUIRE_SERVICES=1 makes it required (tests/services.sh starts it)",
                    pytrace=False)
    pytest.skip(f"{problem}: run the tests with `make test`, which starts it on loopback")


@contextmanager
def logged_warnings(logger: str):
    """The warning (and worse) messages `logger` logs inside the block, as a list filled as they come.

    DSPy's loggers do not reach pytest's caplog, so a test that checks what DSPy warns listens here.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, target = Collect(logging.WARNING), logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


@pytest.fixture(autouse=True)
def _isolated_dspy_cache(tmp_path_factory, monkeypatch):
    """Tests that check accounting must see real calls, not answers cached by an earlier test."""
    import dspy

    monkeypatch.setattr(dspy, "cache", dspy.clients.cache.Cache(
        enable_disk_cache=False, enable_memory_cache=True,
        disk_cache_dir=str(tmp_path_factory.mktemp("dspy-cache")),
    ))


@pytest.fixture(autouse=True)
def _no_leftover_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: keep one test's database out of the next."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
