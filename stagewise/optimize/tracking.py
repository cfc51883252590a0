"""MLflow tracking: one parent run per study, one nested run per trial.

The embedded default tracking URI is a SQLite file in the working directory
(``sqlite:///mlflow.db``); any ``MLFLOW_TRACKING_URI`` overrides it. Only parameters that
describe a configuration are logged (stage models, optimizer settings, data fingerprint):
never API keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stagewise.redaction import redact


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker:
    """Logs a study to MLflow. ``Tracker(None)`` (no experiment) logs nothing.

    Nothing touches MLflow until the study starts: a config that fails validation leaves no
    experiment (and no database file) behind.
    """

    def __init__(self, experiment: str | None, uri: str | None = None):
        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self.parent_id: str | None = None

    @contextmanager
    def study(self, name: str, params: dict[str, Any]) -> Iterator[None]:
        if self.experiment is None:
            yield
            return
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)

        existing = mlflow.search_runs(
            filter_string=f"tags.stagewise_study = '{name}' and tags.stagewise_role = 'study'",
            output_format="list")
        run_id = existing[0].info.run_id if existing else None  # a resumed study continues its parent run
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as run:
            self.parent_id = run.info.run_id
            if run_id is None:
                mlflow.set_tags({"stagewise_study": name, "stagewise_role": "study"})
                mlflow.log_params({k: redact(str(v))[:500] for k, v in params.items()})
            yield

    def trial(self, number: int, params: dict[str, Any], metrics: dict[str, float], state: str,
              artifacts: list[Path] = ()) -> None:
        if self.experiment is None:
            return
        import mlflow

        with mlflow.start_run(run_name=f"trial-{number}", nested=True, parent_run_id=self.parent_id):
            mlflow.set_tags({"stagewise_role": "trial", "stagewise_trial": str(number), "stagewise_state": state})
            mlflow.log_params({k: redact(str(v))[:500] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and v == v})
            for path in artifacts:
                mlflow.log_artifact(str(path))

    def artifacts(self, paths: list[Path], metrics: dict[str, float] | None = None) -> None:
        """Files and summary metrics on the study's parent run."""
        if self.experiment is None or self.parent_id is None:
            return
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        for path in paths:
            client.log_artifact(self.parent_id, str(path))
        for key, value in (metrics or {}).items():
            if value is not None and value == value:
                client.log_metric(self.parent_id, key, float(value))

    def log_program(self, directory: Path) -> str | None:
        """Log an exported program as an MLflow model on the study's run (from code, no pickle).

        Returns its model URI (``mlflow.pyfunc.load_model(uri)``, ``mlflow models serve -m uri``).
        """
        if self.experiment is None or self.parent_id is None:
            return None
        import mlflow

        code = Path(__file__).with_name("mlflow_model.py")
        with mlflow.start_run(run_id=self.parent_id):
            info = mlflow.pyfunc.log_model(name="program", python_model=str(code),
                                           artifacts={"program": str(Path(directory).resolve())})
        return info.model_uri
