"""One study shared by several worker processes on PostgreSQL, logging to a real MLflow server.

The replay example (11 recorded models for ARC-Challenge) is searched with the grid sampler:
every configuration once, whichever worker takes it, so the distributed study and a
single-process study evaluate the same configurations and their Pareto fronts must be equal.
(With the TPE sampler, parallel workers see different histories and may choose different
configurations; the grid removes that difference, so any other difference is a bug.) The trial
budget (14) is above the grid's 11 points: two workers asking at the same instant may draw the
same point (a repeated configuration is reused, not rerun, but it is a trial), and the grid
sampler ends the study once every point is done, so the study always covers the whole grid.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest

from stagewise.optimize.storage import StorageError, open_storage

from .conftest import ROOT, require_service

ARC = ROOT / "examples" / "arc_routing"
STAGEWISE = str(Path(sys.executable).with_name("stagewise"))


def _postgres() -> str:
    return require_service("postgres")


def _database(url: str, prefix: str) -> str:
    """A fresh database on the test server, for one test."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    backend = _database(_postgres(), "mlflow")
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "mlflow.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            time.sleep(0.5)
    else:
        raise AssertionError("the MLflow server did not start")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def _grid_config(tmp_path) -> Path:
    text = (ARC / "study.toml").read_text().replace("trials = 16", 'trials = 14\nsampler = "grid"')
    text = text.replace('outcomes = "../../data', f'outcomes = "{ROOT}/data')
    config = tmp_path / "study.toml"
    config.write_text(text)
    (tmp_path / "arc_pipeline.py").write_text((ARC / "arc_pipeline.py").read_text())
    return config


def _env(tmp_path, tracking: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache"),
            "PYTHONPATH": str(ROOT)}


def test_two_workers_share_a_study_survive_a_killed_worker_and_log_once_to_mlflow(tmp_path, mlflow_server):
    storage = _database(_postgres(), "optuna")
    config = _grid_config(tmp_path)
    env = _env(tmp_path, mlflow_server)
    out = tmp_path / "out"
    leader = subprocess.Popen([STAGEWISE, "optimize", str(config), "--storage", storage, "--study", "shared",
                               "--out", str(out)], env=env, cwd=tmp_path, stdout=open(tmp_path / "leader.log", "w"),
                              stderr=subprocess.STDOUT)
    study = None
    while study is None and leader.poll() is None:
        try:
            study = optuna.load_study(study_name="shared", storage=open_storage(storage))
        except KeyError:
            time.sleep(0.2)
    assert study is not None, (tmp_path / "leader.log").read_text()[-3000:]
    workers = [subprocess.Popen([STAGEWISE, "worker", str(config), "--storage", storage, "--study", "shared",
                                 "--out", str(out)], env=env, cwd=tmp_path,
                                stdout=open(tmp_path / f"worker{i}.log", "w"), stderr=subprocess.STDOUT)
               for i in range(2)]
    victim = workers[0]
    killed_trial = None
    deadline = time.monotonic() + 300
    while killed_trial is None and time.monotonic() < deadline and leader.poll() is None:
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                killed_trial = trial.number
        time.sleep(0.02)
    assert killed_trial is not None, "the worker to kill never ran a trial"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert leader.wait(timeout=600) == 0, (tmp_path / "leader.log").read_text()[-3000:]
    assert workers[1].wait(timeout=300) == 0, (tmp_path / "worker1.log").read_text()[-3000:]

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    models = [t.params["answer.model"] for t in done]
    assert len(set(models)) == 11 and len(done) <= 14  # the whole grid, within the budget
    killed = study.trials[killed_trial]
    assert killed.state == optuna.trial.TrialState.FAIL  # the dead worker's trial: failed, not counted ...
    # The kill can land between two of the trial's suggestions: match the parameters it had drawn.
    retried = [t for t in done if killed.params and all(t.params.get(k) == v for k, v in killed.params.items())]
    assert retried, "... and its configuration was run again by a live worker"
    workers_seen = {t.user_attrs.get("worker") for t in done}
    assert len(workers_seen) >= 2  # the leader and the surviving worker both ran trials

    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["arc-routing"], filter_string="tags.stagewise_role = 'trial'")
    logged = runs["tags.stagewise_trial"].astype(int).tolist()
    assert sorted(logged) == sorted(t.number for t in done)  # every counted trial once, nothing else
    parents = mlflow.search_runs(experiment_names=["arc-routing"], filter_string="tags.stagewise_role = 'study'")
    assert len(parents) == 1 and set(runs["tags.mlflow.parentRunId"]) == {parents["run_id"][0]}

    # The same search in one process finds the same front.
    single = tmp_path / "single"
    solo = subprocess.run([STAGEWISE, "optimize", str(config), "--study", "solo", "--out", str(single)],
                          env=_env(tmp_path, f"sqlite:///{tmp_path}/solo-mlflow.db"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert solo.returncode == 0, solo.stdout[-3000:] + solo.stderr[-3000:]
    shared_front = pd.read_csv(out / "pareto.csv")
    single_front = pd.read_csv(single / "pareto.csv")
    key = ["answer.model", "quality", "cost_per_request"]
    front_of = lambda frame: frame[key].sort_values("answer.model").reset_index(drop=True)  # noqa: E731
    assert len(shared_front) >= 2
    pd.testing.assert_frame_equal(front_of(shared_front), front_of(single_front))


def test_scaleout_bad_inputs(tmp_path):
    storage = _database(_postgres(), "optuna")
    config = _grid_config(tmp_path)
    env = _env(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    missing = subprocess.run([STAGEWISE, "worker", str(config), "--storage", storage, "--study", "nope"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr and "studies: none" in missing.stderr

    created = subprocess.run([STAGEWISE, "optimize", str(config), "--storage", storage, "--study", "first",
                              "--trials", "1", "--out", str(tmp_path / "o")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace("seed = 0", "seed = 1", 1))
    differing = subprocess.run([STAGEWISE, "worker", str(other), "--storage", storage, "--study", "first"],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert differing.returncode == 2 and "split.seed (the study's 0, this config's 1)" in differing.stderr

    bad = storage.replace("stagewise:stagewise@", "stagewise:wrong-secret@").rsplit(":", 1)[0] + ":1/optuna"
    with pytest.raises(StorageError) as caught:
        open_storage(bad)
    assert "stagewise:***@127.0.0.1:1/optuna" in str(caught.value) and "wrong-secret" not in str(caught.value)
    unreachable = subprocess.run([STAGEWISE, "worker", str(config), "--storage", bad, "--study", "first"],
                                 env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert unreachable.returncode == 2 and "wrong-secret" not in unreachable.stdout + unreachable.stderr
    assert "cannot open the study storage" in unreachable.stderr
