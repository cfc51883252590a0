"""The provider path for real: DSPy's own engines against an OpenAI-compatible server on loopback.

The test starts ``python -m llama_cpp.server`` serving the SmolLM2 file, reaches it through a
user catalog entry (model string ``openai/...`` with an ``api_base``), and stops it afterwards.
"""

import socket
import subprocess
import sys
import time
import urllib.request

import dspy
import pytest

from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import MissingAPIKeyError, get_lm
from stagewise.models.usage import track_usage
from stagewise.models.weights import weights_path

pytestmark = pytest.mark.server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(weights_path("smollm2-135m-instruct")),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
             "--n_threads", "2"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/models", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def catalog(server, tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "models.toml"
    path.write_text(f"""
[models.smollm2-http]
provider = "openai-compatible"
engine = "litellm"
model = "openai/smollm2"
api_base = "{server}"
input_price = 1.0
output_price = 2.0
context_window = 4096
max_output = 512
context_format = "plain"
tokenizer = "cl100k_base"
latency_class = "fast"
""")
    return ModelCatalog.load(path)


def test_openai_compatible_server_answers_with_exact_accounting(catalog):
    lm = get_lm("smollm2-http", catalog=catalog, max_tokens=24, cache=False)
    with track_usage() as ledger:
        text = lm("What is the capital of France?")[0]
    assert isinstance(text, str) and text.strip()
    [record] = ledger.records
    history = lm.history[-1]["usage"]
    assert record.token_source == "provider"
    assert (record.input_tokens, record.output_tokens) == (history["prompt_tokens"], history["completion_tokens"])
    assert 0 < record.output_tokens <= 24
    # Hand-computed: $1 per million input tokens, $2 per million output tokens.
    assert record.cost_usd == pytest.approx(record.input_tokens * 1e-6 + record.output_tokens * 2e-6)
    assert record.cost_source == "explicit" and record.engine == "litellm" and record.latency_s > 0


def test_the_server_path_runs_a_dspy_program(catalog):
    lm = get_lm("smollm2-http", catalog=catalog, max_tokens=64, cache=False)
    with dspy.context(lm=lm), track_usage() as ledger:
        prediction = dspy.Predict("question -> answer")(question="Say hello.")
    assert isinstance(prediction.answer, str)
    assert len(ledger) >= 1 and all(r.model == "smollm2-http" for r in ledger.records)


def test_cached_provider_call_is_a_free_cache_hit(catalog):
    lm = get_lm("smollm2-http", catalog=catalog, max_tokens=8)
    lm("Count to two.")
    lm("Count to two.")
    first, second = lm.usage.records[-2:]
    assert not first.cache_hit and second.cache_hit and second.spent_usd == 0
    assert second.cost_usd == pytest.approx(first.cost_usd)  # the nominal cost of the replayed call


def test_hosted_model_without_its_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        get_lm("gpt-4o-mini")


def test_api_key_is_never_saved(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    program = dspy.Predict("question -> answer")
    program.lm = get_lm("gpt-4o-mini")
    path = tmp_path / "program.json"
    program.save(str(path))
    saved = path.read_text()
    assert "sk-test-secret-value" not in saved and "OPENAI_API_KEY" in saved
