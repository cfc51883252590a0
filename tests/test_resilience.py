"""Resilience, budgets and serving: scripted failures for the orchestration, then real components:
two llama.cpp servers as primary and fallback, a Redis-backed limiter shared by two processes
(counted at a server on loopback), budgets and cost alerts on recorded models, the HTTP API."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dspy
import httpx
import pybreaker
import pytest

from stagewise.data import OutcomeTable
from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import get_lm
from stagewise.models.usage import track_usage
from stagewise.models.weights import weights_path
from stagewise.programs import Chain, Stage
from stagewise.programs.run import guarding, observing
from stagewise.runtime.costs import CostMonitor
from stagewise.runtime.resilience import (
    Breakers,
    Budget,
    BudgetExceeded,
    Limit,
    RateLimited,
    RateLimiter,
    Resilience,
    StageFailed,
    StagePolicy,
    is_retryable,
)
from stagewise.runtime.stage_cache import StageCache

from .conftest import ROOT, ROUTERBENCH_TEST, require_service


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- orchestration, with scripted models ----------------------------------------------------

class Scripted(dspy.utils.DummyLM):
    """Answers ``answer`` (a string for an ``answer`` field, or a dict of fields); raises ``errors``
    (in order) on its first calls."""

    def __init__(self, name, answer, errors=()):
        fields = answer if isinstance(answer, dict) else {"answer": answer}
        super().__init__([fields] * 50, adapter=dspy.JSONAdapter())
        self.model, self.errors, self.calls = name, list(errors), 0

    def forward(self, prompt=None, messages=None, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().forward(prompt=prompt, messages=messages, **kwargs)


class Status(Exception):
    def __init__(self, status_code):
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def test_only_retryable_errors_are_retryable():
    assert is_retryable(Status(429)) and is_retryable(Status(503)) and is_retryable(TimeoutError())
    assert is_retryable(ConnectionRefusedError())
    assert not is_retryable(Status(400)) and not is_retryable(ValueError("bad json"))


def quick(mode="retry", fallbacks=(), retries=2):
    return StagePolicy(mode, tuple(fallbacks), retries=retries, backoff_s=0.01, max_backoff_s=0.02)


def test_retryable_errors_are_retried_and_others_fail_at_once():
    flaky = Scripted("flaky", "ok", [Status(503), TimeoutError()])
    stage = Stage("s", "question -> answer", lm=flaky)
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(default=quick())):
        assert stage(question="q").answer == "ok"
    assert flaky.calls == 3
    broken = Scripted("broken", "ok", [Status(400)])
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(default=quick())):
        with pytest.raises(StageFailed, match="failed on every model") as caught:
            Stage("s", "question -> answer", lm=broken)(question="q")
    assert broken.calls == 1 and isinstance(caught.value.__cause__, Status)


def test_fallback_breaker_opens_then_a_probe_closes_it():
    primary = Scripted("primary", "from primary", [ConnectionError("down")] * 6)
    backup = Scripted("backup", "from backup")
    breakers = Breakers(fail_max=2, reset_s=0.5)
    resilience = Resilience(policies={"s": quick("fallback", retries=1)}, breakers=breakers)
    resilience._lms["backup"] = backup  # the fallback model by name, scripted
    resilience.policies["s"] = quick("fallback", ["backup"], retries=1)
    stage = Stage("s", "question -> answer", lm=primary)
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience):
        answers = [stage(question=f"q{i}").answer for i in range(4)]
        assert answers == ["from backup"] * 4
        assert breakers.state("primary") == pybreaker.STATE_OPEN
        calls_while_open = primary.calls
        stage(question="q4")
        assert primary.calls == calls_while_open  # open: not called at all
        primary.errors.clear()
        time.sleep(0.6)  # past reset_s: the next call is the half-open probe
        assert stage(question="q5").answer == "from primary"
    assert breakers.state("primary") == pybreaker.STATE_CLOSED


def test_skip_marks_the_result_degraded_and_fail_stops_the_request():
    down = Scripted("down", "x", [ConnectionError("down")] * 20)
    chain = Chain("c", [Stage("first", "question -> answer", lm=down),
                        Stage("second", "question -> summary", lm=dspy.utils.DummyLM(
                            [{"summary": "still here"}] * 3, adapter=dspy.JSONAdapter()))])
    resilience = Resilience(policies={"first": quick("skip", retries=0)}, breakers=Breakers(fail_max=100))
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience):
        prediction = chain(question="q")
    assert prediction.summary == "still here" and prediction.degraded == ["first"]
    assert "degraded" in prediction.trace["first"].notes[0]
    resilience = Resilience(policies={"first": quick("fail")}, breakers=Breakers(fail_max=100))
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience), pytest.raises(StageFailed) as caught:
        chain(question="q")
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_in_process_limiter_queues_and_sheds():
    limiter = RateLimiter({"p": Limit(requests=3)}, window_s=0.5)
    taken = []
    for _ in range(7):
        limiter.acquire("p")
        taken.append(time.monotonic())
    assert taken[3] - taken[0] >= 0.5 and taken[6] - taken[3] >= 0.5  # the 4th waited for the 1st to leave
    assert all(sum(1 for t in taken if start <= t < start + 0.5) <= 3 for start in taken)
    shedding = RateLimiter({"p": Limit(requests=1, tokens=100)}, window_s=5, policy="shed")
    shedding.acquire("p", 10)
    with pytest.raises(RateLimited, match="1 requests"):
        shedding.acquire("p", 10)
    tokens = RateLimiter({"*": Limit(tokens=100)}, window_s=5, policy="shed")
    tokens.acquire("q", 60)
    with pytest.raises(RateLimited, match="100 tokens"):
        tokens.acquire("q", 60)


def test_a_retried_request_does_not_repeat_successful_stages():
    first = Scripted("first", "topic")
    second = Scripted("second", {"answer2": "done"}, [ValueError("parse error")])
    chain = Chain("c", [Stage("a", "question -> answer", lm=first), Stage("b", "answer -> answer2", lm=second)])
    cache = StageCache()
    with dspy.context(adapter=dspy.JSONAdapter()), observing(cache):
        with pytest.raises(ValueError):
            chain(question="q")
        assert chain(question="q").answer2 == "done"
    assert first.calls == 1 and cache.hits == 1  # "a" came from the cache on the retried request
    assert second.calls == 2


# --- budgets and cost alerts on recorded models ---------------------------------------------

@pytest.fixture(scope="module")
def arc():
    return OutcomeTable.load(ROUTERBENCH_TEST)


def test_a_budget_smaller_than_the_pipeline_stops_it_before_the_over_budget_call():
    lm = get_lm("smollm2-135m", max_tokens=48)
    chain = Chain("c", [Stage("topic", "message -> topic", lm=lm), Stage("reply", "message, topic -> reply", lm=lm),
                        Stage("summary", "reply -> summary", lm=lm)])
    with dspy.context(adapter=dspy.JSONAdapter()), track_usage() as ledger:
        chain(message="My card has not arrived.")
    budget = Resilience(budget=Budget(per_request_usd=ledger.total_cost * 0.9))  # less than the pipeline costs
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(budget), track_usage() as stopped:
        with pytest.raises(BudgetExceeded, match=r"stopped before stage '(\w+)'") as caught:
            chain(message="My card has not arrived.")
    blocked = caught.value.args[0].split("'")[1]
    order = ["topic", "reply", "summary"]
    ran = {r.stage for r in stopped.records}
    assert ran == set(order[: order.index(blocked)])  # the over-budget call was never made
    assert stopped.total_cost <= ledger.total_cost * 0.9
    assert all(f"{stage}.{stage}" in caught.value.partial for stage in ran)  # the partial results are kept


def test_cost_anomalies_are_flagged_with_a_callback(arc):
    alerts = []
    monitor = CostMonitor("arc", min_history=10, quantile=0.95, factor=3.0, callback=alerts.append)
    stage = Stage("answer", "prompt -> answer", lm=get_lm("recorded/mistral-7b-chat", replay_table=arc))
    with dspy.context(adapter=dspy.JSONAdapter()), observing(monitor):
        for prompt in arc.prompts[:15]:
            stage(prompt=prompt)
        assert alerts == []
        stage.lm = get_lm("recorded/gpt-4-1106-preview", replay_table=arc)
        stage(prompt=arc.prompts[15])
    [alert] = alerts
    assert alert.cost_usd > alert.threshold_usd and set(alert.by_stage) == {"answer"}
    assert "above the usual" in str(alert)


# --- a Redis-backed limiter shared by two processes, counted at the server -------------------

class Counting(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint on loopback that records when each request arrives."""

    arrivals: list[float] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Counting.arrivals.append(time.time())
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": '{"answer": "ok"}'}}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


LIMITED = """
import sys, dspy
import stagewise
from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import get_lm
from stagewise.programs import Stage
from stagewise.programs.run import guarding
from stagewise.runtime.resilience import Limit, RateLimiter, Resilience
catalog = ModelCatalog.load(sys.argv[1])
limiter = RateLimiter({{"counting": Limit(requests={limit})}}, window_s={window}, redis_url=sys.argv[2])
stage = Stage("s", "question -> answer", lm=get_lm("counted", catalog=catalog, cache=False))
with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(limiter=limiter)):
    for i in range({calls}):
        stage(question=f"{{sys.argv[3]}}-{{i}}")
"""


def test_two_processes_sharing_a_redis_limiter_never_exceed_it_together(tmp_path):
    redis_url = require_service("redis")
    import redis

    redis.Redis.from_url(redis_url).delete("stagewise:ratelimit:counting")
    Counting.arrivals = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    catalog = tmp_path / "models.toml"
    catalog.write_text(f"""
[models.counted]
provider = "counting"
engine = "litellm"
model = "openai/m"
api_base = "http://127.0.0.1:{server.server_address[1]}/v1"
input_price = 1.0
output_price = 2.0
context_window = 4096
max_output = 64
tokenizer = "cl100k_base"
""")
    limit, window, calls = 6, 3.0, 9
    script = LIMITED.format(limit=limit, window=window, calls=calls)
    env = {**os.environ, "OPENAI_API_KEY": "unused-by-the-local-server"}
    try:
        processes = [subprocess.Popen([sys.executable, "-c", script, str(catalog), redis_url, f"p{n}"], env=env,
                                      cwd=ROOT) for n in range(2)]
        assert all(p.wait(timeout=120) == 0 for p in processes)
    finally:
        server.shutdown()
    arrivals = sorted(Counting.arrivals)
    assert len(arrivals) == 2 * calls
    busiest = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert busiest <= limit  # in every window of the limiter's length, at the server
    assert arrivals[-1] - arrivals[0] >= window * (2 * calls // limit - 1)  # the limiter did make them wait


# --- two real llama.cpp servers: primary and fallback ---------------------------------------

def _start_llama(port: int, log):
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(weights_path("smollm2-135m-instruct")),
         "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--n_threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start") from None
            time.sleep(0.3)


@pytest.mark.server
def test_killing_the_primary_server_falls_back_and_the_breaker_recovers(tmp_path):
    ports = {"primary": _free_port(), "backup": _free_port()}
    log = open(tmp_path / "servers.log", "wb")
    servers = {name: _start_llama(port, log) for name, port in ports.items()}
    catalog_path = tmp_path / "models.toml"
    catalog_path.write_text("".join(f"""
[models.{name}]
provider = "openai-compatible"
engine = "litellm"
model = "openai/smollm2"
api_base = "http://127.0.0.1:{port}/v1"
input_price = 1.0
output_price = 2.0
context_window = 2048
max_output = 32
context_format = "plain"
tokenizer = "cl100k_base"
""" for name, port in ports.items()))
    catalog = ModelCatalog.load(catalog_path)
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-the-local-servers")
    breakers = Breakers(fail_max=2, reset_s=4.0)
    resilience = Resilience(policies={"answer": StagePolicy("fallback", ("backup",), retries=1, backoff_s=0.05,
                                                            max_backoff_s=0.1)}, breakers=breakers, catalog=catalog)
    stage = Stage("answer", "question -> answer", lm=get_lm("primary", catalog=catalog, cache=False, max_tokens=16,
                                                            num_retries=0))
    primary_endpoint = f"http://127.0.0.1:{ports['primary']}/v1"
    served_by, states, charged = [], [], []
    try:
        with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience):
            for number in range(12):
                if number == 3:  # mid-load: the primary dies while the request is on its way
                    threading.Timer(0.05, servers["primary"].kill).start()
                if number == 8:
                    servers["primary"].wait()
                    servers["primary"] = _start_llama(ports["primary"], log)
                    time.sleep(4.2)  # past the breaker's reset timeout: the next call probes the primary
                with track_usage() as ledger:
                    prediction = stage(question=f"Say hello number {number}.")
                assert prediction.answer is not None  # no request is lost
                served_by.append(prediction.trace["answer"].model)
                states.append(breakers.state(primary_endpoint))
                charged.append(len(ledger.records))
    finally:
        for process in servers.values():
            process.kill()
    assert served_by[:3] == ["primary"] * 3
    assert "backup" in served_by[3:8] and served_by[-1] == "primary"
    assert pybreaker.STATE_OPEN in states[3:8] and states[-1] == pybreaker.STATE_CLOSED
    assert charged == [1] * 12  # one charged call per request: failed calls cost nothing, nothing twice


# --- the HTTP API ---------------------------------------------------------------------------

def build_answer():
    """The served program: one stage answering from a recorded model (RouterBench ARC)."""
    return Stage("answer", "prompt -> answer")


@pytest.fixture(scope="module")
def served(tmp_path_factory, arc):
    from stagewise.optimize.export import export

    folder = tmp_path_factory.mktemp("served")
    program = build_answer()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=arc)})
    export(program, folder / "best", factory="tests.test_resilience:build_answer", factory_path=str(ROOT))
    port = _free_port()
    env = {**os.environ, "STAGEWISE_SERVE_TOKEN": "test-token-123", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "stagewise")), "serve",
                                str(folder / "best"), "--port", str(port), "--rate", "8", "--max-body", "8000",
                                "--trust-code"],
                               env=env, stdout=open(folder / "serve.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            assert process.poll() is None and time.monotonic() < deadline, (folder / "serve.log").read_text()
            time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(timeout=30)


def _serve(folder, *options, token="test-token-123"):
    """``stagewise serve`` in a subprocess on a free loopback port: (process, base URL, log file)."""
    port = _free_port()
    env = {**os.environ, "STAGEWISE_SERVE_TOKEN": token, "PYTHONPATH": str(ROOT)}
    log = folder / f"serve-{port}.log"
    process = subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "stagewise")), "serve",
                                str(folder / "best"), "--port", str(port), "--trust-code", *options],
                               env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            return process, base, log
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"stagewise serve did not start:\n{log.read_text()}") from None
            time.sleep(0.3)


def test_serve_with_a_fallback_model_answers_from_the_primary_and_the_fallback(tmp_path, arc):
    """README: ``stagewise serve runs/banking/best --fallback cards=gemma3-270m``. Building the local
    fallback model used to raise ``StagewiseLM() got multiple values for keyword argument 'num_retries'``
    on every request (500); here a real serve process with a local fallback answers 200."""
    from stagewise.optimize.export import export

    program = build_answer()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=arc)})
    export(program, tmp_path / "best", factory="tests.test_resilience:build_answer", factory_path=str(ROOT))
    process, base, log = _serve(tmp_path, "--fallback", "answer=smollm2-135m")
    auth = {"Authorization": "Bearer test-token-123"}
    try:
        recorded = httpx.post(f"{base}/v1/run", json={"prompt": arc.prompts[3]}, headers=auth, timeout=60)
        assert recorded.status_code == 200, recorded.text + log.read_text()
        body = recorded.json()
        assert body["outputs"]["answer"] == arc.outcome(arc.prompts[3], "mistralai/mixtral-8x7b-chat").response
        assert [s["model"] for s in body["stages"]] == ["recorded/mixtral-8x7b-chat"]
        # A prompt the recorded model never saw fails on it: the local fallback model answers.
        fallen = httpx.post(f"{base}/v1/run", json={"prompt": "Say hello to the customer."}, headers=auth,
                            timeout=120)
        assert fallen.status_code == 200, fallen.text + log.read_text()
        body = fallen.json()
        [stage] = body["stages"]
        assert stage["model"] == "smollm2-135m" and stage["output_tokens"] > 0 and stage["cost_usd"] > 0
        assert isinstance(body["outputs"]["answer"], str) and body["outputs"]["answer"].strip()
        assert body["degraded"] == []
    finally:
        process.terminate()
        process.wait(timeout=30)


def build_drafted():
    """Served under a budget: a cheap recorded model drafts, an expensive one answers (RouterBench ARC)."""
    return Chain("drafted", [Stage("draft", "prompt -> draft"), Stage("answer", "prompt -> answer")])


def test_serve_budget_answers_402_with_the_partial_results(tmp_path, arc):
    """``stagewise serve --budget USD``: a request whose next call could take it over the budget is stopped
    before that call, answered 402 ``budget_exceeded`` with what the earlier stages produced."""
    from stagewise.optimize.export import export

    cheap, expensive = "recorded/mistral-7b-chat", "recorded/gpt-4-1106-preview"

    def worst_case(model, prompt):  # what the budget assumes a call may cost (up to max_tokens of output)
        stage = Stage("answer" if model == expensive else "draft",
                      "prompt -> answer" if model == expensive else "prompt -> draft",
                      lm=get_lm(model, replay_table=arc))
        with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(budget=Budget(per_request_usd=0.0))):
            with pytest.raises(BudgetExceeded) as probe:
                stage(prompt=prompt)
        return probe.value.estimate_usd

    def recorded(model, prompt):  # what the call costs, from the table (the catalog names its column)
        return arc.outcome(prompt, ModelCatalog.load()[model].model).cost_usd

    prompts = arc.prompts[:6]
    # The draft is spent, then the answer's worst case must fit: what each request needs.
    needs = {p: recorded(cheap, p) + worst_case(expensive, p) for p in prompts}
    fits, stopped = min(needs, key=needs.get), max(needs, key=needs.get)
    budget = (needs[fits] + needs[stopped]) / 2
    assert worst_case(cheap, stopped) < budget  # the stopped request's draft runs: there are partial results
    program = build_drafted()
    program.set_models({"draft": get_lm(cheap, replay_table=arc), "answer": get_lm(expensive, replay_table=arc)})
    export(program, tmp_path / "best", factory="tests.test_resilience:build_drafted", factory_path=str(ROOT))
    process, base, log = _serve(tmp_path, "--budget", repr(budget))
    auth = {"Authorization": "Bearer test-token-123"}
    try:
        ok = httpx.post(f"{base}/v1/run", json={"prompt": fits}, headers=auth, timeout=60)
        refused = httpx.post(f"{base}/v1/run", json={"prompt": stopped}, headers=auth, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert ok.status_code == 200, ok.text + log.read_text()
    assert ok.json()["cost_usd"] == pytest.approx(recorded(cheap, fits) + recorded(expensive, fits))
    assert ok.json()["outputs"]["answer"] == arc.outcome(fits, "gpt-4-1106-preview").response
    assert refused.status_code == 402, refused.text + log.read_text()
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    said = re.match(r"stopped before stage 'answer': request budget \$([\d.]+): spent \$([\d.]+), stage 'answer' "
                    r"would cost up to \$([\d.]+)$", error["message"])
    assert said, error["message"]
    assert float(said[1]) == pytest.approx(budget, abs=1e-9) and float(said[3]) > budget - float(said[2]) > 0
    assert error["partial"] == {"draft.draft": arc.outcome(stopped, "mistralai/mistral-7b-chat").response}


def test_the_api_runs_the_program_and_reports_per_stage_cost(served, arc):
    auth = {"Authorization": "Bearer test-token-123"}
    health = httpx.get(f"{served}/healthz").json()
    assert health["status"] == "ok" and health["inputs"] == ["prompt"]
    schema = httpx.get(f"{served}/openapi.json").json()
    assert "/v1/run" in schema["paths"]
    response = httpx.post(f"{served}/v1/run", json={"prompt": arc.prompts[0]}, headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"]["answer"] == arc.outcome(arc.prompts[0], "mistralai/mixtral-8x7b-chat").response
    [stage] = body["stages"]
    assert stage["stage"] == "answer" and stage["model"] == "recorded/mixtral-8x7b-chat" and stage["cost_usd"] > 0
    assert body["cost_usd"] == pytest.approx(stage["cost_usd"])


def test_the_api_answers_bad_input_with_json_errors_and_keeps_serving(served, arc):
    auth = {"Authorization": "Bearer test-token-123"}
    cases = [
        (httpx.post(f"{served}/v1/run", content=b"{not json", headers={**auth, "Content-Type": "application/json"}),
         400, "invalid_json"),
        (httpx.post(f"{served}/v1/run", json={}, headers=auth), 422, "invalid_request"),
        (httpx.post(f"{served}/v1/run", json={"prompt": "x", "extra": 1}, headers=auth), 422, "invalid_request"),
        (httpx.post(f"{served}/v1/run", json={"prompt": "x" * 9000}, headers=auth), 413, "body_too_large"),
        (httpx.post(f"{served}/v1/run", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}), 401,
         "unauthorized"),
        (httpx.post(f"{served}/v1/run", json={"prompt": "x"}), 401, "unauthorized"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    # The recorded model cannot answer a prompt it never saw: the model failed (503), not stagewise (500).
    unknown = httpx.post(f"{served}/v1/run", json={"prompt": "not a recorded prompt"}, headers=auth, timeout=30)
    assert unknown.status_code == 503, unknown.text
    error = unknown.json()["error"]
    assert (error["code"], error["message"]) == ("upstream_failed", "stage 'answer' failed on every model it may use")
    assert error["run_id"] == unknown.headers["X-Stagewise-Run"]  # a failed request is a recorded failed run
    ok = httpx.post(f"{served}/v1/run", json={"prompt": arc.prompts[1]}, headers=auth, timeout=30)
    assert ok.status_code == 200  # still serving after every error
    codes = [httpx.post(f"{served}/v1/run", json={"prompt": arc.prompts[2]}, headers=auth, timeout=30).status_code
             for _ in range(8)]
    assert 429 in codes and httpx.post(f"{served}/v1/run", json={"prompt": "x"}, headers=auth).json()["error"][
        "code"] == "rate_limited"


def test_a_tenants_daily_budget_stops_its_requests_before_the_call(arc, tmp_path):
    """Behind the API a tenant is its bearer token; what its requests cost is charged by the server."""
    import hashlib

    from fastapi.testclient import TestClient

    from stagewise.optimize.export import export
    from stagewise.runtime.resilience import tenant_scope
    from stagewise.runtime.serve import create_app

    stage = Stage("answer", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=arc))

    def worst_case(prompt):  # the call's worst case, checked before it: up to max_tokens of output
        with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(budget=Budget(per_request_usd=0.0))):
            with pytest.raises(BudgetExceeded) as probe:
                stage(prompt=prompt)
        return probe.value.estimate_usd

    worst = {prompt: worst_case(prompt) for prompt in arc.prompts[:4]}
    cheapest, other_prompt = sorted(worst, key=worst.get)[:2]  # another prompt costs at least as much
    recorded = arc.outcome(cheapest, "gpt-4-1106-preview").cost_usd  # what the call costs, from the table
    assert worst[cheapest] >= recorded > 0
    budget = Budget(per_tenant_day_usd=worst[cheapest] + recorded / 2)  # room for one request, not two
    program = build_answer()
    program.set_models({"answer": get_lm("recorded/gpt-4-1106-preview", replay_table=arc)})
    export(program, tmp_path / "best", factory="tests.test_resilience:build_answer", factory_path=str(ROOT))
    client = TestClient(create_app(tmp_path / "best", token="acme-token", resilience=Resilience(budget=budget),
                                   factory=build_answer))
    acme = hashlib.sha256(b"Bearer acme-token").hexdigest()[:12]  # the tenant: the credential, hashed
    auth = {"Authorization": "Bearer acme-token"}
    first = client.post("/v1/run", json={"prompt": cheapest}, headers=auth)
    assert first.status_code == 200, first.text
    assert first.json()["cost_usd"] == pytest.approx(recorded)
    assert budget.tenant_spent(acme) == pytest.approx(recorded)  # charged by the server, at the recorded cost
    second = client.post("/v1/run", json={"prompt": other_prompt}, headers=auth)
    assert second.status_code == 402, second.text
    error = second.json()["error"]
    assert error["code"] == "budget_exceeded" and f"tenant {acme!r} daily budget" in error["message"]
    assert error["partial"] == {}  # stopped before its only call
    assert budget.tenant_spent(acme) == pytest.approx(recorded)  # the stopped request spent nothing
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(budget=budget)):
        with tenant_scope(acme), pytest.raises(BudgetExceeded, match="daily budget"):
            stage(prompt=other_prompt)
        with tenant_scope("other"), track_usage() as other:
            stage(prompt=other_prompt)  # another tenant is not affected
    assert other.total_cost == pytest.approx(arc.outcome(other_prompt, "gpt-4-1106-preview").cost_usd)


def test_breaker_state_is_shared_through_redis():
    redis_url = require_service("redis")
    endpoint = f"http://shared-endpoint-{time.time_ns()}/v1"
    one, two = Breakers(fail_max=2, reset_s=30, redis_url=redis_url), Breakers(fail_max=2, reset_s=30,
                                                                               redis_url=redis_url)

    def failing():
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises((ConnectionError, pybreaker.CircuitBreakerError)):
            one(endpoint).call(failing)
    assert one.state(endpoint) == pybreaker.STATE_OPEN
    assert two.state(endpoint) == pybreaker.STATE_OPEN  # another process's breaker sees it open
    with pytest.raises(pybreaker.CircuitBreakerError):
        two(endpoint).call(lambda: "not called")


def test_server_processes_share_the_per_token_rate_limit_through_redis(tmp_path, arc):
    from fastapi.testclient import TestClient

    from stagewise.optimize.export import export
    from stagewise.runtime.checkpoint import StoreConnectionError
    from stagewise.runtime.serve import create_app

    redis_url = require_service("redis")
    program = build_answer()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=arc)})
    export(program, tmp_path / "best", factory="tests.test_resilience:build_answer", factory_path=str(ROOT))
    token = f"token-{time.time_ns()}"  # a fresh token: a fresh window in the shared limiter
    apps = [TestClient(create_app(tmp_path / "best", token=token, requests_per_minute=3, redis_url=redis_url,
                                      factory=build_answer))
            for _ in range(2)]
    auth = {"Authorization": f"Bearer {token}"}
    codes = [apps[i % 2].post("/v1/run", json={}, headers=auth).status_code for i in range(4)]
    assert codes == [422, 422, 422, 429]  # 3 per minute across both servers (422: an empty body)
    with pytest.raises(StoreConnectionError) as caught:
        Breakers(redis_url="redis://:hunter22@127.0.0.1:1/0")
    assert "hunter22" not in str(caught.value) and "redis://:***@127.0.0.1:1/0" in str(caught.value)


def test_a_fallback_answer_is_not_cached_as_the_primary_models():
    primary = Scripted("primary", "from primary", [ConnectionError("down")])
    backup = Scripted("backup", "from backup")
    resilience = Resilience(policies={"s": quick("fallback", ["backup"], retries=0)}, breakers=Breakers(fail_max=5))
    resilience._lms["backup"] = backup
    stage, cache = Stage("s", "question -> answer", lm=primary), StageCache()
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience), observing(cache):
        assert stage(question="same").answer == "from backup"
        assert stage(question="same").answer == "from primary"  # not the fallback's answer from the cache
        assert stage(question="same").answer == "from primary" and cache.hits == 1
