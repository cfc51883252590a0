"""Hostile and malformed inputs, across everything stagewise reads: the HTTP API, study configs, data
files, exported manifests, router files and checkpoint rows. Each gets a clear error of the error tree
(``stagewise.errors``) that names what is at fault; the server answers the next good request; nothing
stored before is lost; nothing a file names is imported or run."""

import json
import sqlite3
import zipfile

import pytest
from fastapi.testclient import TestClient

from stagewise.errors import StagewiseError
from stagewise.models.lm import get_lm
from stagewise.optimize.export import export, load
from stagewise.programs import Stage

from .conftest import ROOT, ROUTERBENCH_TEST

CALLED = []


def build():
    CALLED.append("build")
    return Stage("answer", "prompt -> answer")


@pytest.fixture(scope="module")
def table():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture(scope="module")
def exported(table, tmp_path_factory):
    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
    return export(program, tmp_path_factory.mktemp("hostile") / "best", factory="tests.test_hostile_inputs:build")


# --- the HTTP API ---------------------------------------------------------------------------------

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

HTTP_CASES = [
    # (id, method, path, headers, body)
    ("not-json", "POST", "/v1/run", AUTH, b"this is not json"),
    ("truncated-json", "POST", "/v1/run", AUTH, b'{"prompt": "What'),
    ("empty-body", "POST", "/v1/run", AUTH, b""),
    ("json-array", "POST", "/v1/run", AUTH, b'["prompt"]'),
    ("json-string", "POST", "/v1/run", AUTH, b'"prompt"'),
    ("json-number", "POST", "/v1/run", AUTH, b"42"),
    ("json-null", "POST", "/v1/run", AUTH, b"null"),
    ("json-true", "POST", "/v1/run", AUTH, b"true"),
    ("empty-object", "POST", "/v1/run", AUTH, b"{}"),
    ("extra-field", "POST", "/v1/run", AUTH, b'{"prompt": "hi", "admin": true}'),
    ("wrong-field", "POST", "/v1/run", AUTH, b'{"question": "hi"}'),
    ("prompt-number", "POST", "/v1/run", AUTH, b'{"prompt": 7}'),
    ("prompt-list", "POST", "/v1/run", AUTH, b'{"prompt": ["a", "b"]}'),
    ("prompt-object", "POST", "/v1/run", AUTH, b'{"prompt": {"$gt": ""}}'),
    ("prompt-null", "POST", "/v1/run", AUTH, b'{"prompt": null}'),
    ("prompt-bool", "POST", "/v1/run", AUTH, b'{"prompt": false}'),
    ("deep-array", "POST", "/v1/run", AUTH, b"[" * 5000 + b"]" * 5000),
    ("deep-object", "POST", "/v1/run", AUTH, b'{"prompt": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001),
    ("huge-body", "POST", "/v1/run", AUTH, b'{"prompt": "' + b"x" * 200_000 + b'"}'),
    ("many-keys", "POST", "/v1/run", AUTH, json.dumps({f"k{i}": "v" for i in range(3000)}).encode()),
    ("lone-surrogate", "POST", "/v1/run", AUTH, b'{"prompt": "\\ud800"}'),
    ("invalid-utf8", "POST", "/v1/run", AUTH, b'{"prompt": "\xff\xfe\xfd"}'),
    ("nan", "POST", "/v1/run", AUTH, b'{"prompt": NaN}'),
    ("duplicate-key-types", "POST", "/v1/run", AUTH, b'{"prompt": "a", "prompt": 3}'),
    ("trailing-garbage", "POST", "/v1/run", AUTH, b'{"prompt": "a"} trailing'),
    ("bad-content-length", "POST", "/v1/run", {**AUTH, "Content-Length": "-5"}, b'{"prompt": "a"}'),
    ("huge-content-length", "POST", "/v1/run", {**AUTH, "Content-Length": "99999999999"}, b'{"prompt": "a"}'),
    ("no-auth", "POST", "/v1/run", {"Content-Type": "application/json"}, b'{"prompt": "a"}'),
    ("wrong-token", "POST", "/v1/run", {**AUTH, "Authorization": "Bearer nope"}, b'{"prompt": "a"}'),
    ("bearer-only", "POST", "/v1/run", {**AUTH, "Authorization": "Bearer"}, b'{"prompt": "a"}'),
    ("basic-auth", "POST", "/v1/run", {**AUTH, "Authorization": "Basic " + "YTpi"}, b'{"prompt": "a"}'),
    ("token-prefix", "POST", "/v1/run", {**AUTH, "Authorization": f"Bearer {TOKEN[:-1]}"}, b'{"prompt": "a"}'),
    ("token-longer", "POST", "/v1/run", {**AUTH, "Authorization": f"Bearer {TOKEN}x"}, b'{"prompt": "a"}'),
    ("huge-token", "POST", "/v1/run", {**AUTH, "Authorization": "Bearer " + "t" * 6000}, b'{"prompt": "a"}'),
    ("lowercase-scheme", "POST", "/v1/run", {**AUTH, "Authorization": f"bearer{TOKEN}"}, b'{"prompt": "a"}'),
    ("unknown-path", "POST", "/v1/nothing", AUTH, b'{"prompt": "a"}'),
    ("get-run", "GET", "/v1/run", AUTH, None),
    ("put-run", "PUT", "/v1/run", AUTH, b'{"prompt": "a"}'),
    ("delete-run", "DELETE", "/v1/run", AUTH, None),
    ("path-traversal", "GET", "/v1/../../etc/passwd", AUTH, None),
]


@pytest.fixture(scope="module")
def client(exported):
    from stagewise.runtime.serve import create_app

    app = create_app(exported, token=TOKEN, max_body=64 * 1024, requests_per_minute=100_000, factory=build)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _good(client, table):
    prompt = table.prompts[3]
    response = client.post("/v1/run", json={"prompt": prompt}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["answer"] == table.outcome(prompt, "mistralai/mixtral-8x7b-chat").response


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_the_http_api_answers_hostile_requests_with_a_json_error_and_serves_the_next_one(client, table, case):
    _, method, path, headers, body = case
    response = client.request(method, path, headers=headers, content=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str)
    assert "Traceback" not in response.text and "File \"" not in response.text
    _good(client, table)


# --- study configs --------------------------------------------------------------------------------

ARC = (ROOT / "examples" / "arc_routing" / "study.toml").read_text()

CONFIG_CASES = [
    # (id, config text, what the message names)
    ("not-toml", "this is = = not toml", "not valid TOML"),
    ("binary", "\x00\x01\x02", "not valid TOML"),
    ("empty", "", "missing table [program]"),
    ("no-search", ARC.split("[search]")[0], "missing table [search]"),
    ("factory-number", ARC.replace('factory = "arc_pipeline:build"', "factory = 42"), "[program] factory"),
    ("trials-text", ARC.replace("trials = 16", 'trials = "many"'), "[search] trials"),
    ("trials-negative", ARC.replace("trials = 16", "trials = -3"), "[search] trials"),
    ("trials-float", ARC.replace("trials = 16", "trials = 2.5"), "[search] trials"),
    ("prune-negative", ARC.replace("prune_on = 40", "prune_on = -1"), "[search] prune_on"),
    ("unknown-key", ARC.replace("prune_on = 40", "prune_on = 40\nprune_onn = 1"), "['prune_onn']"),
    ("unknown-table", ARC + "\n[serach]\ntrials = 3\n", "['serach']"),
    ("split-over-one", ARC.replace("train = 0.2", "train = 7"), "[split] train"),
    ("seed-text", ARC.replace("seed = 0", 'seed = "zero"'), "[split] seed"),
    ("models-not-list", ARC.replace("models = [", 'models = "gpt"\nx = ['), "[search.stages.answer] models"),
    ("models-empty", ARC.split("models = [")[0] + "models = []\n", "[search.stages.answer] models"),
    ("demos-negative", ARC.replace('"recorded/code-llama-34b",\n]', '"recorded/code-llama-34b",\n]\ndemos = [-1]'),
     "demos[0]"),
    ("stages-empty", ARC.split("[search.stages.answer]")[0] + "[search.stages]\n", "[search] stages"),
    ("outcomes-missing", ARC.replace("arc_challenge_test.csv", "nothing.csv"), "nothing.csv"),
    ("outcomes-number", ARC.replace('outcomes = "../../data/routerbench/arc_challenge_test.csv"', "outcomes = 3"),
     "[data] outcomes"),
    ("metric-not-table", ARC.replace('end_to_end = { output = "answer", metric = "recorded_correctness" }',
                                     'end_to_end = "answer"'), "[metrics] end_to_end"),
    ("thresholds-out-of-range", ARC + "\n[search.thresholds]\ncascade = [1.5]\n", "thresholds"),
    ("deep-nesting", "x = " + "[" * 3000 + "]" * 3000, "config"),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_hostile_study_config_is_one_error_naming_the_file_and_key(tmp_path, case):
    from stagewise.errors import ConfigError
    from stagewise.optimize.config import load_config

    _, text, named = case
    folder = tmp_path / "examples" / "arc_routing"
    folder.mkdir(parents=True)
    (tmp_path / "data").symlink_to(ROOT / "data")
    config = folder / "study.toml"
    config.write_text(text)
    with pytest.raises(StagewiseError) as raised:
        load_config(config).build()
    assert isinstance(raised.value, ConfigError | StagewiseError)
    assert named in str(raised.value) and "study.toml" in str(raised.value)


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path):
    from stagewise.errors import ConfigError
    from stagewise.optimize.config import load_config

    config = tmp_path / "study.toml"
    config.write_text(ARC + "#" * 2_000_000)
    with pytest.raises(ConfigError, match="more than the 1,000,000 a TOML file may have"):
        load_config(config)


# --- data files -----------------------------------------------------------------------------------

DATA_CASES = [
    ("empty-csv", "data.csv", b""),
    ("header-only", "data.csv", b"text,label\n"),
    ("missing-column", "data.csv", b"message,label\nhello,a\n"),
    ("binary-csv", "data.csv", bytes(range(256)) * 4),
    ("latin1-csv", "data.csv", "text,label\ncaf\xe9,a\n".encode("latin-1")),
    ("jsonl-garbage", "data.jsonl", b'{"text": "a", "label": "b"}\nnot json at all\n'),
    ("jsonl-array-rows", "data.jsonl", b'["a", "b"]\n["c", "d"]\n'),
    ("jsonl-wrong-types", "data.jsonl", b'{"text": "a", "label": "b"}\n{"text": {"$gt": 1}, "label": "c"}\n'
                                        b'{"text": "d", "label": "e"}\n'),
    ("parquet-garbage", "data.parquet", b"PAR1 this is not parquet PAR1"),
    ("unknown-extension", "data.xlsx", b"text,label\na,b\n"),
    ("all-empty-cells", "data.csv", b"text,label\n,\n,\n"),
    ("a-directory", "folder.csv", None),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_a_hostile_data_file_is_a_data_error_naming_the_file(tmp_path, case):
    from stagewise.data import FieldMap, load_dataset_file

    _, name, content = case
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(StagewiseError) as raised:
        load_dataset_file(path, FieldMap({"message": "text"}, {"label": "label"}), on_bad="refuse")
    assert name in str(raised.value)


# --- exported manifests ---------------------------------------------------------------------------

def _manifest(exported):
    return json.loads((exported / "manifest.json").read_text())


MANIFEST_CASES = [
    ("not-json", lambda m: "not json {"),
    ("array", lambda m: []),
    ("string", lambda m: "stagewise"),
    ("wrong-format", lambda m: {**m, "format": "other/9"}),
    ("no-factory", lambda m: {k: v for k, v in m.items() if k != "factory"}),
    ("no-stages", lambda m: {k: v for k, v in m.items() if k != "stages"}),
    ("factory-os-system", lambda m: {**m, "factory": "os:system", "factory_kwargs": {"command": "touch pwned"}}),
    ("factory-builtins-eval", lambda m: {**m, "factory": "builtins:eval", "factory_kwargs": {}}),
    ("factory-number", lambda m: {**m, "factory": 42}),
    ("factory-path", lambda m: {**m, "factory": "evil:build", "factory_path": "/tmp"}),
    ("kwargs-list", lambda m: {**m, "factory_kwargs": ["a"]}),
    ("stages-list", lambda m: {**m, "stages": ["answer"]}),
    ("stage-entry-string", lambda m: {**m, "stages": {"answer": "recorded/mixtral-8x7b-chat"}}),
    ("unknown-model", lambda m: {**m, "stages": {"answer": {**m["stages"]["answer"], "model": "no-such-model"}}}),
    ("unknown-stage", lambda m: {**m, "stages": {**m["stages"], "ghost": m["stages"]["answer"]}}),
    ("table-outside", lambda m: {**m, "stages": {"answer": {**m["stages"]["answer"],
                                                            "replay_table": "../../../etc/passwd"}}}),
    ("table-absolute", lambda m: {**m, "stages": {"answer": {**m["stages"]["answer"],
                                                             "replay_table": str(ROUTERBENCH_TEST)}}}),
    ("table-fingerprint", lambda m: {**m, "stages": {"answer": {**m["stages"]["answer"],
                                                                "replay_table_fingerprint": "0" * 16}}}),
    ("router-outside", lambda m: {**m, "routers": {"pick": {"file": "../../x.skops"}}}),
    ("router-unknown", lambda m: {**m, "routers": {"pick": {"file": "routers/pick.skops"}}}),
    ("deeply-nested", lambda m: '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}"),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_a_hostile_manifest_is_refused_and_runs_nothing(exported, tmp_path, monkeypatch, case):
    import shutil

    _, change = case
    copy = tmp_path / "best"
    shutil.copytree(exported, copy)
    changed = change(_manifest(exported))
    (copy / "manifest.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    monkeypatch.chdir(tmp_path)
    CALLED.clear()
    with pytest.raises(StagewiseError) as raised:
        load(copy, trust_code=case[0] not in ("factory-os-system", "factory-builtins-eval", "factory-path"))
    assert "manifest.json" in str(raised.value) or "stage 'answer'" in str(raised.value) \
        or "no-such-model" in str(raised.value) or "ghost" in str(raised.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name, content", [
    ("missing", None), ("not-json", b"{not json"), ("array", b"[1, 2]"), ("wrong-shape", b'{"answer": 7}'),
])
def test_a_hostile_program_state_is_an_export_error(exported, tmp_path, name, content):
    import shutil

    copy = tmp_path / "best"
    shutil.copytree(exported, copy)
    if content is None:
        (copy / "program.json").unlink()
    else:
        (copy / "program.json").write_bytes(content)
    with pytest.raises(StagewiseError, match="program.json"):
        load(copy, factory=build)


# --- router files ---------------------------------------------------------------------------------

def _zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


ROUTER_CASES = [
    ("empty", lambda p: p.write_bytes(b"")),
    ("text", lambda p: p.write_text("not a zip")),
    ("zip-without-schema", lambda p: _zip(p, {"other.txt": b"x"})),
    ("schema-not-json", lambda p: _zip(p, {"schema.json": b"{not json"})),
    ("schema-array", lambda p: _zip(p, {"schema.json": b"[]"})),
    ("schema-evil-type", lambda p: _zip(p, {"schema.json": json.dumps(
        {"__class__": "system", "__module__": "os", "__loader__": "ObjectNode", "content": {},
         "protocol": 2, "_skops_version": "0.10"}).encode()})),
    ("truncated-zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 20)),
    ("a-directory", lambda p: p.mkdir()),
]


@pytest.mark.parametrize("case", ROUTER_CASES, ids=[c[0] for c in ROUTER_CASES])
def test_a_hostile_router_file_is_a_router_file_error(tmp_path, case):
    from stagewise.routing import RouterFileError, load_router

    path = tmp_path / "router.skops"
    case[1](path)
    with pytest.raises(RouterFileError, match="router.skops"):
        load_router(path)


# --- checkpoint rows ------------------------------------------------------------------------------

GOOD_STEP = {"stage": "answer", "key": "answer#0", "model": "m", "outputs": {"answer": "4"},
             "sections": [{"name": "answer", "kind": "stage_output", "source": "answer", "content": "4",
                           "tokens": 1, "lineage": [], "note": None}], "received": ["input.prompt"]}
GOOD_RECORD = {"run_id": "bad", "status": "completed", "program": None, "models": {"answer": "m"},
               "inputs": {"prompt": "2+2?"}, "context": [], "steps": [GOOD_STEP], "error": None,
               "outputs": {"answer": "4"}, "version": 1, "updated": "2026-12-03T00:00:00.000+00:00"}

CHECKPOINT_CASES = [
    ("not-json", "{broken"),
    ("array", "[]"),
    ("wrong-version", json.dumps({**GOOD_RECORD, "version": 99})),
    ("no-steps", json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "steps"})),
    ("steps-string", json.dumps({**GOOD_RECORD, "steps": "answer"})),
    ("step-number", json.dumps({**GOOD_RECORD, "steps": [7]})),
    ("step-no-stage", json.dumps({**GOOD_RECORD, "steps": [{k: v for k, v in GOOD_STEP.items() if k != "stage"}]})),
    ("outputs-list", json.dumps({**GOOD_RECORD, "steps": [{**GOOD_STEP, "outputs": ["4"]}]})),
    ("section-extra-field", json.dumps({**GOOD_RECORD, "steps": [{**GOOD_STEP, "sections": [
        {**GOOD_STEP["sections"][0], "__class__": "os.system"}]}]})),
    ("section-bad-kind", json.dumps({**GOOD_RECORD, "steps": [{**GOOD_STEP, "sections": [
        {**GOOD_STEP["sections"][0], "kind": "exec"}]}]})),
    ("tokens-negative", json.dumps({**GOOD_RECORD, "steps": [{**GOOD_STEP, "sections": [
        {**GOOD_STEP["sections"][0], "tokens": -5}]}]})),
    ("inputs-string", json.dumps({**GOOD_RECORD, "inputs": "2+2?"})),
    ("status-unknown", json.dumps({**GOOD_RECORD, "status": "pwned"})),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_a_hostile_checkpoint_row_is_a_clear_error_and_the_other_runs_are_kept(tmp_path, case):
    from typer.testing import CliRunner

    from stagewise.cli import app
    from stagewise.runtime import checkpoint as cp
    from stagewise.runtime.diff import diff_text

    url = f"sqlite:///{tmp_path}/runs.db"
    store = cp.open_checkpoints(url)
    store.save({**GOOD_RECORD, "run_id": "good"})
    with sqlite3.connect(tmp_path / "runs.db") as db:
        db.execute("INSERT INTO stagewise_checkpoints VALUES ('bad', 0, 'completed', '2026', ?)", (case[1],))
    with pytest.raises(cp.CheckpointError, match="run 'bad'"):
        store.load("bad")
    for command in (["diff", "bad", "--store", url], ["replay", "bad", "--stage", "answer", "--store", url]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "run 'bad'" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert "answer#0" in diff_text(store.load("good"))  # the run stored before is intact


def test_checkpoint_rows_with_every_field_well_formed_still_load(tmp_path):
    from stagewise.runtime import checkpoint as cp

    store = cp.open_checkpoints(f"sqlite:///{tmp_path}/runs.db")
    store.save(dict(GOOD_RECORD))
    assert store.load("bad")["steps"][0]["outputs"] == {"answer": "4"}
