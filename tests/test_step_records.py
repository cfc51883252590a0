"""Every step is a step (issue 15, items 1 and 2): a router's decision, a retrieval's passages, a fan-out's
aggregation and a cascade's acceptance are recorded like stages (checkpoints, spans, diff), and replay can
force a route, accept or escalate at a cascade, or change a retrieved passage."""

import json
import time

import dspy
import numpy as np
import pytest
from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.models.lm import get_lm
from stagewise.programs import Cascade, Chain, DocumentIndex, FanOut, MajorityVote, Retrieve, Router, Stage
from stagewise.runtime import checkpoint as cp
from stagewise.runtime import run
from stagewise.runtime.diff import diff_text

DOCUMENTS = ["A lost card can be frozen in the app under Cards, then Freeze.",
             "Card deliveries take five to seven working days.",
             "Refunds for a duplicate charge reach your account in three days.",
             "Exchange rates are updated every minute on weekdays."]


class KeywordRouter:
    """A classifier: 'cards' when the text mentions a card, else 'billing'; probabilities from counts."""

    classes_ = np.array(["billing", "cards"])

    def predict(self, texts):
        return ["cards" if "card" in t.lower() else "billing" for t in texts]

    def predict_proba(self, texts):
        return np.array([[0.2, 0.8] if "card" in t.lower() else [0.9, 0.1] for t in texts])


def desk(lm_for):
    """Router -> (cards: Retrieve -> FanOut of two answers, majority vote) | (billing: one answer)."""
    cards = Chain("cards", [
        Retrieve("retrieve", DocumentIndex(DOCUMENTS), query="input.query", k=2),
        FanOut("answers", {"short": Stage("short", "query, passage_1 -> answer", lm=lm_for("short")),
                           "careful": Stage("careful", "query, passage_1 -> answer", lm=lm_for("careful"))},
               MajorityVote("answer")),
    ])
    billing = Stage("billing", "query -> answer", lm=lm_for("billing"))
    return Router("support", KeywordRouter(), {"cards": cards, "billing": billing}, query="input.query")


def scripted(name):
    return dspy.utils.DummyLM([{"answer": f"{name} says freeze it"}] * 10, adapter=dspy.JSONAdapter())


def test_route_retrieval_and_aggregation_are_steps_in_the_checkpoint_and_the_diff(tmp_path):
    from stagewise.programs.run import observing
    from stagewise.runtime import Tracer, tracer_provider

    url = f"sqlite:///{tmp_path}/runs.db"
    provider, spans = tracer_provider("memory")
    with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider)):
        prediction = run(desk(scripted), {"query": "I lost my card yesterday"}, store=url, run_id="desk")
    assert prediction.route == "cards"
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert by_name["route support"].attributes["stagewise.decision.route"] == "cards"
    assert json.loads(by_name["route support"].attributes["stagewise.decision.probabilities"])["cards"] == 0.8
    assert by_name["fanout answers"].attributes["stagewise.decision.agreement"] == 0.5
    assert by_name["stage short"].parent.span_id == by_name["fanout answers"].context.span_id  # branches inside
    record = cp.open_checkpoints(url).load("desk")
    steps = {step["key"]: step for step in record["steps"]}
    route = steps["route:support#0"]
    assert route["kind"] == "route" and route["decision"]["route"] == "cards"
    assert route["decision"]["by"] == "KeywordRouter" and route["decision"]["probabilities"] == {"billing": 0.2,
                                                                                                "cards": 0.8}
    retrieved = steps["retrieve:retrieve#0"]
    assert [d["id"] for d in retrieved["decision"]["documents"]] == ["0", "1"]
    assert [s["name"] for s in retrieved["sections"]] == ["passage_1", "passage_2"]
    aggregate = steps["fanout:answers#0"]
    assert set(aggregate["decision"]["branches"]) == {"short", "careful"} and aggregate["decision"]["agreement"] == 0.5
    assert {"short#0", "careful#0"} <= set(steps)  # both branches' stages
    text = diff_text(record)
    assert "route support#0: route=cards" in text and "by=KeywordRouter" in text
    assert "retrieve retrieve#0:" in text and "+ added        retrieve.passage_1" in text
    assert "fanout answers#0: aggregator=MajorityVote" in text and "2 stage executions, 3 other steps" in text
    assert "  = branches     short                  | careful" in text  # the branches side by side
    from stagewise.runtime import ContextRecorder, open_context_store

    store = open_context_store(f"sqlite:///{tmp_path}/context.db")
    with dspy.context(adapter=dspy.JSONAdapter()), observing(ContextRecorder(store)):
        run(desk(scripted), {"query": "I lost my card yesterday"}, store=url, run_id="mirrored")
    mirrored = {(e["stage"], e["key"]) for e in store.entries("mirrored")}
    assert {("support", "route"), ("retrieve", "passage_2"), ("answers", "agreement")} <= mirrored  # steps too
    assert "    answer       short says freeze it   | careful says freeze it" in text


def test_the_diff_page_shows_the_route_the_passages_and_the_branches_side_by_side_in_chromium(tmp_path):
    import subprocess

    from .conftest import require_service

    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(desk(scripted), {"query": "I lost my card yesterday"}, store=url, run_id="desk")
    page = tmp_path / "diff.html"
    result = CliRunner().invoke(app, ["diff", "desk", "--store", url, "--html", str(page)])
    assert result.exit_code == 0, result.output
    chromium = require_service("chromium")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "route support#0" in dom and "route=cards" in dom and "retrieve.passage_2" in dom
    assert "<th>branch short</th><th>branch careful</th>" in dom
    assert "<td>short says freeze it</td><td>careful says freeze it</td>" in dom


def test_replay_forces_a_route_and_changes_a_retrieved_passage(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    lms = {}

    def lm_for(name):
        lms[name] = scripted(name)
        return lms[name]

    with dspy.context(adapter=dspy.JSONAdapter()):
        run(desk(lm_for), {"query": "I lost my card yesterday"}, store=url, run_id="desk",
            origin={"factory": "tests.test_step_records:scripted_desk"})
        from stagewise.runtime.runs import replay

        _, prediction, replayed = replay("desk", "support", store=url, program=desk(lm_for),
                                         decisions={"support": {"route": "billing"}})
        assert prediction.route == "billing" and prediction.answer == "billing says freeze it"
        assert replayed["steps"][0]["decision"] == {"route": "billing", "confidence": None,
                                                    "by": "forced (replay --route)"}
        _, edited, record = replay("desk", "answers", store=url, program=desk(lm_for),
                                   overrides={"retrieve.passage_1": "Call 0800 to block a card."})
    assert edited.route == "cards"
    assert not lms["billing"].history  # the route was restored: no other route ran
    for branch in ("short", "careful"):  # both branches read the edited passage
        [call] = lms[branch].history
        assert "Call 0800 to block a card." in json.dumps(call["messages"])
    assert [s["key"] for s in record["steps"]][:2] == ["route:support#0", "retrieve:retrieve#0"]
    with dspy.context(adapter=dspy.JSONAdapter()):  # the form: from the retrieval, the passage by name
        _, _, again = replay("desk", "retrieve", store=url, program=desk(lm_for),
                             overrides={"passage_1": "Block it by phone."})
    [passage] = [s for s in again["steps"][1]["sections"] if s["name"] == "passage_1"]
    assert passage["content"] == "Block it by phone."
    assert "Block it by phone." in json.dumps(lms["short"].history[-1]["messages"])
    with pytest.raises(Exception, match="has no router 'nope' \\(its routers: support\\)"):
        replay("desk", "support", store=url, program=desk(lm_for), decisions={"nope": {"route": "billing"}})


def scripted_desk():
    return desk(scripted)


def test_the_replay_command_takes_a_route_and_names_unknown_ones(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(scripted_desk(), {"query": "I lost my card yesterday"}, store=url, run_id="desk",
            origin={"factory": "tests.test_step_records:scripted_desk"})
    runner = CliRunner()
    result = runner.invoke(app, ["replay", "desk", "--route", "billing", "--store", url, "--trust-code"])
    assert result.exit_code == 0, result.output
    assert "billing says freeze it" in result.stdout and "cards" in result.stdout
    bad = runner.invoke(app, ["replay", "desk", "--route", "refunds", "--store", url, "--trust-code"])
    assert bad.exit_code == 2 and "route 'refunds', which does not exist (routes: cards, billing)" in bad.output
    nothing = runner.invoke(app, ["replay", "desk", "--store", url, "--trust-code"])
    assert nothing.exit_code == 2 and "replay needs --stage" in nothing.output


class Unsure:
    """A scorer that is never sure: every tier but the last is escalated."""

    def predict_proba(self, texts):
        return np.array([[0.9, 0.1] for _ in texts])


def test_a_cascades_acceptance_is_a_step_and_replay_can_accept_or_escalate(tmp_path):
    from stagewise.runtime.runs import replay

    url = f"sqlite:///{tmp_path}/runs.db"

    def cascade():
        return Cascade("verify", [Stage("cheap", "query -> answer", lm=scripted("cheap")),
                                  Stage("strong", "query -> answer", lm=scripted("strong"))], Unsure(), threshold=0.5)

    with dspy.context(adapter=dspy.JSONAdapter()):
        first = run(cascade(), {"query": "2+2?"}, store=url, run_id="c")
        assert first.tier == "strong"
        step = next(s for s in cp.open_checkpoints(url).load("c")["steps"] if s.get("kind") == "cascade")
        assert step["decision"] == {"accepted": "strong", "escalations": 1, "scores": [0.1, None], "threshold": 0.5}
        _, accepted, _ = replay("c", "verify", store=url, program=cascade(), decisions={"verify": {"accept": True}})
    assert accepted.tier == "cheap" and accepted.answer == "cheap says freeze it"


@pytest.mark.local_model
def test_router_retrieve_fanout_on_the_local_models_diff_and_replay_route(tmp_path):
    """Acceptance: the pipeline on SmolLM2, checkpointed step by step; diff shows the route, the passages
    and both branches; replay --route takes the other route."""
    url = f"sqlite:///{tmp_path}/runs.db"

    def local(name):
        return get_lm("smollm2-135m", max_tokens=24, cache=False)

    with dspy.context(adapter=dspy.JSONAdapter()):
        first = run(desk(local), {"query": "I lost my card yesterday"}, store=url, run_id="local")
        from stagewise.runtime.runs import replay

        _, other, replayed = replay("local", "support", store=url, program=desk(local),
                                    decisions={"support": {"route": "billing"}})
    assert first.route == "cards" and other.route == "billing"
    record = cp.open_checkpoints(url).load("local")
    text = diff_text(record)
    assert "route support#0: route=cards" in text and "retrieve.passage_1" in text and "retrieve.passage_2" in text
    assert "stage short#0 (smollm2-135m" in text and "stage careful#0 (smollm2-135m" in text
    assert [s["key"] for s in replayed["steps"]] == ["route:support#0", "billing#0"]
    assert replayed["steps"][1]["model"] == "smollm2-135m" and replayed["steps"][1]["output_tokens"] > 0


KILLED_FANOUT = """
import sys, time, dspy
sys.path.insert(0, {root!r})
from stagewise.runtime import run
from tests.test_step_records import two_branches

with dspy.context(adapter=dspy.JSONAdapter()):
    run(two_branches(slow_seconds=120), {{"query": "Where is my card?"}}, store={url!r}, run_id="fan")
"""


class SlowLM(dspy.utils.DummyLM):
    """A scripted model that takes ``seconds`` to answer."""

    def __init__(self, answers, seconds: float):
        super().__init__(answers, adapter=dspy.JSONAdapter())
        self.seconds = seconds

    def forward(self, *args, **kwargs):
        time.sleep(self.seconds)
        return super().forward(*args, **kwargs)


def two_branches(slow_seconds: float = 0.0):
    """A fan-out whose "quick" branch answers at once and whose "slow" branch takes ``slow_seconds``."""
    return FanOut("answers", {"quick": Stage("quick", "query -> answer", lm=scripted("quick")),
                              "slow": Stage("slow", "query -> answer",
                                            lm=SlowLM([{"answer": "slow says freeze it"}] * 3, slow_seconds))},
                  MajorityVote("answer"))


def test_a_run_killed_in_a_fan_out_resumes_without_repeating_the_finished_branch(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from stagewise.runtime import resume

    from .conftest import ROOT

    url = f"sqlite:///{tmp_path}/runs.db"
    process = subprocess.Popen([sys.executable, "-c", KILLED_FANOUT.format(root=str(ROOT), url=url)], cwd=ROOT,
                               env={**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")})
    store = cp.open_checkpoints(url)
    deadline = time.monotonic() + 120
    keys: list[str] = []
    while time.monotonic() < deadline and process.poll() is None and "quick#0" not in keys:
        try:
            keys = [step["key"] for step in store.load("fan")["steps"]]
        except cp.UnknownRunError:
            pass
        time.sleep(0.05)
    assert process.poll() is None and keys == ["quick#0"], keys  # killed while the slow branch is running
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert store.load("fan")["status"] == "running"
    program = two_branches()
    with dspy.context(adapter=dspy.JSONAdapter()):
        resumed = resume("fan", store=url, program=program)
    assert not program.branches["quick"].lm.history  # the finished branch was restored, not called
    assert len(program.branches["slow"].lm.history) == 1
    assert resumed.answer in ("quick says freeze it", "slow says freeze it") and resumed.agreement == 0.5
    record = store.load("fan")
    assert record["status"] == "completed"
    assert [s["key"] for s in record["steps"]] == ["quick#0", "slow#0", "fanout:answers#0"]


class Support(dspy.Module):
    """A plain DSPy program: two predictors, one a ChainOfThought."""

    def __init__(self):
        super().__init__()
        self.area = dspy.Predict("message -> area")
        self.intent = dspy.ChainOfThought("message, area -> intent")

    def forward(self, message):
        area = self.area(message=message).area
        return dspy.Prediction(area=area, intent=self.intent(message=message, area=area).intent)


def test_a_plain_dspy_programs_predictors_are_steps_of_its_run(tmp_path):
    from stagewise.programs.run import observing
    from stagewise.runtime import ContextRecorder, Tracer, open_context_store, tracer_provider

    program = Support()
    program.area.lm = dspy.utils.DummyLM([{"area": "cards"}] * 3, adapter=dspy.JSONAdapter())
    program.intent.predict.lm = dspy.utils.DummyLM([{"reasoning": "lost", "intent": "lost_card"}] * 3,
                                                   adapter=dspy.JSONAdapter())
    url = f"sqlite:///{tmp_path}/runs.db"
    provider, spans = tracer_provider("memory")
    context = open_context_store(f"sqlite:///{tmp_path}/context.db")
    with dspy.context(adapter=dspy.JSONAdapter()), observing(Tracer(provider), ContextRecorder(context)):
        prediction = run(program, {"message": "I lost my card"}, store=url, run_id="plain")
    assert prediction.intent == "lost_card"
    record = cp.open_checkpoints(url).load("plain")
    assert record["status"] == "completed" and record["outputs"] == {"area": "cards", "intent": "lost_card"}
    assert [(s["key"], s["outputs"]) for s in record["steps"]] == [
        ("area#0", {"area": "cards"}), ("intent.predict#0", {"reasoning": "lost", "intent": "lost_card"})]
    assert {s.name for s in spans.get_finished_spans()} >= {"stage area", "stage intent.predict"}
    assert {(e["stage"], e["key"]) for e in context.entries("plain")} >= {("area", "area"),
                                                                          ("intent.predict", "intent")}
    assert "stage intent.predict#0" in diff_text(record)


def test_replay_gives_a_stage_other_demos(tmp_path):
    url = f"sqlite:///{tmp_path}/runs.db"
    with dspy.context(adapter=dspy.JSONAdapter()):
        run(scripted_desk(), {"query": "My card is lost"}, store=url, run_id="desk",
            origin={"factory": "tests.test_step_records:scripted_desk"})
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"query": "Card stolen", "answer": "Freeze it in the app"}\n')
    runner = CliRunner()
    result = runner.invoke(app, ["replay", "desk", "--route", "support=billing", "--demos", f"billing={demos}",
                                 "--store", url, "--trust-code"])
    assert result.exit_code == 0, result.output
    from stagewise.runtime.runs import replay

    lm = scripted("billing")
    program = desk(lambda name: lm if name == "billing" else scripted(name))
    with dspy.context(adapter=dspy.JSONAdapter()):
        replay("desk", "support", store=url, program=program, decisions={"support": {"route": "billing"}},
               demos={"billing": [{"query": "Card stolen", "answer": "Freeze it in the app"}]})
    assert "Freeze it in the app" in json.dumps(lm.history[-1]["messages"])  # the demo reached the prompt
    bad = runner.invoke(app, ["replay", "desk", "--stage", "support", "--demos", f"nope={demos}", "--store", url,
                              "--trust-code"])
    assert bad.exit_code == 2 and "set_demos: the program has no stage 'nope'" in bad.output
    demos.write_text("not json")
    broken = runner.invoke(app, ["replay", "desk", "--stage", "support", "--demos", f"billing={demos}", "--store",
                                 url, "--trust-code"])
    assert broken.exit_code == 2 and f"--demos billing={demos}: not JSON" in broken.output
