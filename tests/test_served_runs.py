"""Served traffic recorded (issue 15, item 3): every request through `stagewise serve` is a run whose id
comes back in the response; `stagewise runs list/show`, `diff` and `replay` read it; spans join the
caller's trace through `traceparent`."""

import json
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.models.lm import get_lm
from stagewise.optimize.export import export
from stagewise.programs import Stage
from stagewise.runtime import checkpoint as cp
from stagewise.runtime.serve import create_app

from .conftest import ROUTERBENCH_TEST
from .test_serve_limits import serve, stop


def build():
    return Stage("answer", "prompt -> answer")


@pytest.fixture(scope="module")
def arc():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture()
def exported(arc, tmp_path):
    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=arc)})
    return export(program, tmp_path / "best", factory="tests.test_served_runs:build")


def recorded(arc, prompt, model="mistralai/mixtral-8x7b-chat"):
    return arc.outcome(prompt, model).response


def test_a_served_request_is_a_run_that_diff_replay_and_runs_show_find(exported, arc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/served.db"
    client = TestClient(create_app(exported, runs=url, factory=build))
    prompt = arc.prompts[5]
    response = client.post("/v1/run", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    run_id = response.headers["X-Stagewise-Run"]
    assert response.json()["run_id"] == run_id and response.json()["outputs"]["answer"] == recorded(arc, prompt)
    record = cp.open_checkpoints(url).load(run_id)
    assert record["status"] == "completed" and record["inputs"] == {"prompt": prompt}
    assert [s["key"] for s in record["steps"]] == ["answer#0"] and record["program"]["export"] == str(exported)
    assert record["steps"][0]["model"] == "recorded/mixtral-8x7b-chat" and record["steps"][0]["cost_usd"] > 0

    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", "--store", url, "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["run_id"] == run_id and row["stages"] == ["answer"] and row["status"] == "completed"
    shown = runner.invoke(app, ["runs", "show", run_id, "--store", url])
    assert shown.exit_code == 0 and "answer#0" in shown.stdout and "recorded/mixtral-8x7b-chat" in shown.stdout
    diffed = runner.invoke(app, ["diff", run_id, "--store", url])
    assert diffed.exit_code == 0 and "answer#0" in diffed.stdout
    replayed = runner.invoke(app, ["replay", run_id, "--stage", "answer", "--model",
                                   "answer=recorded/gpt-4-1106-preview", "--store", url, "--trust-code"])
    assert replayed.exit_code == 0, replayed.output
    again = cp.open_checkpoints(url).load(f"{run_id}-replay-1")
    assert again["steps"][0]["model"] == "recorded/gpt-4-1106-preview"
    assert again["outputs"]["answer"] == recorded(arc, prompt, "gpt-4-1106-preview")


def test_a_failed_request_is_a_failed_run_and_its_error_names_it(exported, arc, tmp_path):
    from stagewise.runtime.budgets import Budget
    from stagewise.runtime.resilience import Resilience

    url = f"sqlite:///{tmp_path}/served.db"
    client = TestClient(create_app(exported, runs=url, factory=build,
                                   resilience=Resilience(budget=Budget(per_request_usd=1e-9))))
    response = client.post("/v1/run", json={"prompt": arc.prompts[6]})
    assert response.status_code == 402
    run_id = response.headers["X-Stagewise-Run"]
    assert response.json()["error"]["run_id"] == run_id
    record = cp.open_checkpoints(url).load(run_id)
    assert record["status"] == "failed" and record["steps"] == [] and record["error"]["stage"] == "answer#0"
    failed = CliRunner().invoke(app, ["runs", "list", "--store", url, "--status", "failed", "--json"])
    assert [row["run_id"] for row in json.loads(failed.stdout)] == [run_id]


def test_a_stage_answered_from_the_servers_cache_is_still_recorded(exported, arc, tmp_path):
    url = f"sqlite:///{tmp_path}/served.db"
    client = TestClient(create_app(exported, runs=url, factory=build))
    prompt = arc.prompts[7]
    first, second = (client.post("/v1/run", json={"prompt": prompt}) for _ in range(2))
    store = cp.open_checkpoints(url)
    cached = store.load(second.headers["X-Stagewise-Run"])
    assert second.json()["cost_usd"] == 0 and cached["status"] == "completed"  # no model call the second time
    assert [s["key"] for s in cached["steps"]] == ["answer#0"]
    assert cached["steps"][0]["outputs"] == store.load(first.headers["X-Stagewise-Run"])["steps"][0]["outputs"]


def test_spans_join_the_callers_trace(exported, arc, tmp_path):
    from stagewise.runtime.tracing import Tracer, tracer_provider

    provider, sink = tracer_provider("memory")
    client = TestClient(create_app(exported, runs=None, tracer=Tracer(provider), factory=build))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = client.post("/v1/run", json={"prompt": arc.prompts[8]},
                           headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.status_code == 200 and "X-Stagewise-Run" not in response.headers
    spans = sink.get_finished_spans()
    assert spans and {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
    [root] = [s for s in spans if s.parent is not None and format(s.parent.span_id, "016x") == parent_id]
    assert any(s.name.startswith("chat ") for s in spans)
    assert root.name


def test_runs_list_filters_and_bad_values_are_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    store = cp.open_checkpoints(url)
    step = {"key": "route#0", "stage": "route", "outputs": {}, "sections": [], "calls": 1, "input_tokens": 3,
            "output_tokens": 2, "cost_usd": 0.5}
    store.save({"run_id": "a", "status": "completed", "inputs": {}, "steps": [step]})
    store.save({"run_id": "b", "status": "failed", "inputs": {}, "steps": []})
    runner = CliRunner()

    def listed(*options):
        result = runner.invoke(app, ["runs", "list", "--store", url, "--json", *options])
        assert result.exit_code == 0, result.output
        return [row["run_id"] for row in json.loads(result.stdout)]

    assert sorted(listed()) == ["a", "b"] and listed("--stage", "route") == ["a"]
    assert listed("--status", "failed") == ["b"]
    assert sorted(listed("--since", "1h")) == ["a", "b"] and listed("--since", "2999-01-01") == []
    [row] = json.loads(runner.invoke(app, ["runs", "list", "--store", url, "--json", "--stage", "route"]).stdout)
    assert (row["calls"], row["tokens"], row["cost_usd"]) == (1, 5, 0.5)
    table = runner.invoke(app, ["runs", "list", "--store", url])
    assert table.exit_code == 0 and "2 run(s)" in table.stdout
    for options, named in ((["--since", "yesterday"], "--since 'yesterday'"), (["--status", "lost"], "'lost'")):
        bad = runner.invoke(app, ["runs", "list", "--store", url, *options])
        assert bad.exit_code == 2 and named in bad.output and len(bad.output.strip().splitlines()) == 1
    missing = runner.invoke(app, ["runs", "show", "nope", "--store", url])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output


def test_stagewise_serve_records_runs_next_to_the_program_by_default(exported, arc, tmp_path):
    process, base, log = serve(tmp_path, "--no-auth")
    try:
        response = httpx.post(f"{base}/v1/run", json={"prompt": arc.prompts[9]}, timeout=60)
    finally:
        stop(process)
    assert response.status_code == 200, response.text
    store = f"sqlite:///{exported / 'runs.db'}"
    assert "runs recorded in " + store in log.read_text()
    shown = CliRunner().invoke(app, ["runs", "show", response.headers["X-Stagewise-Run"], "--store", store, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["outputs"]["answer"] == recorded(arc, arc.prompts[9])


# --- personal data kept out of what serve records (issue 15, item 4) ---------------------------------

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"
PII_PROMPT = f"My card {CARD} was charged twice. Please write to {EMAIL} about it."
PII_RESPONSE = f"We have blocked card {CARD} and will write to {EMAIL} today."


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_a_card_number_and_an_email_sent_through_serve_are_kept_nowhere(kind, tmp_path):
    import pandas as pd

    from stagewise.data import OutcomeTable
    from stagewise.runtime import open_context_store

    from .conftest import require_service

    column = "mistralai/mixtral-8x7b-chat"
    table_path = tmp_path / "pii.csv"
    pd.DataFrame({"prompt": [repr([PII_PROMPT])], column: ["1.0"], f"{column}|model_response": [repr([PII_RESPONSE])],
                  f"{column}|total_cost": ["0.0002"]}).to_csv(table_path, index=False)
    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=OutcomeTable.load(table_path))})
    export(program, tmp_path / "best", factory="tests.test_served_runs:build")  # what serve(tmp_path) serves
    runs, context = {"sqlite": (f"sqlite:///{tmp_path}/runs.db", f"sqlite:///{tmp_path}/context.db"),
                     "postgres": (require_service("postgres"),) * 2,
                     "redis": (f"sqlite:///{tmp_path}/runs.db", require_service("redis") + "?ttl=600")}[kind]
    process, base, log = serve(tmp_path, "--no-auth", "--redact", "all", "--runs", runs, "--context-store", context,
                               "--trace", "console", "--trace-content")
    try:
        response = httpx.post(f"{base}/v1/run", json={"prompt": PII_PROMPT}, timeout=60)
    finally:
        stop(process)
    assert response.status_code == 200, log.read_text()[-3000:]
    assert response.json()["outputs"]["answer"] == PII_RESPONSE  # the model saw the original; the caller too
    run_id = response.headers["X-Stagewise-Run"]
    kept = {"run": json.dumps(cp.open_checkpoints(runs).load(run_id)),
            "context": json.dumps(open_context_store(context).entries(run_id)),
            "spans and logs": log.read_text()}
    assert '"name": "chat recorded/mixtral-8x7b-chat"' in kept["spans and logs"]  # the spans were written
    for where, text in kept.items():
        for secret in (CARD, CARD.replace(" ", ""), EMAIL):
            assert secret not in text, f"{secret!r} kept in the {where}"
        assert "<CREDIT_CARD>" in text and "<EMAIL>" in text, where  # redacted, not dropped


def test_a_run_page_shows_the_steps_as_a_timeline_and_the_context_diff_in_chromium(arc, tmp_path):
    import dspy

    from stagewise.programs import Chain
    from stagewise.runtime import run

    from .conftest import require_service

    url = f"sqlite:///{tmp_path}/runs.db"
    answer = Stage("answer", "prompt -> answer", lm=get_lm("recorded/mixtral-8x7b-chat", replay_table=arc))
    check = Stage("check", "prompt, answer -> verdict",
                  lm=dspy.utils.DummyLM([{"verdict": "looks right"}], adapter=dspy.JSONAdapter()))
    chain = Chain("desk", [answer, check])
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(chain, {"prompt": arc.prompts[10]}, store=url, run_id="paged")
    page = tmp_path / "run.html"
    shown = CliRunner().invoke(app, ["runs", "show", "paged", "--store", url, "--html", str(page)])
    assert shown.exit_code == 0 and f"wrote {page}" in shown.stdout
    chromium = require_service("chromium")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "Run <code>paged</code> (completed)" in dom
    assert dom.count("class=\"step\"") == 2 and "step-answer#0" in dom and "step-check#0" in dom
    assert "recorded/mixtral-8x7b-chat" in dom and "looks right" in dom and "class=\"bar\"" in dom
    assert "2 stage executions" in dom and "answer.answer" in dom  # the context diff, below the timeline
    record = cp.open_checkpoints(url).load("paged")
    calls = sum(step["calls"] for step in record["steps"])
    assert f"{record['steps'][0]['cost_usd']:.6f}" in dom and f"{calls} model call(s)" in dom
