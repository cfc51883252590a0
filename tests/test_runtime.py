"""Checkpoints and resume: stores, a scripted failure, and a real process kill on the local model."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Literal

import dspy
import pytest

from stagewise.models.lm import get_lm
from stagewise.models.usage import track_usage
from stagewise.programs import Chain, Stage
from stagewise.runtime import checkpoint as cp
from stagewise.runtime.runs import resume, run

from .conftest import ROOT, require_service


def build_chain():
    """Three stages on SmolLM2: the program of the kill test (rebuilt by its factory on resume)."""
    chain = Chain("support", [
        Stage("topic", "message -> topic"),
        Stage("reply", "message, topic -> reply"),
        Stage("summary", "reply -> summary"),
    ])
    return chain.set_models({"topic": "smollm2-135m", "reply": "smollm2-135m", "summary": "smollm2-135m"})


# --- stores ---------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["memory://t", "sqlite:///{tmp}/runs.db", "POSTGRES"])
def test_store_round_trip_history_and_listing(url, tmp_path):
    if url == "POSTGRES":
        import psycopg

        url = _server("POSTGRES")
        with psycopg.connect(url, autocommit=True) as db:  # a fresh table for this test
            db.execute("DROP TABLE IF EXISTS stagewise_checkpoints")
    store = cp.open_checkpoints(url.format(tmp=tmp_path))
    store.save({"run_id": "r1", "status": "running", "inputs": {"q": "x"}, "steps": []})
    store.save({"run_id": "r1", "status": "completed", "inputs": {"q": "x"}, "steps": [{"key": "a#0", "stage": "a",
                                                                       "outputs": {}, "sections": []}]})
    store.save({"run_id": "r2", "status": "failed", "inputs": {}, "steps": []})
    latest = store.load("r1")
    assert latest["status"] == "completed" and latest["version"] == cp.CHECKPOINT_VERSION
    assert {r["run_id"]: r["status"] for r in store.runs()} == {"r1": "completed", "r2": "failed"}
    with pytest.raises(cp.UnknownRunError, match="no run 'nope' in the checkpoint store"):
        store.load("nope")


def test_a_corrupted_checkpoint_row_is_a_clear_error_and_other_runs_are_unaffected(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    store = cp.open_checkpoints(url)
    store.save({"run_id": "good", "status": "completed", "inputs": {}, "steps": []})
    store.save({"run_id": "bad", "status": "completed", "inputs": {}, "steps": []})
    with sqlite3.connect(tmp_path / "runs.db") as db:
        db.execute("UPDATE stagewise_checkpoints SET record = '{\"version\": 1, \"run_' WHERE run_id = 'bad'")
    with pytest.raises(cp.CorruptCheckpointError, match="run 'bad': its latest checkpoint .* is not valid JSON"):
        cp.open_checkpoints(url).load("bad")
    assert cp.open_checkpoints(url).load("good")["status"] == "completed"
    with sqlite3.connect(tmp_path / "runs.db") as db:
        db.execute("UPDATE stagewise_checkpoints SET record = '{\"version\": 7}' WHERE run_id = 'bad'")
    with pytest.raises(cp.CorruptCheckpointError, match="checkpoint version 7"):
        cp.open_checkpoints(url).load("bad")


def test_store_urls_that_cannot_connect_name_the_url_without_its_password(tmp_path):
    with pytest.raises(cp.StoreConnectionError) as caught:
        cp.open_checkpoints("postgresql://stagewise:s3cret-pw@127.0.0.1:1/runs")
    assert "postgresql://stagewise:***@127.0.0.1:1/runs" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(cp.StoreConnectionError, match="unknown scheme 'mysql'"):
        cp.open_checkpoints("mysql://u:pw@h/db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(cp.StoreConnectionError, match="cannot open the checkpoint store"):
        cp.open_checkpoints(f"sqlite:///{tmp_path}/file/runs.db")


# --- resume, scripted (orchestration) -------------------------------------------------------

class Flaky(dspy.utils.DummyLM):
    """A scripted LM that fails its first ``fail`` calls."""

    def __init__(self, answers, fail=0):
        super().__init__(answers, adapter=dspy.JSONAdapter())
        self.fail, self.calls = fail, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError("provider unavailable")
        return super().forward(*args, **kwargs)


def scripted_chain(first, second, third):
    chain = Chain("c", [Stage("a", "message -> topic"), Stage("b", "topic -> reply"), Stage("c3", "reply -> summary")])
    return chain.set_models({"a": first, "b": second, "c3": third})


def test_a_failed_run_resumes_at_the_failed_stage_without_calling_completed_ones():
    store = cp.open_checkpoints("memory://resume")
    first = Flaky([{"topic": "cards"}] * 3)
    second = Flaky([{"reply": "we will send a new card"}] * 3, fail=1)
    third = Flaky([{"summary": "new card"}] * 3)
    program = scripted_chain(first, second, third)
    with dspy.context(adapter=dspy.JSONAdapter()):
        with pytest.raises(ConnectionError):
            run(program, {"message": "my card is lost"}, store=store, run_id="r-flaky")
        record = store.load("r-flaky")
        assert record["status"] == "failed" and record["position"] == 1
        assert record["error"] == {"stage": "b#0", "type": "ConnectionError", "message": "provider unavailable"}
        assert [s["key"] for s in record["steps"]] == ["a#0"] and record["steps"][0]["outputs"] == {"topic": "cards"}
        prediction = resume("r-flaky", store=store, program=program)
    assert (first.calls, second.calls, third.calls) == (1, 2, 1)  # "a" was not called again
    assert prediction.summary == "new card" and prediction.run_id == "r-flaky"
    assert "restored from the checkpoint" in prediction.trace["a"].notes[0]
    done = store.load("r-flaky")
    assert done["status"] == "completed" and [s["key"] for s in done["steps"]] == ["a#0", "b#0", "c3#0"]
    assert done["outputs"]["summary"] == "new card"


# --- a real process kill, on the local model ------------------------------------------------

KILLED_RUN = """
import sys, dspy
sys.path.insert(0, {root!r})
import stagewise
from stagewise.runtime.runs import run
from tests.test_runtime import build_chain
with dspy.context(adapter=dspy.JSONAdapter()):
    run(build_chain(), {{"message": "My card has not arrived after two weeks, what should I do?"}},
        store={url!r}, run_id="killed", origin={{"factory": "tests.test_runtime:build_chain"}})
"""


@pytest.mark.local_model
def test_a_killed_run_resumes_from_its_checkpoint_with_no_repeated_calls(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    message = "My card has not arrived after two weeks, what should I do?"
    with dspy.context(adapter=dspy.JSONAdapter()):
        reference = build_chain()(message=message)
    env = {**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")}
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(root=str(ROOT), url=url)], env=env,
                               cwd=ROOT)
    store = cp.open_checkpoints(url)
    deadline = time.monotonic() + 300
    steps = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            steps = len(store.load("killed")["steps"])
        except cp.UnknownRunError:
            steps = 0
        if steps >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    record = store.load("killed")
    assert record["status"] == "running" and 1 <= len(record["steps"]) < 3  # killed mid-run: no final record
    completed = {step["stage"] for step in record["steps"]}
    with dspy.context(adapter=dspy.JSONAdapter()), track_usage() as ledger:
        resumed = resume("killed", store=url, factory=build_chain)  # the program is rebuilt from its factory
    called = {r.stage for r in ledger.records}
    assert not completed & called  # no model call for a stage the checkpoint holds
    assert called == {"topic", "reply", "summary"} - completed
    assert resumed.summary == reference.summary
    for section in ("topic.topic", "reply.reply", "summary.summary"):
        assert resumed.context.sections[section].content == reference.context.sections[section].content
    assert json.loads(json.dumps(store.load("killed")["outputs"]))["summary"] == reference.summary


# --- the shared context store ---------------------------------------------------------------

def _server(name: str) -> str:
    return require_service(name.lower())


def _store_url(kind: str, tmp_path) -> str:
    return {"sqlite": f"sqlite:///{tmp_path}/context.db", "redis": "REDIS", "postgres": "POSTGRES"}[kind]


def _resolve(kind, tmp_path):
    url = _store_url(kind, tmp_path)
    return _server(url) if url in ("REDIS", "POSTGRES") else url


WRITER = """
import sys
from stagewise.runtime.store import open_context_store
store = open_context_store(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.append(sys.argv[4], "branch", "note", "log", f"{sys.argv[2]}-{i}")
    store.append(sys.argv[4], "branch", "note", f"own-{sys.argv[2]}", i)
"""


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
def test_concurrent_writers_from_several_processes_lose_nothing(kind, tmp_path):
    import uuid

    url = _resolve(kind, tmp_path)
    run_id = f"concurrent-{uuid.uuid4().hex[:8]}"
    writers, per_writer = 4, 150
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(w), str(per_writer), run_id], cwd=ROOT)
                 for w in range(writers)]
    assert all(p.wait(timeout=120) == 0 for p in processes)
    from stagewise.runtime.store import open_context_store

    store = open_context_store(url)
    log = store.values(run_id, "branch", "note", "log")
    assert len(log) == writers * per_writer and len(set(log)) == writers * per_writer
    for w in range(writers):  # each writer's own entries, in its write order
        assert store.values(run_id, "branch", "note", f"own-{w}") == list(range(per_writer))
        assert [v for v in log if v.startswith(f"{w}-")] == [f"{w}-{i}" for i in range(per_writer)]
    assert store.get(run_id, "branch", "note", "own-0") == per_writer - 1
    store.close()


def test_redis_entries_expire_after_their_ttl():
    from stagewise.runtime.store import open_context_store

    url = _server("REDIS")
    store = open_context_store(url + "?ttl=1")
    store.append("short-lived", "s", "note", "k", "v")
    assert store.get("short-lived", "s", "note", "k") == "v"
    time.sleep(2.2)
    assert store.entries("short-lived") == []


def test_stage_sections_are_recorded_and_branches_share_state(tmp_path):
    from stagewise.programs import FanOut, MajorityVote
    from stagewise.programs.run import observing
    from stagewise.runtime.store import ContextRecorder, open_context_store, shared

    store = open_context_store(f"sqlite:///{tmp_path}/context.db")

    class Note(dspy.Module):  # a branch step that also writes to the run's shared state
        def __init__(self, name):
            super().__init__()
            self.name = name
            self.inner = dspy.Predict("message -> answer")

        def forward(self, message):
            shared(store).append("both", "vote", "seen_by", self.name)
            return self.inner(message=message)

    left = Stage("left", Note("left"), lm=dspy.utils.DummyLM([{"answer": "cards"}], adapter=dspy.JSONAdapter()))
    right = Stage("right", Note("right"), lm=dspy.utils.DummyLM([{"answer": "cards"}], adapter=dspy.JSONAdapter()))
    fan = FanOut("both", {"left": left, "right": right}, MajorityVote("answer"))
    with dspy.context(adapter=dspy.JSONAdapter()), observing(ContextRecorder(store)):
        prediction = run(fan, {"message": "lost card"}, store="memory://shared", run_id="shared-run")
    assert prediction.answer == "cards"
    assert sorted(store.values("shared-run", "both", "vote", "seen_by")) == ["left", "right"]
    recorded = store.entries("shared-run", kind="stage_output")
    assert {(e["stage"], e["key"], e["value"]["content"]) for e in recorded} == {
        ("left", "answer", "cards"), ("right", "answer", "cards"),  # the branches' stages
        ("both", "answer", "cards"), ("both", "votes", '{"cards": 2}'), ("both", "agreement", "1.0")}  # the vote


def test_context_store_bad_urls(tmp_path):
    from stagewise.runtime.store import open_context_store

    with pytest.raises(cp.StoreConnectionError) as caught:
        open_context_store("redis://:hunter22@127.0.0.1:1/0")
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value) and "hunter22" not in str(caught.value)
    with pytest.raises(cp.StoreConnectionError, match="unknown scheme 'mongodb'"):
        open_context_store("mongodb://h/db")


# --- tracing, diffs and replay --------------------------------------------------------------

LONG_TICKET = ("I ordered a new debit card three weeks ago and it still has not arrived. " * 6 +
               "The old card was cancelled, so I cannot pay for anything. " * 6 + "What should I do now?")


def budget_chain():
    """Two scripted stages; the second reads the long ticket under a tight budget (a compressed copy)."""
    chain = Chain("desk", [Stage("triage", "notes -> topic"),
                           Stage("answer", "notes, topic -> reply", budget=60)])
    return chain.set_models({
        "triage": dspy.utils.DummyLM([{"topic": "card delivery"}] * 4, adapter=dspy.JSONAdapter()),
        "answer": dspy.utils.DummyLM([{"reply": "We are sending a new card today."}] * 4, adapter=dspy.JSONAdapter()),
    })


def test_spans_follow_the_genai_conventions_on_the_local_model():
    from stagewise.programs.run import observing
    from stagewise.runtime.tracing import Tracer, tracer_provider

    provider, exporter = tracer_provider("memory")
    stage = Stage("topic", "message -> topic", lm=get_lm("smollm2-135m"))
    with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider, program="desk")):
        run(stage, {"message": "my card is lost"}, store="memory://trace", run_id="traced")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans["chat smollm2-135m"]
    assert call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.provider.name"] == "local"
    assert call.attributes["gen_ai.request.model"] == "smollm2-135m"
    assert call.attributes["gen_ai.usage.input_tokens"] > 10 and call.attributes["gen_ai.usage.output_tokens"] > 0
    assert "gen_ai.input.messages" not in call.attributes  # content only on opt-in
    stage_span, request_span = spans["stage topic"], spans["invoke_workflow desk"]
    assert call.parent.span_id == stage_span.context.span_id
    assert stage_span.parent.span_id == request_span.context.span_id
    assert stage_span.attributes["stagewise.context.ref"] == "traced/topic"
    assert list(stage_span.attributes["stagewise.context.received"]) == ["input.message"]
    assert request_span.attributes["stagewise.run_id"] == "traced"
    assert call.start_time >= stage_span.start_time and call.end_time <= stage_span.end_time + 10_000_000


@pytest.mark.local_model
def test_prompts_and_responses_are_traced_only_on_opt_in():
    from stagewise.programs.run import observing
    from stagewise.runtime.tracing import Tracer, tracer_provider

    provider, exporter = tracer_provider("memory")
    stage = Stage("topic", "message -> topic", lm=get_lm("smollm2-135m"))
    with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider, capture_content=True)):
        prediction = stage(message="card missing since May")
    [call] = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert "card missing since May" in call.attributes["gen_ai.input.messages"]
    assert json.dumps(prediction.topic)[1:-1] in call.attributes["gen_ai.output.messages"]


@pytest.mark.local_model
def test_traces_are_visible_in_mlflow(tmp_path):
    import mlflow

    from stagewise.programs.run import observing
    from stagewise.runtime.tracing import Tracer, tracer_provider

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("traces")
    provider, _ = tracer_provider("mlflow")
    chain = Chain("desk", [Stage("triage", "ticket -> topic", lm=get_lm("smollm2-135m")),
                           Stage("answer", "ticket, topic -> reply", lm=get_lm("smollm2-135m"))])
    with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider, program="desk")):
        chain(ticket="My card has not arrived.")
    traces = mlflow.search_traces(return_type="list", flush=True)
    assert len(traces) == 1
    names = {span.name for span in traces[0].data.spans}
    assert {"invoke_workflow desk", "stage triage", "stage answer"} <= names
    assert "chat smollm2-135m" in names
    llm = next(span for span in traces[0].data.spans if span.name == "chat smollm2-135m")
    assert llm.attributes["gen_ai.usage.output_tokens"] > 0


def test_context_diff_text_and_html_page_in_headless_chromium(tmp_path):
    from typer.testing import CliRunner

    from stagewise.cli import app

    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(budget_chain(), {"notes": LONG_TICKET}, store=url, run_id="diffed")
    page = tmp_path / "diff.html"
    result = CliRunner().invoke(app, ["diff", "diffed", "--store", url, "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "+ added        triage.topic" in result.stdout
    assert "~ transformed  input.notes -> answer~budget.input.notes" in result.stdout
    assert "- removed      input.notes" in result.stdout
    chromium = require_service("chromium")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "Context diff of run" in dom and "diffed" in dom
    assert "stage answer#0" in dom and "transformed" in dom and "answer~budget.input.notes" in dom
    assert "2 stage executions" in dom


def test_replay_from_a_stage_with_a_changed_section_and_model(tmp_path):
    from typer.testing import CliRunner

    from stagewise.cli import app

    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(replay_factory(), {"ticket": "card missing"}, store=url, run_id="orig",
            origin={"factory": "tests.test_runtime:replay_factory"})
    REPLAY_CALLS.clear()
    untrusted = CliRunner().invoke(app, ["replay", "orig", "--stage", "answer", "--store", url])
    assert untrusted.exit_code == 2 and "'tests.test_runtime:replay_factory'" in untrusted.output
    assert "--trust-code" in untrusted.output and REPLAY_CALLS == []  # the name in the store was not imported
    result = CliRunner().invoke(app, ["replay", "orig", "--stage", "answer", "--set", "triage.topic=refund",
                                      "--store", url, "--trust-code"])
    assert result.exit_code == 0, result.output
    assert REPLAY_CALLS == ["answer"]  # triage's stored output was reused: no call
    assert "answer#0" in result.stdout and "reply" in result.stdout and "refund" in result.stdout
    replayed = cp.open_checkpoints(url).load("orig-replay-1")
    assert replayed["steps"][0]["outputs"] == {"topic": "refund"} and replayed["status"] == "completed"
    runner = CliRunner()
    bad = runner.invoke(app, ["replay", "orig", "--stage", "nope", "--store", url, "--trust-code"])
    assert bad.exit_code == 2 and "has no stage 'nope' (its stages: triage, answer)" in bad.output
    bad = runner.invoke(app, ["replay", "missing", "--stage", "answer", "--store", url])
    assert bad.exit_code == 2 and "no run 'missing'" in bad.output
    bad = runner.invoke(app, ["diff", "missing", "--store", url])
    assert bad.exit_code == 2 and "no run 'missing'" in bad.output
    bad = runner.invoke(app, ["replay", "orig", "--stage", "answer", "--set", "nothing=1", "--store", url,
                              "--trust-code"])
    assert bad.exit_code == 2 and "neither an input" in bad.output


class TicketTopic(dspy.Signature):
    """What is the support ticket about?"""

    ticket: str = dspy.InputField()
    topic: Literal["card", "transfer", "account"] = dspy.OutputField()


class TicketUrgency(dspy.Signature):
    """Must the ticket be handled today?"""

    ticket: str = dspy.InputField()
    topic: str = dspy.InputField()
    urgent: bool = dspy.OutputField()


def local_desk():
    """Two stages on SmolLM2, by catalog name (a replay can put a stage on another model)."""
    chain = Chain("desk", [Stage("triage", TicketTopic), Stage("urgency", TicketUrgency)])
    return chain.set_models({"triage": "smollm2-135m", "urgency": "smollm2-135m"})


def test_replay_with_a_stage_on_another_local_model(tmp_path):
    """`stagewise replay RUN --stage urgency --model urgency=gemma3-270m`: the triage stage's stored output is
    reused (no call), the urgency stage runs for real on Gemma 3, and the new run records it."""
    from typer.testing import CliRunner

    from stagewise.cli import app

    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(local_desk(), {"ticket": "My card was stolen an hour ago and someone is spending my money!"},
            store=url, run_id="desk", origin={"factory": "tests.test_runtime:local_desk"})
    with track_usage() as ledger:
        result = CliRunner().invoke(app, ["replay", "desk", "--stage", "urgency", "--model", "urgency=gemma3-270m",
                                          "--store", url, "--trust-code"])
    assert result.exit_code == 0, result.output
    assert [(r.model, r.stage) for r in ledger.records] == [("gemma3-270m", "urgency")]  # triage: no call
    original, replayed = cp.open_checkpoints(url).load("desk"), cp.open_checkpoints(url).load("desk-replay-1")
    assert replayed["status"] == "completed"
    assert [(s["stage"], s["model"]) for s in replayed["steps"]] == [("triage", "smollm2-135m"),
                                                                     ("urgency", "gemma3-270m")]
    assert replayed["steps"][0]["outputs"] == original["steps"][0]["outputs"]  # restored as stored
    assert [(s["stage"], s["model"]) for s in original["steps"]] == [("triage", "smollm2-135m"),
                                                                     ("urgency", "smollm2-135m")]
    before, after = original["steps"][1]["outputs"]["urgent"], replayed["steps"][1]["outputs"]["urgent"]
    assert isinstance(after, bool)
    if before == after:
        assert "no output changed" in result.stdout
    else:
        assert "urgency#0" in result.stdout and str(after) in result.stdout
    unknown = CliRunner().invoke(app, ["replay", "desk", "--stage", "urgency", "--model", "urgency=gemma3",
                                       "--store", url, "--trust-code"])
    assert unknown.exit_code == 2 and "Did you mean" in unknown.output and "gemma3-270m" in unknown.output


REPLAY_CALLS: list[str] = []


class EchoLM(dspy.utils.DummyLM):
    """Scripted: answers with the topic it was given, and notes which stage called it."""

    def __init__(self, stage, answer):
        super().__init__([answer] * 10, adapter=dspy.JSONAdapter())
        self.stage = stage

    def forward(self, prompt=None, messages=None, **kwargs):
        REPLAY_CALLS.append(self.stage)
        text = " ".join(str(m.get("content")) for m in messages or [])
        if self.stage == "answer":
            topic = "refund" if "refund" in text else "card delivery"
            self.answers = iter([{"reply": f"About {topic}: we will help."}])
        return super().forward(prompt=prompt, messages=messages, **kwargs)


def replay_factory():
    chain = Chain("desk", [Stage("triage", "ticket -> topic"), Stage("answer", "ticket, topic -> reply")])
    return chain.set_models({"triage": EchoLM("triage", {"topic": "card delivery"}),
                             "answer": EchoLM("answer", {"reply": "x"})})


def test_otlp_exporter_sends_the_spans_to_a_collector_on_loopback():
    """A real HTTP endpoint on loopback receives the OTLP/protobuf export."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from stagewise.programs.run import observing
    from stagewise.runtime.tracing import Tracer, tracer_provider

    received = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        provider, _ = tracer_provider("otlp", endpoint=endpoint)
        with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider, program="desk")):
            budget_chain()(notes="card missing")
        provider.force_flush()
    finally:
        server.shutdown()
    assert received and all(path == "/v1/traces" and kind == "application/x-protobuf" for path, kind, _ in received)
    names = set()
    for _, _, body in received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        names |= {span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}
    assert {"invoke_workflow desk", "stage triage", "stage answer"} <= names
