"""Replay of recorded outcomes (RouterBench and RouteLLM tables) as DSPy models."""

import dspy
import pytest

from stagewise.data import NotRecordedError, OutcomeTable, OutcomeTableError
from stagewise.models.lm import get_lm
from stagewise.models.replay import ReplayEngine
from stagewise.models.tokens import count_tokens
from stagewise.models.usage import track_usage

from .conftest import ROUTELLM, ROUTERBENCH_TEST


@pytest.fixture(scope="module")
def routerbench():
    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture(scope="module")
def routellm():
    return OutcomeTable.load(ROUTELLM)


def test_routerbench_table_loads_with_its_models_and_empty_cells(routerbench):
    assert routerbench.format == "routerbench"
    assert len(routerbench) == 445 and len(routerbench.models) == 11
    assert "gpt-4-1106-preview" in routerbench.models
    # Prompts are stored as Python list literals: they come back as plain text.
    assert routerbench.prompts[0].startswith("George wants to warm his hands")
    assert "empty cells" in routerbench.report()


def test_routellm_table_loads(routellm):
    assert routellm.format == "routellm"
    assert len(routellm) == 1319
    assert set(routellm.models) == {"mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"}
    assert routellm.costs is None


def test_routerbench_replay_returns_recorded_response_and_recorded_cost(routerbench):
    lm = get_lm("recorded/gpt-4-1106-preview", replay_table=routerbench)
    prompt = routerbench.prompts[0]
    outcome = routerbench.outcome(prompt, "gpt-4-1106-preview")
    assert lm(prompt) == [outcome.response]
    record = lm.usage.records[-1]
    assert record.cost_source == "recorded" and record.cost_usd == pytest.approx(0.00519)
    # Hand check: gpt-4-1106-preview costs $10/M in and $30/M out, and RouterBench's recorded
    # cost is exactly the price of the cl100k_base token counts we record.
    assert record.input_tokens * 10e-6 + record.output_tokens * 30e-6 == pytest.approx(0.00519)
    assert outcome.correct == 1.0


def test_routellm_replay_is_priced_from_the_catalog(routellm):
    lm = get_lm("recorded/mixtral-8x7b-instruct", replay_table=routellm)
    prompt = routellm.prompts[0]
    response = lm(prompt)[0]
    outcome = routellm.outcome(prompt, "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert response == outcome.response and outcome.correct == 1.0
    record = lm.usage.records[-1]
    tokens_in = count_tokens(outcome.prompt, "cl100k_base").tokens
    tokens_out = count_tokens(outcome.response, "cl100k_base").tokens
    assert (record.input_tokens, record.output_tokens) == (tokens_in, tokens_out)
    # together_ai Mixtral 8x7B in litellm's map: $0.60 per million tokens each way.
    assert record.cost_source == "litellm"
    assert record.cost_usd == pytest.approx((tokens_in + tokens_out) * 0.6e-6)


def test_replay_through_a_typed_dspy_signature(routerbench):
    lm = get_lm("recorded/claude-v2", replay_table=routerbench)
    prompt = routerbench.prompts[3]
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict("prompt -> answer")(prompt=prompt)
    assert prediction.answer == routerbench.outcome(prompt, "claude-v2").response


def test_unknown_prompt_is_an_error_not_an_invented_answer(routerbench):
    lm = get_lm("recorded/gpt-4-1106-preview", replay_table=routerbench)
    with pytest.raises(dspy.utils.exceptions.LMInvalidRequestError, match="prompt not in outcome table"):
        lm("What is the capital of France?")
    with pytest.raises(NotRecordedError, match="prompt not in outcome table"):
        routerbench.outcome("nope", "gpt-4-1106-preview")


def test_empty_cell_is_an_error(routerbench):
    # RouterBench leaves some scores empty while the response is there: no recorded correctness.
    row = next(i for i in range(len(routerbench)) if routerbench.scores.isna().iloc[i]["claude-v1"])
    prompt = routerbench.prompts[row]
    with pytest.raises(NotRecordedError, match=r"empty cell for model 'claude-v1' \(no recorded score\)"):
        routerbench.outcome(prompt, "claude-v1")
    lm = get_lm("recorded/claude-v1", replay_table=routerbench)
    with pytest.raises(dspy.utils.exceptions.LMInvalidRequestError, match="empty cell"):
        lm(prompt)


def test_model_not_in_table_is_an_error(routellm):
    with pytest.raises(NotRecordedError, match="not in outcome table"):
        get_lm("recorded/claude-v1", replay_table=routellm)
    from stagewise.models.catalog import default_catalog

    with pytest.raises(NotRecordedError):
        ReplayEngine(routellm, default_catalog()["recorded/claude-v2"])


def test_loading_reports_skipped_rows(tmp_path):
    table = tmp_path / "small.csv"
    table.write_text(
        "prompt,a,b,a_response,b_response\n"
        "q1,True,False,r1a,r1b\n"
        ",True,True,x,y\n"
        "q1,False,False,dup,dup\n"
        "q2,True,,r2a,\n"
    )
    loaded = OutcomeTable.load(table)
    assert loaded.format == "routellm" and loaded.prompts == ["q1", "q2"]
    assert [(s.row, s.reason.split(" ")[0]) for s in loaded.skipped] == [(2, "empty"), (3, "duplicate")]
    report = loaded.report()
    assert "skipped row 2: empty prompt" in report and "1 empty cells" in report
    with pytest.raises(NotRecordedError, match="empty cell"):
        loaded.outcome("q2", "b")
    assert loaded.outcome("  q2 ", "a").correct == 1.0  # whitespace does not matter


def test_bad_tables_are_clear_errors(tmp_path):
    with pytest.raises(OutcomeTableError, match="does not exist"):
        OutcomeTable.load(tmp_path / "missing.csv")
    no_prompt = tmp_path / "no_prompt.csv"
    no_prompt.write_text("question,a,a_response\nq,True,r\n")
    with pytest.raises(OutcomeTableError, match="no 'prompt' column"):
        OutcomeTable.load(no_prompt)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("prompt,topic\nq,chat\n")
    with pytest.raises(OutcomeTableError, match="no model columns: expected RouterBench"):
        OutcomeTable.load(unknown)
    scores_only = tmp_path / "scores_only.csv"  # a plain table: routers train on it, replay cannot answer from it
    scores_only.write_text("prompt,score\nq,1\n")
    table = OutcomeTable.load(scores_only)
    assert table.format == "plain" and table.models == ["score"]
    with pytest.raises(NotRecordedError, match="empty cell for model 'score' \\(no recorded response\\)"):
        table.outcome("q", "score")
    bad_score = tmp_path / "bad_score.csv"
    bad_score.write_text("prompt,a,a_response\nq,maybe,r\n")
    with pytest.raises(OutcomeTableError, match="column 'a': score 'maybe'"):
        OutcomeTable.load(bad_score)


def test_replay_needs_a_table():
    with pytest.raises(ValueError, match="replay_table"):
        get_lm("recorded/gpt-4-1106-preview")


def test_usage_is_collected_per_stage_and_request(routerbench):
    from stagewise.models.usage import request_scope, stage_scope

    strong = get_lm("recorded/gpt-4-1106-preview", replay_table=routerbench)
    weak = get_lm("recorded/mistral-7b-chat", replay_table=routerbench)
    with track_usage() as ledger:
        for i in range(3):
            with request_scope(f"r{i}"):
                with stage_scope("draft"):
                    weak(routerbench.prompts[i])
                with stage_scope("final"):
                    strong(routerbench.prompts[i])
    frame = ledger.to_dataframe()
    assert len(frame) == 6
    by_stage = ledger.totals(by="stage")
    expected_final = sum(routerbench.costs.at[i, "gpt-4-1106-preview"] for i in range(3))
    assert by_stage.loc["final", "cost_usd"] == pytest.approx(expected_final)
    assert by_stage.loc["draft", "calls"] == 3
    by_request = ledger.totals(by="request_id")
    assert by_request["cost_usd"].sum() == pytest.approx(ledger.total_cost)
    assert set(by_request.index) == {"r0", "r1", "r2"}


def test_cache_hits_keep_the_nominal_cost_and_spend_nothing(routerbench):
    lm = get_lm("recorded/gpt-4-1106-preview", replay_table=routerbench, cache=True)
    prompt = routerbench.prompts[7]
    with track_usage() as ledger:
        lm(prompt)
        lm(prompt)
    first, second = ledger.records
    assert not first.cache_hit and first.cost_usd > 0 and first.spent_usd == first.cost_usd
    assert second.cache_hit and second.spent_usd == 0
    assert (second.input_tokens, second.output_tokens, second.cost_usd) == \
        (first.input_tokens, first.output_tokens, first.cost_usd)
    assert ledger.total_spent == pytest.approx(first.cost_usd)
    assert ledger.total_cost == pytest.approx(2 * first.cost_usd)


def test_async_replay(routellm):
    import asyncio

    lm = get_lm("recorded/gpt-4-1106-preview", replay_table=routellm, cache=False)
    prompt = routellm.prompts[5]
    [answer] = asyncio.run(lm.acall(prompt))
    assert answer == routellm.outcome(prompt, "gpt-4-1106-preview").response
    assert lm.usage.records[-1].cost_source == "litellm"
