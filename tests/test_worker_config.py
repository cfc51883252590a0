"""A worker refuses a config that differs from its study's, naming each differing key with both values.

The study is the replay example (ARC-Challenge on recorded models: no model is run) in a SQLite
storage, created as `stagewise optimize` creates it; workers join it through the command.
"""

import re

import pytest
from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.optimize.config import load_config
from stagewise.optimize.study import Study

from .conftest import ROOT

ARC = ROOT / "examples" / "arc_routing"
runner = CliRunner()


@pytest.fixture()
def study(tmp_path, monkeypatch):
    """(config text, storage URL) of a created study named "shared" with a budget of 2 trials."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.syspath_prepend(str(ARC))
    text = ((ARC / "study.toml").read_text().replace("trials = 16", "trials = 2")
            .replace('outcomes = "../../data', f'outcomes = "{ROOT}/data'))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    config = load_config(_write(tmp_path / "study.toml", text), study="shared")
    config.settings.storage = storage
    Study(config.build, config.splits(), config.space, config.end_to_end, settings=config.settings,
          out_dir=tmp_path / "out", data_fingerprint=config.data_fingerprint,
          lm_options=config.lm_options).open(create=True)
    return text, storage


def _write(path, text):
    path.write_text(text)
    return path


def _worker(tmp_path, text, storage, *options):
    config = _write(tmp_path / "worker.toml", text)
    return runner.invoke(app, ["worker", str(config), "--storage", storage, "--study", "shared",
                               "--out", str(tmp_path / "out"), *options])


def _refusal(result) -> str:
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: study 'shared': this config differs from the study's in ")
    assert line.endswith("; a worker must run the study's own config (its --trials caps only its own trials)")
    return line


def test_a_worker_whose_trials_and_prune_on_differ_is_refused_naming_both_keys_and_values(tmp_path, study):
    text, storage = study
    changed = text.replace("trials = 2", "trials = 3").replace("prune_on = 40", "prune_on = 20")
    line = _refusal(_worker(tmp_path, changed, storage))
    differing = line.split(" in ", 1)[1].split("; a worker", 1)[0]
    assert differing == ("search.prune_on (the study's 40, this config's 20); "
                         "search.trials (the study's 2, this config's 3)")


def test_differences_are_named_by_key_not_by_group(tmp_path, study):
    text, storage = study
    fewer = text.replace('"recorded/gpt-4-1106-preview", ', "")
    changed = fewer.replace("seed = 0", "seed = 1", 1)  # [split] seed
    line = _refusal(_worker(tmp_path, changed, storage))
    keys = re.findall(r"(?:in |; )([\w.]+) \(the study's", line)
    assert keys == ["search.stages.answer.models", "split.seed"]  # not "space, splits"; split.examples follows
    assert "split.seed (the study's 0, this config's 1)" in line
    models = re.search(r"search\.stages\.answer\.models \(the study's (\[.*?\]), this config's (\[.*?\])\)", line)
    assert '"recorded/gpt-4-1106-preview"' in models.group(1) and "gpt-4-1106" not in models.group(2)


def test_a_worker_with_the_studys_config_joins_and_its_trials_option_caps_only_its_own(tmp_path, study):
    import optuna

    from stagewise.optimize.storage import open_storage

    text, storage = study
    result = _worker(tmp_path, text, storage, "--trials", "1")
    assert result.exit_code == 0, result.output
    assert "worker of study 'shared' at " in result.output and ": 1 of 2 trials done" in result.output
    done = optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials(deepcopy=False)
    assert len(done) == 1


def test_a_study_recorded_by_group_by_an_older_stagewise_is_not_joined_unchecked(tmp_path, study):
    import optuna

    from stagewise.optimize.storage import open_storage

    text, storage = study
    recorded = optuna.load_study(study_name="shared", storage=open_storage(storage)).user_attrs["stagewise_config"]
    assert {"search.prune_on", "search.stages.answer.models", "split.seed", "data"} <= set(recorded)
    legacy = optuna.create_study(study_name="legacy", storage=open_storage(storage),
                                 directions=["maximize", "minimize"])
    legacy.set_user_attr("stagewise_signature", {"space": "...", "splits": "..."})  # by group, as before
    legacy.set_user_attr("stagewise_trials", 2)
    config = _write(tmp_path / "worker.toml", text)
    result = runner.invoke(app, ["worker", str(config), "--storage", storage, "--study", "legacy",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "study 'legacy' was started by an older stagewise, which recorded its config by group" in result.output
