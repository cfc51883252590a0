"""MLflow tracking: one parent run per study, one nested run per trial.

The embedded default tracking URI is a SQLite file in the working directory
(`sqlite:///mlflow.db`); any `MLFLOW_TRACKING_URI` overrides it. Only parameters that
describe a configuration are logged (stage models, optimizer settings, data fingerprint):
never API keys. Under a privacy policy (`[privacy]` in the study config) the JSON and text
artifacts a run logs (a trial's compiled state, whose demos are training examples, the exported
`program.json`) are logged as redacted copies, and parameter values are redacted too; the
files on disk, and the MLflow model (the program itself, demos included), are not changed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagewise.optimize.callbacks import StudyCallback, TrialRecord
from stagewise.redaction import redact
from stagewise.runtime.privacy import PrivacyPolicy

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tracker", "plot_trial_runs", "tracking_uri", "trial_runs"]

_TEXT_SUFFIXES = (".csv", ".txt", ".md", ".toml", ".jsonl", ".log")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else `mlflow.db` (SQLite) in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker(StudyCallback):
    """Logs a study to MLflow. `Tracker(None)` (no experiment) logs nothing.

    As a [`StudyCallback`][stagewise.optimize.callbacks.StudyCallback] it logs each finished trial as a run
    nested under the study's (`study()` opens that parent run).

    Nothing touches MLflow until the study starts: a config that fails validation leaves no
    experiment (and no database file) behind.

    Args:
        experiment: the MLflow experiment's name (None: log nothing).
        uri: the tracking URI (default: `MLFLOW_TRACKING_URI`, else `mlflow.db` in the working directory).
        privacy: a policy that redacts the logged parameters and files.
    """

    def __init__(self, experiment: str | None, uri: str | None = None, *, privacy: PrivacyPolicy | None = None):
        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self.privacy = privacy
        self.parent_id: str | None = None

    def _params(self, params: dict[str, Any]) -> dict[str, str]:
        shown = {k: redact(str(v)) for k, v in params.items()}
        if self.privacy is not None:
            shown = {k: self.privacy.text(v) for k, v in shown.items()}
        return {k: v[:500] for k, v in shown.items()}

    @contextmanager
    def _private(self, paths: list[Path]) -> Iterator[list[Path]]:
        """The files to log: `paths`, or redacted copies of the JSON and text ones under a policy."""
        if self.privacy is None or not paths:
            yield [Path(p) for p in paths]
            return
        with tempfile.TemporaryDirectory(prefix="stagewise-private-") as scratch:
            copies = []
            for number, path in enumerate(map(Path, paths)):
                target = Path(scratch) / str(number) / path.name  # same name in MLflow, no clash between files
                if path.suffix == ".json":
                    target.parent.mkdir()
                    data = json.loads(path.read_text(encoding="utf-8"))
                    target.write_text(json.dumps(self.privacy.value(data), indent=1, default=str), encoding="utf-8")
                elif path.suffix in _TEXT_SUFFIXES:
                    target.parent.mkdir()
                    target.write_text(self.privacy.text(path.read_text(encoding="utf-8")), encoding="utf-8")
                else:
                    target = path  # images and binary files hold no request text
                copies.append(target)
            yield copies

    @contextmanager
    def study(self, name: str, params: dict[str, Any]) -> Iterator[None]:
        """The study's parent run (a resumed study continues its own), open for the block."""
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
                mlflow.log_params(self._params(params))
            yield

    def trial_finished(self, record: TrialRecord) -> None:
        """Log `record` as a nested run (see `trial`)."""
        self.trial(record.number, record.params, record.metrics, record.state, list(record.artifacts))

    def trial(self, number: int, params: dict[str, Any], metrics: dict[str, float], state: str,
              artifacts: list[Path] = ()) -> None:
        """One trial as a run nested under the study's: its parameters, metrics, state and files."""
        if self.experiment is None:
            return
        import mlflow

        with mlflow.start_run(run_name=f"trial-{number}", nested=True, parent_run_id=self.parent_id):
            mlflow.set_tags({"stagewise_role": "trial", "stagewise_trial": str(number), "stagewise_state": state})
            mlflow.log_params(self._params(params))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and v == v})
            with self._private(list(artifacts)) as files:
                for path in files:
                    mlflow.log_artifact(str(path))

    def artifacts(self, paths: list[Path], metrics: dict[str, float] | None = None) -> None:
        """Files and summary metrics on the study's parent run."""
        if self.experiment is None or self.parent_id is None:
            return
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        with self._private(paths) as files:
            for path in files:
                client.log_artifact(self.parent_id, str(path))
        for key, value in (metrics or {}).items():
            if value is not None and value == value:
                client.log_metric(self.parent_id, key, float(value))

    def log_program(self, directory: Path, inputs: list[str] | None = None) -> str | None:
        """Log an exported program as an MLflow model on the study's run (from code, no pickle).

        Args:
            directory: the exported program (`stagewise.export`).
            inputs: the program's input fields: the model's signature takes them as string columns
                (MLflow checks a request's columns against it). `None`: no signature.

        Returns:
            Its model URI (`mlflow.pyfunc.load_model(uri)`, `mlflow models serve -m uri`), or None when
            the study is not tracked.
        """
        if self.experiment is None or self.parent_id is None:
            return None
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        code = Path(__file__).with_name("mlflow_model.py")
        signature = ModelSignature(inputs=Schema([ColSpec("string", name) for name in inputs])) if inputs else None
        with mlflow.start_run(run_id=self.parent_id), warnings.catch_warnings():
            # No input example, on purpose: MLflow would validate it by loading the model and running the
            # program on it (model calls, and the ~10 s subprocess that the explicit requirements avoid).
            warnings.filterwarnings("ignore", message="An input example was not provided")
            info = mlflow.pyfunc.log_model(name="program", python_model=str(code),
                                           artifacts={"program": str(Path(directory).resolve())},
                                           pip_requirements=_model_requirements(), signature=signature)
        return info.model_uri


def _model_requirements() -> list[str] | None:
    """What the logged model needs: stagewise's own pinned runtime requirements (no extras).

    Given explicitly, MLflow skips inferring them, which imports the model in a subprocess and took about
    10 s of every study. `None` (stagewise not installed as a distribution): MLflow infers them.
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("stagewise") or []
    except PackageNotFoundError:
        return None
    return [requirement for requirement in declared if "extra ==" not in requirement] or None


def trial_runs(experiments: list[str] | None = None) -> pd.DataFrame:
    """Every trial run that studies logged to MLflow, one row per trial, as `stagewise compare` shows them.

    Reads MLflow at `MLFLOW_TRACKING_URI`, else `mlflow.db` in the working directory; runs are those tagged as
    trials (`tags.stagewise_role = 'trial'`), best quality first within each experiment.

    Args:
        experiments: experiment names; `None` reads every experiment.

    Returns:
        The columns `experiment`, `trial`, `state`, `quality`, `cost_per_1k_requests`, then each router's
        decision (`NAME.decision`) and each stage's model (`NAME.model`), as the trial logged them (missing:
        `None`, e.g. a stage a trained router stood in for). Empty when the experiments hold no trial run.

    Raises:
        ConfigError: an experiment of that name does not exist (the message lists those that do).
    """
    import mlflow
    import pandas as pd

    from stagewise.errors import ConfigError

    mlflow.set_tracking_uri(tracking_uri())
    known = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    names = list(experiments) if experiments else list(known.values())
    missing = [name for name in names if name not in known.values()]
    if missing:
        raise ConfigError(f"no experiment named {', '.join(map(repr, missing))} at {redact(tracking_uri())} "
                          f"(experiments: {', '.join(known.values()) or 'none'})")
    fixed = ["experiment", "trial", "state", "quality", "cost_per_1k_requests"]
    runs = mlflow.search_runs(experiment_names=names, filter_string="tags.stagewise_role = 'trial'") \
        if names else pd.DataFrame()
    if runs.empty:
        return pd.DataFrame(columns=fixed)
    choices = sorted(c for c in runs.columns if c.startswith("params.") and c.endswith(".decision")) + \
        sorted(c for c in runs.columns if c.startswith("params.") and c.endswith(".model"))
    table = pd.DataFrame({
        "experiment": runs["experiment_id"].map(known),
        "trial": runs.get("tags.stagewise_trial"),
        "state": runs.get("tags.stagewise_state"),
        "quality": runs.get("metrics.quality"),
        "cost_per_1k_requests": runs.get("metrics.cost_per_1k_requests"),
        **{column.removeprefix("params."): runs[column] for column in choices},
    })
    table = table.sort_values(["experiment", "quality"], ascending=[True, False], na_position="last")
    return table.astype(object).where(table.notna(), None).reset_index(drop=True)


def plot_trial_runs(runs: pd.DataFrame, path: str | Path) -> Path:
    """Save a plot of quality against cost per 1,000 requests, one colour per experiment.

    Args:
        runs: what [`trial_runs`][stagewise.optimize.tracking.trial_runs] returns.
        path: the image file to write (PNG, SVG, PDF: by its suffix).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    scored = runs.dropna(subset=["quality", "cost_per_1k_requests"])
    for name, group in scored.groupby("experiment"):
        axes.scatter(group["cost_per_1k_requests"].astype(float), group["quality"].astype(float), label=name, s=24)
    axes.set_xlabel("cost per 1,000 requests (USD)")
    axes.set_ylabel("quality (dev)")
    axes.grid(alpha=0.3)
    if not scored.empty:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
