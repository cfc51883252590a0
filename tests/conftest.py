import os
from pathlib import Path

import pytest

import stagewise  # noqa: F401  (offline price map before DSPy loads)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
ROUTERBENCH_TEST = DATA / "routerbench" / "arc_challenge_test.csv"
ROUTELLM = DATA / "routellm" / "gsm8k_responses.csv"


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
