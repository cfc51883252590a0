"""Secrets never reach a log line, an error or a stored record: each pattern :func:`redact` knows, the
fallback log line, a failed run's checkpoint, and a manifest written by export (no absolute paths)."""

import json
import logging
from pathlib import Path

import dspy
import pytest

from stagewise.data import OutcomeTable
from stagewise.errors import ExportError
from stagewise.models.lm import get_lm
from stagewise.programs import Stage
from stagewise.programs.run import guarding
from stagewise.redaction import RedactingFilter, redact, redacted_logger, scrub
from stagewise.runtime.resilience import Breakers, Resilience, StagePolicy

from .conftest import ROOT, ROUTERBENCH_TEST

SECRET = "s3cr3t-Value"
LONG = "abcdef0123456789abcdef0123456789"

REDACTED = [  # (text, what must remain)
    (f"postgresql://stagewise:{SECRET}@127.0.0.1:1/runs", "postgresql://stagewise:***@127.0.0.1:1/runs"),
    (f"redis://:{SECRET}@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
    (f"cannot connect to postgresql://u:p@{SECRET}@db/x: refused", "postgresql://u:***@db/x: refused"),
    (f"postgresql://db.example/app?sslmode=require&password={SECRET}&user=me",
     "postgresql://db.example/app?sslmode=require&password=***&user=me"),
    (f"https://llm.example/v1?api_key={SECRET}", "https://llm.example/v1?api_key=***"),
    (f"https://maps.example/api?key={LONG}&q=x", "?key=***&q=x"),
    (f"host=db user=x password={SECRET} dbname=app", "host=db user=x password=*** dbname=app"),
    (f"host=db user=x password='{SECRET} with space' port=5432", "password='***' port=5432"),
    (f"dbname=app PGPASSWORD={SECRET}", "PGPASSWORD=***"),
    (f"Authorization: Bearer {SECRET}.xyz", "Authorization: Bearer ***"),
    (f"headers={{'Authorization': 'Basic {SECRET}'}}", "'Authorization': 'Basic ***'"),
    (f"curl -H 'X-Api-Key: {LONG}' ...", "X-Api-Key: ***"),
    (f"sent Bearer {SECRET} to the server", "sent Bearer *** to"),
    (f'{{"client_secret": "{SECRET}", "model": "m"}}', '"client_secret": "***", "model": "m"'),
    (f"OPENAI_API_KEY={SECRET}", "OPENAI_API_KEY=***"),
    (f"token: {LONG}", "token: ***"),
    (f"auth={LONG}", "auth=***"),
    ("Incorrect API key provided: sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "provided: sk-proj-***"),
    ("key sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w in use", "key sk-*** in use"),
    ("invalid x-api-key sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w", "sk-ant-***"),
    ("https://generativelanguage.example/v1?alt=sse AIzaSyAb3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0", "alt=sse AIza***"),
    ("HF token hf_Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0AB rejected", "HF token hf_*** rejected"),
    ("github ghp_Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0AB", "github ghp_***"),
]


@pytest.mark.parametrize(("text", "kept"), REDACTED)
def test_each_secret_pattern_is_redacted(text, kept):
    shown = redact(text)
    assert kept in shown
    for secret in (SECRET, LONG, "Ab3dEf6hIj9kLm2nOp5qRs8t"):
        assert secret not in shown
    assert redact(shown) == shown  # redacting twice changes nothing


@pytest.mark.parametrize("text", [
    "set the bearer token in $STAGEWISE_SERVE_TOKEN, or pass --no-auth for local use",
    "max_tokens=256 input_tokens: 5 tokenizer=cl100k_base",
    '{"api_key_env": "OPENAI_API_KEY", "max_tokens": 12}',
    "the password is wrong; check the token budget",
    "cache key=short, https://user@host.example/v1, redis://127.0.0.1:6379/0",
    "stage 'answer' failed on every model: http://127.0.0.1:8080/v1: circuit open",
])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_scrub_removes_a_quoted_password_and_redacts_the_rest():
    url = f"postgresql://u:{SECRET}@db/x"
    message = f'connection failed: password "{SECRET}" rejected for Bearer {LONG}'
    assert SECRET not in scrub(message, url) and LONG not in scrub(message, url)


def test_the_redacting_filter_covers_messages_arguments_and_tracebacks(caplog):
    logger = redacted_logger("tests.redaction.filtered")
    assert sum(isinstance(f, RedactingFilter) for f in redacted_logger(logger.name).filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("calling %s with password=%s", f"https://u:{SECRET}@h/v1", SECRET)
        try:
            raise ConnectionError(f"refused: Authorization: Bearer {SECRET}")
        except ConnectionError:
            logger.exception("request failed")
    assert "https://u:***@h/v1" in caplog.text and "password=***" in caplog.text
    assert "request failed" in caplog.text and "ConnectionError" in caplog.text
    assert SECRET not in caplog.text


class Scripted(dspy.utils.DummyLM):
    def __init__(self, name, errors=(), api_base=None):
        super().__init__([{"answer": f"from {name}"}] * 10, adapter=dspy.JSONAdapter())
        self.model, self.errors = name, list(errors)
        if api_base:
            self.kwargs = {**self.kwargs, "api_base": api_base}

    def forward(self, prompt=None, messages=None, **kwargs):
        if self.errors:
            raise self.errors.pop(0)
        return super().forward(prompt=prompt, messages=messages, **kwargs)


def test_the_fallback_log_line_shows_the_endpoint_redacted(caplog):
    endpoint = f"https://proxy:{SECRET}@llm.example/v1?api_key={LONG}"
    primary = Scripted("primary", [ConnectionError("down")] * 3)
    backup = Scripted("backup", api_base=endpoint)
    resilience = Resilience(policies={"s": StagePolicy("fallback", ("backup",), retries=0, backoff_s=0.01)},
                            breakers=Breakers(fail_max=10))
    resilience._lms["backup"] = backup
    with caplog.at_level(logging.WARNING, logger="stagewise.runtime.resilience"):
        with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience):
            assert Stage("s", "question -> answer", lm=primary)(question="q").answer == "from backup"
    assert "answered by fallback model https://proxy:***@llm.example/v1?api_key=***" in caplog.text
    assert SECRET not in caplog.text and LONG not in caplog.text


def test_a_failed_runs_checkpoint_holds_its_error_redacted(tmp_path):
    from stagewise.runtime.checkpoint import open_checkpoints
    from stagewise.runtime.runs import run

    failing = Scripted("failing", [ValueError(f"provider refused key sk-proj-{LONG} at https://u:{SECRET}@h/v1")])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    with dspy.context(adapter=dspy.JSONAdapter()), pytest.raises(ValueError):
        run(Stage("s", "question -> answer", lm=failing), {"question": "q"}, store=store, run_id="r1")
    record = open_checkpoints(store).load("r1")
    assert record["status"] == "failed" and "sk-proj-***" in record["error"]["message"]
    assert LONG not in json.dumps(record) and SECRET not in json.dumps(record)


def build_answer():
    """The exported program: one stage answering from a recorded model (RouterBench ARC)."""
    return Stage("answer", "prompt -> answer")


def build_with_corpus(corpus: str = ""):
    """A program whose factory takes a file path (kept only to be recorded in the manifest)."""
    return build_answer()


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_an_exported_manifest_holds_no_absolute_path(tmp_path):
    from stagewise.optimize.export import export

    # The outcome table from a folder outside the export, named by an absolute path.
    table_file = tmp_path / "elsewhere" / "arc.csv"
    table_file.parent.mkdir()
    table_file.write_bytes(Path(ROUTERBENCH_TEST).read_bytes())
    program = build_answer()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=OutcomeTable.load(table_file))})
    out = tmp_path / "export"
    export(program, out, factory="tests.test_redaction:build_answer", factory_path=str(ROOT),
           extra={"notes": {"table_copy": str(out / "tables" / "arc.csv")}})
    manifest = json.loads((out / "manifest.json").read_text())
    strings = list(_strings(manifest))
    assert not [s for s in strings if Path(s).is_absolute() or str(tmp_path) in s or str(ROOT) in s]
    assert manifest["stages"]["answer"]["replay_table"] == "tables/arc.csv"
    assert manifest["notes"]["table_copy"] == "tables/arc.csv"  # a path inside the directory: made relative

    with pytest.raises(ExportError, match=r"manifest\.factory_kwargs\.corpus is the absolute path"):
        export(program, tmp_path / "other", factory="tests.test_redaction:build_with_corpus",
               factory_kwargs={"corpus": str(table_file)}, factory_path=str(ROOT))
