"""What stagewise trusts: a factory named by a manifest or a runs store is imported only when the caller
trusts it (passed in, an entry point, or trust_code); files an export names stay inside it; router files
hold only the classes stagewise names."""

import json
import shutil
import sys

import dspy
import pytest
from typer.testing import CliRunner

import stagewise
from stagewise.cli import app
from stagewise.errors import ExportError
from stagewise.models.lm import get_lm
from stagewise.optimize.export import export, load
from stagewise.optimize.trust import UntrustedCodeError
from stagewise.programs import Stage
from stagewise.routing.persist import TRUSTED_TYPES, RouterFileError, load_router, save_router
from stagewise.runtime.runs import resume, run

from .conftest import ROUTERBENCH_TEST

IMPORTED = []


def build(note: str = "plain"):
    IMPORTED.append(note)
    return Stage("answer", "prompt -> answer")


@pytest.fixture(scope="module")
def table():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture()
def exported(table, tmp_path):
    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
    return export(program, tmp_path / "best", factory="tests.test_trust:build", factory_kwargs={"note": "manifest"})


def _hostile(directory, **fields):
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(fields)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_a_manifest_naming_os_system_is_refused_naming_the_trust_options_and_nothing_runs(exported, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    _hostile(exported, factory="os:system", factory_kwargs={"command": "touch pwned"}, factory_path=str(tmp_path))
    with pytest.raises(UntrustedCodeError) as refused:
        stagewise.load(exported)
    message = str(refused.value)
    assert "'os:system'" in message and "factory=build" in message and "'stagewise.programs'" in message
    assert "trust_code=True" in message and "--trust-code" in message
    assert isinstance(refused.value, stagewise.ExportError)
    for command in (["serve", str(exported), "--no-auth"], ["evaluate", str(exported), "--data", "x.csv"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "'os:system'" in result.output and "--trust-code" in result.output
        assert len(result.output.strip().splitlines()) == 1
    from stagewise.runtime.serve import create_app

    with pytest.raises(UntrustedCodeError):
        create_app(exported, token=None)
    assert not (tmp_path / "pwned").exists() and sys.path == path_before


def test_each_trust_option_builds_the_program(exported, table, monkeypatch, tmp_path):
    IMPORTED.clear()
    passed = load(exported, factory=build)  # the caller's own callable, with the manifest's arguments
    assert IMPORTED == ["manifest"] and passed.stages()["answer"].lm.spec.name == "recorded/mixtral-8x7b-chat"

    with pytest.raises(UntrustedCodeError):
        load(exported)
    # An installed package's entry point in the stagewise.programs group: importlib.metadata finds it on sys.path.
    dist = tmp_path / "site" / "my_programs-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-programs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[stagewise.programs]\nanswer = tests.test_trust:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    IMPORTED.clear()
    registered = load(exported)
    assert IMPORTED == ["manifest"] and registered.stages()["answer"].lm.spec.name == "recorded/mixtral-8x7b-chat"


def test_trust_code_imports_the_factory_from_the_exports_own_code_only_for_that_import(tmp_path, table):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "trusted_pipeline.py").write_text(
        "from stagewise.programs import Stage\n\ndef build():\n    return Stage('answer', 'prompt -> answer')\n")
    sys.path.insert(0, str(tmp_path / "project"))
    try:
        import trusted_pipeline

        program = trusted_pipeline.build()
        program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
        directory = export(program, tmp_path / "best", factory=trusted_pipeline.build)
    finally:
        sys.path.remove(str(tmp_path / "project"))
        sys.modules.pop("trusted_pipeline", None)
    shutil.rmtree(tmp_path / "project")
    assert (directory / "code" / "trusted_pipeline.py").is_file()
    path_before = list(sys.path)
    with pytest.raises(UntrustedCodeError, match="trusted_pipeline:build"):
        load(directory)
    assert "trusted_pipeline" not in sys.modules
    loaded = load(directory, trust_code=True)
    assert sys.path == path_before and "answer" in loaded.stages()
    with dspy.context(adapter=dspy.JSONAdapter()):
        prompt = table.prompts[0]
        assert loaded(prompt=prompt).answer == table.outcome(prompt, "mistralai/mixtral-8x7b-chat").response


@pytest.mark.parametrize("field, value, what", [
    ("routers", {"pick": {"file": "../../evil.skops"}}, "router 'pick' file '../../evil.skops'"),
    ("routers", {"pick": {"file": "/etc/passwd"}}, "router 'pick' file '/etc/passwd'"),
    ("stages", {"answer": {"model": "recorded/mixtral-8x7b-chat", "replay_table": "../table.csv"}},
     "stage 'answer' outcome table '../table.csv'"),
])
def test_files_a_manifest_names_must_lie_inside_the_directory(exported, field, value, what):
    _hostile(exported, **{field: value})
    with pytest.raises(ExportError, match=f"{what} is outside the directory"):
        load(exported, factory=build)


def test_a_run_is_rebuilt_only_from_a_factory_the_caller_trusts(tmp_path, monkeypatch, table):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/runs.db"
    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
    prompt = table.prompts[1]
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(program, {"prompt": prompt}, store=url, run_id="r1",
            origin={"factory": "os:system", "kwargs": {"command": "touch pwned"}})
        with pytest.raises(UntrustedCodeError, match="run 'r1' names the factory 'os:system'"):
            resume("r1", store=url)
        replayed = CliRunner().invoke(app, ["replay", "r1", "--stage", "answer", "--store", url])
        assert replayed.exit_code == 2 and "--trust-code" in replayed.output
        assert not (tmp_path / "pwned").exists()
        resumed = resume("r1", store=url, program=program)  # the caller's program, not the record's factory
    assert resumed.answer == table.outcome(prompt, "mistralai/mixtral-8x7b-chat").response


def test_router_files_hold_only_the_classes_stagewise_names(tmp_path):
    from sklearn.pipeline import FunctionTransformer

    from stagewise.routing import features

    assert "stagewise.routing.routers.LabelRouter" in TRUSTED_TYPES
    assert not any(name.startswith("stagewise.routing.persist") for name in TRUSTED_TYPES)
    function = save_router(FunctionTransformer(features.answer_checks), tmp_path / "function.skops")
    with pytest.raises(RouterFileError, match="answer_checks"):
        load_router(function)
    other = save_router({"counts": features._SortedCounts()}, tmp_path / "other.skops")  # stagewise's, not listed
    with pytest.raises(RouterFileError, match="_SortedCounts"):
        load_router(other)


def test_a_router_file_cannot_choose_where_the_embedding_model_is_read_from(tmp_path):
    from stagewise.routing.features import SentenceEmbeddings, minilm_path

    embeddings = SentenceEmbeddings()
    embeddings.path_ = str(tmp_path / "attacker-model")
    loaded = load_router(save_router({"features": embeddings}, tmp_path / "router.skops"))
    assert loaded["features"].path_ == minilm_path() != str(tmp_path / "attacker-model")
