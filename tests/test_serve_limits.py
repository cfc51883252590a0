"""``stagewise serve``'s limits (issue 14, item 3): a per-request deadline, a concurrency cap, Redis
calls with timeouts off the event loop (an outage is a 503 while /healthz answers), authentication as a
route dependency with failed attempts rate limited, JSON 404/405, no class names or secrets in answers,
limits keyed by client address without auth, and bounded per-key state.

Real ``stagewise serve`` processes on loopback; models are recorded (RouterBench ARC) or, where a call
must be slow, an OpenAI-compatible stand-in server on loopback that answers after a delay."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dspy
import httpx
import pytest
from fastapi.testclient import TestClient

from stagewise.data import OutcomeTable
from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import get_lm
from stagewise.programs import Stage
from stagewise.programs.run import guarding
from stagewise.redaction import RedactingFilter
from stagewise.runtime.resilience import Limit, RateLimiter, Resilience, StageFailed, StagePolicy

from .conftest import ROOT, ROUTERBENCH_TEST, require_service
from .test_resilience import Scripted, _free_port, build_answer, build_drafted

AUTH = {"Authorization": "Bearer test-token-123"}


@pytest.fixture(scope="module")
def arc():
    return OutcomeTable.load(ROUTERBENCH_TEST)


# --- helpers shared with tests/test_tenant_budgets.py ---------------------------------------

class StandIn:
    """An OpenAI-compatible chat endpoint on loopback: answers every output field "ok" after ``delay``
    seconds, reporting ``prompt_tokens``/``completion_tokens``; records when each call arrives."""

    def __init__(self, delay: float, prompt_tokens: int = 5, completion_tokens: int = 3):
        stand_in = self
        self.arrivals: list[float] = []
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens  # may be changed later

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                stand_in.arrivals.append(time.time())
                time.sleep(delay)
                body = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": '{"draft": "ok", "answer": "ok"}'}}],
                    "usage": {"prompt_tokens": stand_in.prompt_tokens, "completion_tokens": stand_in.completion_tokens,
                              "total_tokens": stand_in.prompt_tokens + stand_in.completion_tokens}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the caller gave up
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def catalog(self, folder, max_output: int = 16):
        """A catalog file whose model ``slow`` is this stand-in (1 and 2 USD per million tokens)."""
        path = folder / "models.toml"
        path.write_text(f"""
[models.slow]
provider = "stand-in"
engine = "litellm"
model = "openai/m"
api_base = "http://127.0.0.1:{self.server.server_address[1]}/v1"
input_price = 1.0
output_price = 2.0
context_window = 4096
max_output = {max_output}
tokenizer = "cl100k_base"
""")
        return path

    def close(self):
        self.server.shutdown()


def export_slow(folder, catalog_path, build=build_answer, factory="tests.test_resilience:build_answer"):
    """Export ``build``'s program with every stage on the stand-in model ``slow``."""
    from stagewise.optimize.export import export

    catalog = ModelCatalog.load(catalog_path)
    program = build()
    program.set_models({name: get_lm("slow", catalog=catalog, cache=False) for name in program.stages()})
    export(program, folder / "best", factory=factory, factory_path=str(ROOT))


def export_recorded(folder, arc, model="recorded/mixtral-8x7b-chat"):
    from stagewise.optimize.export import export

    program = build_answer()
    program.set_models({"answer": get_lm(model, replay_table=arc)})
    export(program, folder / "best", factory="tests.test_resilience:build_answer", factory_path=str(ROOT))


def serve(folder, *options, env=None, token="test-token-123"):
    """``stagewise serve FOLDER/best`` on a free loopback port, with DSPy's disk cache in FOLDER:
    (process, base URL, log file)."""
    port = _free_port()
    env = {**os.environ, "STAGEWISE_SERVE_TOKEN": token, "PYTHONPATH": str(ROOT),
           "OPENAI_API_KEY": "unused-by-the-stand-in",
           "DSPY_CACHEDIR": str(folder / "dspy-cache"),  # a cold cache: answers from earlier runs are not reused
           **(env or {})}
    log = folder / f"serve-{port}.log"
    process = subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "stagewise")), "serve",
                                str(folder / "best"), "--port", str(port), "--trust-code", *options],
                               env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=folder)
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


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def at_once(calls):
    """Run the callables at the same moment, in threads; their results in order."""
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i):
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# --- deadline and concurrency cap, on a slow stand-in provider ------------------------------

def test_a_request_past_its_deadline_is_answered_504_makes_no_further_call_and_is_charged(tmp_path):
    stand_in = StandIn(delay=5.0)
    catalog = stand_in.catalog(tmp_path)
    export_slow(tmp_path, catalog, build_drafted, "tests.test_resilience:build_drafted")  # draft, then answer
    process, base, log = serve(tmp_path, "--timeout", "1", "--daily-budget", "1", "--spend",
                               f"sqlite:///{tmp_path / 'spend.db'}", env={"STAGEWISE_CATALOG": str(catalog)})
    try:
        started = time.monotonic()
        late = httpx.post(f"{base}/v1/run", json={"prompt": "What is 2 + 2?"}, headers=AUTH, timeout=30)
        took = time.monotonic() - started
        assert late.status_code == 504, late.text + log.read_text()
        error = late.json()["error"]
        assert (error["code"], error["message"]) == ("deadline_exceeded", "the request ran longer than 1 s")
        assert error["run_id"] == late.headers["X-Stagewise-Run"]  # the request is a recorded (failed) run
        assert 1.0 <= took < 3.5  # answered at the deadline, not when the model answered (5 s)
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        in_flight = httpx.get(f"{base}/v1/budget", headers=AUTH, timeout=5).json()
        assert in_flight["spent_usd"] > 0  # the abandoned call holds its worst case
        deadline = time.monotonic() + 60
        while not stand_in.arrivals and time.monotonic() < deadline:  # a cold process takes a while to call
            time.sleep(0.2)
        time.sleep(5.0 + 2.0)  # the draft's call returns and settles; the answer stage is never called
        settled = httpx.get(f"{base}/v1/budget", headers=AUTH, timeout=5).json()
    finally:
        stop(process)
        stand_in.close()
    assert len(stand_in.arrivals) == 1
    assert settled["spent_usd"] == pytest.approx((5 * 1.0 + 3 * 2.0) / 1e6)  # what the call cost, charged
    assert settled["spent_usd"] < in_flight["spent_usd"]
    assert "Traceback" not in log.read_text()


def test_the_concurrency_cap_answers_503_with_retry_after(tmp_path):
    stand_in = StandIn(delay=2.0)
    catalog = stand_in.catalog(tmp_path)
    export_slow(tmp_path, catalog)
    process, base, log = serve(tmp_path, "--max-concurrency", "2", env={"STAGEWISE_CATALOG": str(catalog)})
    try:
        answers = at_once([lambda i=i: httpx.post(f"{base}/v1/run", json={"prompt": f"question {i}"}, headers=AUTH,
                                                  timeout=30) for i in range(4)])
        after = httpx.post(f"{base}/v1/run", json={"prompt": "later"}, headers=AUTH, timeout=30)
    finally:
        stop(process)
        stand_in.close()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503, 503], [a.text for a in answers] + [log.read_text()]
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.json()["error"]["code"] == "overloaded" and refused.headers["Retry-After"] == "1"
    assert after.status_code == 200  # the slots are free again
    assert len(stand_in.arrivals) == 3


# --- Redis: timeouts, off the event loop, an outage is a clear 503 --------------------------

def test_a_stalled_or_dead_redis_is_a_503_and_healthz_stays_up(tmp_path, arc):
    require_service("redis")  # the redis-server the test services use; here a private one, stopped at will
    port = _free_port()
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        for _ in range(50):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                time.sleep(0.1)
        export_recorded(tmp_path, arc)
        process, base, log = serve(tmp_path, "--redis", url)
        try:
            ok = httpx.post(f"{base}/v1/run", json={"prompt": arc.prompts[0]}, headers=AUTH, timeout=30)
            assert ok.status_code == 200, ok.text + log.read_text()
            redis_server.send_signal(signal.SIGSTOP)  # stalled: connections open, no answer
            stalled = {}
            worker = threading.Thread(target=lambda: stalled.update(answer=httpx.post(
                f"{base}/v1/run", json={"prompt": arc.prompts[0]}, headers=AUTH, timeout=30)))
            started = time.monotonic()
            worker.start()
            time.sleep(0.3)
            health_started = time.monotonic()
            health = httpx.get(f"{base}/healthz", timeout=5)
            assert health.status_code == 200 and time.monotonic() - health_started < 1.0  # not blocked
            worker.join()
            answer = stalled["answer"]
            assert answer.status_code == 503, answer.text + log.read_text()
            assert answer.json()["error"]["code"] == "store_unavailable" and "Retry-After" in answer.headers
            assert time.monotonic() - started < 10  # the socket timeout, not a hang
            redis_server.send_signal(signal.SIGCONT)
            time.sleep(0.2)
            again = httpx.post(f"{base}/v1/run", json={"prompt": arc.prompts[0]}, headers=AUTH, timeout=30)
            assert again.status_code == 200, again.text
            redis_server.kill()
            redis_server.wait()
            dead = httpx.post(f"{base}/v1/run", json={"prompt": arc.prompts[0]}, headers=AUTH, timeout=30)
            assert dead.status_code == 503 and dead.json()["error"]["code"] == "store_unavailable"
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        finally:
            stop(process)
    finally:
        redis_server.send_signal(signal.SIGCONT)
        redis_server.kill()
        redis_server.wait()


# --- authentication, error format, address keys, in process ---------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory, arc):
    folder = tmp_path_factory.mktemp("limits")
    export_recorded(folder, arc)
    return folder / "best"


def test_auth_is_a_dependency_and_failed_attempts_are_rate_limited(exported, arc):
    from stagewise.runtime.serve import create_app

    client = TestClient(create_app(exported, token="right-token-1", auth_failures_per_minute=3, factory=build_answer))
    assert client.post("/v1/run", json={}).status_code == 401  # the token before the body
    schema = client.get("/openapi.json").json()
    assert "/v1/run" in schema["paths"] and "/v1/budget" in schema["paths"]
    assert client.post("/v1/run", json={}, headers={"Authorization": "Bearer right-token-1"}).status_code == 422
    wrong = {"Authorization": "Bearer wrong-token"}
    codes = [client.post("/v1/run", json={"prompt": "x"}, headers=wrong).status_code for _ in range(3)]
    assert codes == [401, 401, 429]  # the request without a token was the first of 3 failures a minute
    locked = client.post("/v1/run", json={"prompt": arc.prompts[0]}, headers={"Authorization": "Bearer right-token-1"})
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "rate_limited"  # even the right token
    assert "failed authentications" in locked.json()["error"]["message"] and locked.headers["Retry-After"] == "60"


def test_404_405_and_500_are_json_without_class_names_or_secrets(exported, caplog):
    from stagewise.runtime.serve import ApiError, create_app

    app = create_app(exported, token="right-token-1", factory=build_answer)

    def boom():  # routes a test adds to the app: the app's own error handlers answer for them
        raise RuntimeError("connection to postgresql://app:hunter22@db/x failed")

    def refused():
        raise ApiError(400, "refused", "the key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX is not accepted")

    app.add_api_route("/v1/boom", boom)
    app.add_api_route("/v1/refused", refused)
    client = TestClient(app, raise_server_exceptions=False)
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = client.get("/v1/run")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]
    with caplog.at_level(logging.ERROR, logger="stagewise.runtime.serve"):
        failed = client.get("/v1/boom")
    assert failed.status_code == 500
    assert failed.json()["error"] == {"code": "internal_error",
                                      "message": "the request failed; the server's log says why"}
    assert "RuntimeError" not in failed.text and "hunter22" not in failed.text
    assert "hunter22" not in caplog.text and "postgresql://app:***@db/x" in caplog.text  # the log is redacted
    secret = client.get("/v1/refused").json()["error"]["message"]
    assert secret == "the key sk-proj-*** is not accepted"


def test_the_serve_loggers_are_redacted_however_the_app_is_made(exported, arc, caplog):
    """create_app alone (no CLI): a provider's message quoting a key reaches the log redacted."""
    from stagewise.runtime.serve import create_app

    for name in ("stagewise.runtime.serve", "stagewise.runtime.resilience", "stagewise.runtime.budgets"):
        assert any(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters)
    client = TestClient(create_app(exported, token="right-token-1", factory=build_answer))
    key = "sk-proj-" + "Q" * 30
    with caplog.at_level(logging.WARNING, logger="stagewise.runtime.serve"):
        answer = client.post("/v1/run", json={"prompt": f"never recorded, my key is {key}"},
                             headers={"Authorization": "Bearer right-token-1"})
        logging.getLogger("stagewise.runtime.serve").warning("provider answered: bad key %s", key)
    assert answer.status_code == 503 and key not in answer.text
    assert "request failed" in caplog.text and key not in caplog.text
    assert "provider answered: bad key sk-proj-***" in caplog.text


def test_stage_failure_texts_are_redacted():
    key = "sk-ant-" + "Z" * 30
    broken = Scripted("broken", "x", [ValueError(f"provider said: invalid api key {key}")])
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(default=StagePolicy("fail"))):
        with pytest.raises(StageFailed) as caught:
            Stage("s", "question -> answer", lm=broken)(question="q")
    assert key not in str(caught.value) and "sk-ant-***" in str(caught.value)


def test_without_auth_limits_are_keyed_by_client_address_not_a_header(exported):
    from stagewise.runtime.serve import create_app, exposure_warning

    client = TestClient(create_app(exported, token=None, requests_per_minute=2, factory=build_answer))
    codes = [client.post("/v1/run", json={}, headers={"Authorization": f"Bearer made-up-{i}"}).status_code
             for i in range(3)]
    assert codes == [422, 422, 429]  # a new header is not a new key: the address is
    budget = client.get("/v1/budget")
    assert budget.status_code == 429 or budget.json()["tenant"].startswith("client-")
    assert exposure_warning("127.0.0.1", authenticated=False) is None
    assert exposure_warning("::1", authenticated=False) is None and exposure_warning("localhost", False) is None
    assert "without authentication on 0.0.0.0" in exposure_warning("0.0.0.0", authenticated=False)
    assert exposure_warning("0.0.0.0", authenticated=True) is None


def test_serving_without_auth_beyond_loopback_warns(tmp_path, arc):
    export_recorded(tmp_path, arc)
    port = _free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "stagewise")), "serve",
                                str(tmp_path / "best"), "--port", str(port), "--host", "0.0.0.0", "--no-auth",
                                "--trust-code"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
    finally:
        stop(process)
    assert "serving without authentication on 0.0.0.0" in log.read_text()


def test_per_key_limiter_state_is_bounded():
    limiter = RateLimiter({"*": Limit(requests=5)}, window_s=0.2, policy="shed", max_keys=100)
    for i in range(1000):  # a thousand client addresses, once each, in two bursts
        limiter.acquire(f"client-{i}")
        if i == 499:
            time.sleep(0.3)  # the first burst's windows are over
    assert len(limiter._local) <= 501  # swept as it grew: the first burst's keys were dropped
    time.sleep(0.5)  # every window is over
    limiter.acquire("client-new")
    assert list(limiter._local) == ["client-new"]
    assert not limiter.blocked("client-0") and not limiter.blocked("client-new")


@pytest.mark.parametrize("option, value, named", [
    ("timeout_s", 0, "timeout_s (--timeout) must be > 0, got 0"),
    ("max_concurrency", -2, "max_concurrency (--max-concurrency) must be > 0, got -2"),
    ("requests_per_minute", 0, "requests_per_minute (--rate) must be > 0, got 0"),
])
def test_bad_limits_are_config_errors_naming_the_option(exported, option, value, named):
    from stagewise.errors import ConfigError
    from stagewise.runtime.serve import create_app

    with pytest.raises(ConfigError, match=re.escape(named)):
        create_app(exported, token="right-token-1", factory=build_answer, **{option: value})
