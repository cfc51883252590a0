"""Usage accounting when a provider reports no token counts, and the tiktoken fallback."""

import dspy
import pytest
from dspy.lm15 import Message, Response, Usage

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


def test_missing_provider_usage_is_counted_with_tiktoken_and_says_which_encoding():
    spec = default_catalog()["gpt-4o-mini"]  # o200k_base: not downloadable here, so the offline cl100k
    lm = StagewiseLM("openai/gpt-4o-mini-scripted", spec=spec, engine=SilentUsageEngine(), cache=False)
    with track_usage() as ledger, stage_scope("answer"):
        lm("What is the capital of France?")
    [record] = ledger.records
    expected_in = count_chat_tokens([{"role": "user", "content": "What is the capital of France?"}], "o200k_base")
    expected_out = count_tokens("Paris is the capital.", "o200k_base")
    assert (record.input_tokens, record.output_tokens) == (expected_in.tokens, expected_out.tokens)
    assert record.token_source == expected_in.encoding
    assert record.stage == "answer"
    assert record.cost_usd == pytest.approx(spec.cost(record.input_tokens, record.output_tokens))


def test_offline_fallback_is_recorded():
    encoding = encoding_for("o200k_base")
    assert encoding.name in ("o200k_base", OFFLINE_FALLBACK)
    assert count_tokens("hello world", "cl100k_base").tokens == 2
    with pytest.raises(ValueError, match="not a tiktoken encoding"):
        encoding_for("no_such_encoding")


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
