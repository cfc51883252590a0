"""Usage accounting when a provider reports no token counts, and the tiktoken fallback."""

import dspy
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from dspy.lm15 import Message, Response, Usage

from stagewise.models import tokens
from stagewise.models.catalog import default_catalog
from stagewise.models.lm import StagewiseLM
from stagewise.models.tokens import OFFLINE_FALLBACK, count_chat_tokens, count_tokens, encoding_for
from stagewise.models.usage import UsageLedger, stage_scope, track_usage


class SilentUsageEngine:
    """A scripted engine double: answers, but reports no usage (as some servers do)."""

    def complete(self, request):
        return Response(id=None, model=request.model, message=Message.assistant("Paris is the capital."),
                        finish_reason="stop", usage=Usage())

    def stream(self, request):  # pragma: no cover - not used
        raise NotImplementedError

    def close(self):
        pass


@pytest.fixture()
def no_download(tmp_path, monkeypatch):
    """tiktoken cannot download an encoding file (as on a machine without network), whatever this machine has."""
    read_file = tiktoken.load.read_file

    def refuse(blobpath):  # files on disk (the offline encoding's) still load
        if "://" in blobpath:
            raise ConnectionError(f"no network in this test: {blobpath}")
        return read_file(blobpath)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    for name in ("o200k_base", "cl100k_base"):
        monkeypatch.delitem(tiktoken.registry.ENCODINGS, name, raising=False)
    monkeypatch.setattr(tokens, "_encodings", {})  # stagewise's own cache of loaded encodings


def test_missing_provider_usage_is_counted_with_tiktoken_and_says_which_encoding(no_download):
    spec = default_catalog()["gpt-4o-mini"]  # o200k_base, which cannot be downloaded: the offline cl100k
    lm = StagewiseLM("openai/gpt-4o-mini-scripted", spec=spec, engine=SilentUsageEngine(), cache=False)
    with track_usage() as ledger, stage_scope("answer"):
        lm("What is the capital of France?")
    [record] = ledger.records
    offline = tiktoken.get_encoding(OFFLINE_FALLBACK)
    # OpenAI's chat framing: 3 tokens to prime the reply, 3 per message, plus its role and content.
    expected_in = 3 + 3 + len(offline.encode("user")) + len(offline.encode("What is the capital of France?"))
    expected_out = len(offline.encode("Paris is the capital."))
    assert (record.input_tokens, record.output_tokens) == (expected_in, expected_out)
    assert record.token_source == OFFLINE_FALLBACK
    assert record.stage == "answer"
    assert record.cost_usd == pytest.approx((expected_in * 0.15 + expected_out * 0.60) / 1e6)  # $0.15 / $0.60 per M


def test_offline_fallback_is_recorded(no_download):
    assert encoding_for("o200k_base").name == OFFLINE_FALLBACK
    count = count_tokens("hello world", "cl100k_base")
    assert (count.tokens, count.encoding) == (2, OFFLINE_FALLBACK)
    assert count_chat_tokens([{"role": "user", "content": "hi"}], "o200k_base").encoding == OFFLINE_FALLBACK
    with pytest.raises(ValueError, match="not a tiktoken encoding"):
        encoding_for("no_such_encoding")


def test_an_encoding_that_loads_is_used_and_named():
    """The fallback is only for encodings that cannot be loaded: one that loads counts under its own name."""
    assert encoding_for(OFFLINE_FALLBACK).name == OFFLINE_FALLBACK
    gpt2 = tiktoken.Encoding("gpt2-like-test", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={})
    tiktoken.registry.ENCODINGS["gpt2-like-test"] = gpt2
    try:
        count = count_tokens("hello world", "gpt2-like-test")
    finally:
        del tiktoken.registry.ENCODINGS["gpt2-like-test"]
        tokens._encodings.pop("gpt2-like-test", None)
    assert (count.tokens, count.encoding) == (len("hello world"), "gpt2-like-test")  # one token per byte


def test_ledgers_nest_and_lm_copies_share_one_ledger():
    spec = default_catalog()["gpt-4o-mini"]
    lm = StagewiseLM("openai/gpt-4o-mini-scripted", spec=spec, engine=SilentUsageEngine(), cache=False)
    with track_usage() as outer:
        with track_usage() as inner:
            lm("a")
        lm.copy(temperature=0.5)("b")
    assert len(inner) == 1 and len(outer) == 2 and len(lm.usage) == 2
    totals = outer.totals()
    assert int(totals["calls"].iloc[0]) == 2


def test_empty_ledger_reads_as_an_empty_dataframe():
    frame = UsageLedger().to_dataframe()
    assert frame.empty and "cost_usd" in frame.columns


def test_a_program_run_is_recorded_per_predictor_stage():
    spec = default_catalog()["gpt-4o-mini"]
    lm = StagewiseLM("openai/gpt-4o-mini-scripted", spec=spec, engine=SilentUsageEngine(), cache=False)
    with dspy.context(lm=lm), track_usage() as ledger:
        for name in ("first", "second"):
            with stage_scope(name):
                lm("hi")
    assert list(ledger.totals(by="stage").index) == ["first", "second"]
