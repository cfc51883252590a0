"""Any dspy.Module is a pipeline: plain DSPy programs searched, exported, loaded and served like stagewise's own."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import dspy
import pytest
from typer.testing import CliRunner

import stagewise
from stagewise.cli import app
from stagewise.errors import ConfigError
from stagewise.models import get_lm, track_usage
from stagewise.optimize.compile import CompileCache, compile_stages
from stagewise.optimize.space import TrialChoice
from stagewise.programs import Stage
from stagewise.programs.predictors import PredictorStage, set_models, stages_of

from .conftest import ROOT

SUBSET = ROOT / "examples" / "banking" / "banking77_subset.csv"

PROGRAM = '''
from typing import Literal

import dspy


class PickArea(dspy.Signature):
    """Which team handles this banking message? "cards": card delivery, lost or stolen cards;
    "payments": exchange rates and failed top-ups."""

    message: str = dspy.InputField()
    area: Literal["cards", "payments"] = dspy.OutputField()


class PickIntent(dspy.Signature):
    """Name what the customer needs."""

    message: str = dspy.InputField()
    area: str = dspy.InputField()
    intent: Literal["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"] = dspy.OutputField()


class TwoStep(dspy.Module):
    def __init__(self):
        super().__init__()
        self.area = dspy.Predict(PickArea)
        self.intent = dspy.Predict(PickIntent)

    def forward(self, message):
        area = self.area(message=message).area
        return self.intent(message=message, area=area)
'''

INTENTS = {"card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"}


class Area(dspy.Signature):
    """Which team handles this banking message: cards or payments?"""

    message: str = dspy.InputField()
    area: Literal["cards", "payments"] = dspy.OutputField()


def _examples(n: int) -> list[dspy.Example]:
    import pandas as pd

    rows = pd.read_csv(SUBSET).groupby("intent").head(n // 4 + 1).head(n)
    return [dspy.Example(message=r.text, area=r.area, intent=r.intent).with_inputs("message")
            for r in rows.itertuples()]


def _intent_match(example, prediction, trace=None):
    return prediction.intent == example.intent


# --- stages of plain modules (no model calls) ------------------------------------------------

class Hops(dspy.Module):
    def __init__(self):
        super().__init__()
        self.area = dspy.Predict(Area)
        self.answer = dspy.ChainOfThought("question -> answer")
        self.hops = [dspy.Predict("query -> passage"), dspy.Predict("query -> passage")]
        self.staged = Stage("review", "answer -> verdict")  # a stagewise stage inside a plain module
        self.wrapped = Stage("wrapped", dspy.ChainOfThought("text -> summary"))  # a plain module as a stage's step


def test_predictors_are_stages_named_by_attribute_path_and_stagewise_stages_by_name():
    stages = stages_of(Hops())
    assert list(stages) == ["review", "wrapped", "area", "answer.predict", "hops[0]", "hops[1]"]
    assert [type(stages[n]).__name__ for n in stages] == ["Stage", "Stage", *["PredictorStage"] * 4]
    assert list(stages["answer.predict"].signature.output_fields) == ["reasoning", "answer"]


def test_a_served_plain_programs_request_fields_are_its_forward_parameters_without_dspys_warning():
    """`stagewise serve` reads a plain module's request fields from its forward's parameters, from the class:
    looking `forward` up on the instance made DSPy log "Calling module.forward(...) ... is discouraged"."""
    from stagewise.optimize.export import input_fields

    from .conftest import logged_warnings

    class Asks(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = dspy.Predict("question, channel -> answer")

        def forward(self, question, *, channel="web"):
            return self.answer(question=question, channel=channel)

    with logged_warnings("dspy.primitives.module") as warned:
        assert input_fields(Asks(), {}) == ["question", "channel"]
    assert [m for m in warned if "forward" in m] == []


def test_set_models_names_the_stages_a_program_has():
    program = Hops()
    lm = get_lm("smollm2-135m")
    set_models(program, {"area": lm, "hops[1]": lm, "wrapped": lm})
    assert program.area.lm is lm and program.hops[1].lm is lm and program.hops[0].lm is None
    assert program.wrapped.step.predict.lm is lm
    with pytest.raises(ConfigError, match=r"no stage 'route'; its stages: review, wrapped, area, answer.predict"):
        set_models(program, {"route": lm})


def test_a_search_space_naming_a_missing_stage_lists_the_stages_the_program_has(tmp_path):
    optimizer = stagewise.JointOptimizer(metric=_intent_match, models={"route": ["smollm2-135m"]}, trials=1,
                                         out_dir=tmp_path)
    with pytest.raises(stagewise.SearchSpaceError, match=r"no stage 'route' \(stages: review, wrapped, area, "
                                                         r"answer.predict, hops\[0\], hops\[1\]\)"):
        optimizer.compile(Hops(), trainset=_examples(2), valset=_examples(2))


# --- on the local models ---------------------------------------------------------------------

@pytest.mark.local_model
def test_plain_predictors_are_accounted_per_stage_and_scored_from_the_dspy_trace(tmp_path):
    namespace: dict = {}
    exec(compile(PROGRAM, "two_step", "exec"), namespace)
    program = namespace["TwoStep"]()
    set_models(program, {"area": get_lm("smollm2-135m"), "intent": get_lm("gemma3-270m")})
    examples = _examples(4)
    with track_usage() as ledger:
        report = stagewise.evaluate(program, examples, metric=_intent_match, stage_metrics={"area": "area"},
                                    progress=False)
    by_stage = ledger.totals(by=["stage", "model"]).reset_index()
    assert sorted(zip(by_stage["stage"], by_stage["model"], by_stage["calls"])) == [
        ("area", "smollm2-135m", 4), ("intent", "gemma3-270m", 4)]
    rows = report.rows
    # the stage score is the area the first predictor answered (read from DSPy's trace) against the label
    assert list(rows["area.area"]) == [float(p == e.area) for p, e in zip(rows["area.area:predicted"], examples)]
    assert set(rows["area.area:predicted"]) <= {"cards", "payments"} and rows["area.area:predicted"].notna().all()
    assert report.cost_per_request == pytest.approx(ledger.total_cost / 4)


@pytest.mark.local_model
def test_one_stage_compiles_while_the_others_keep_other_models(tmp_path):
    namespace: dict = {}
    exec(compile(PROGRAM, "two_step", "exec"), namespace)
    program = namespace["TwoStep"]()
    small, gemma = get_lm("smollm2-135m"), get_lm("gemma3-270m")
    set_models(program, {"area": small, "intent": gemma})
    # DSPy's own optimizers that need the program's one LM refuse such a program (stanfordnlp/dspy#8588).
    with pytest.raises(ValueError, match="Multiple LMs are being used"):
        program.get_lm()
    train = _examples(4)
    choice = TrialChoice(models={"area": "smollm2-135m", "intent": "gemma3-270m"},
                         optimizers={"area": "none", "intent": "bootstrap_fewshot"}, demos={"intent": 2})

    def passes(example, prediction, trace=None):
        return prediction.intent in INTENTS

    with dspy.context(adapter=dspy.JSONAdapter()):
        outcome = compile_stages(program, choice, train, passes, CompileCache(tmp_path / "cache"), "fp")
    assert outcome == {"area": "none", "intent": "compiled"}
    assert program.area.lm is small and program.intent.lm is gemma  # each stage keeps its own model
    assert len(program.intent.demos) == 2 and program.area.demos == []
    assert all(d["message"] in {e.message for e in train} for d in program.intent.demos)


@pytest.mark.local_model
def test_joint_optimizer_compiles_a_plain_program_with_a_front_a_study_and_nested_mlflow_runs(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "two_step_api.py").write_text(PROGRAM)  # a module, so the chosen program can be exported
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "two_step_api", raising=False)
    namespace = vars(importlib.import_module("two_step_api"))
    examples = _examples(12)
    optimizer = stagewise.JointOptimizer(
        metric=_intent_match, stage_metrics={"area": "area"}, models={"*": ["smollm2-135m", "gemma3-270m"]},
        optimizers=["none", "labeled_fewshot"], demos=[2], trials=3, tracking="plain-api", out_dir=tmp_path / "out",
        prune_on=100, progress=False)
    best = optimizer.compile(namespace["TwoStep"](), trainset=examples[:4], valset=examples[4:8],
                             testset=examples[8:])
    assert {stage: lm.spec.name for stage, lm in ((n, s.lm) for n, s in stages_of(best).items())} == {
        stage: optimizer.result_.chosen[f"{stage}.model"] for stage in ("area", "intent")}
    front = optimizer.front
    assert {"trial", "quality", "cost_per_1k_requests", "latency_s", "area.model", "intent.model"} <= set(front)
    assert len(front) >= 1 and front["quality"].between(0, 1).all()
    assert optimizer.study.metric_names == ["quality", "cost_per_request"]  # named in optuna-dashboard
    trials = optimizer.study.trials
    assert len(trials) == 3 and all(set(t.params) >= {"area.model", "intent.model"} for t in trials)
    complete = [t for t in trials if t.values is not None]
    assert all("stages" in t.user_attrs and "area.area" in t.user_attrs["stages"] for t in complete)
    runs = mlflow.search_runs(experiment_names=["plain-api"])
    parents = runs[runs["tags.stagewise_role"] == "study"]
    children = runs[runs["tags.stagewise_role"] == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert set(children["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    cheaper = optimizer.select(max_cost_per_1k=float(front["cost_per_1k_requests"].min()))
    assert isinstance(cheaper, dspy.Module) and stages_of(cheaper)["area"].lm is not None
    # the logged MLflow model's signature takes the plain program's forward parameters
    uri = optimizer.log_model(stagewise.export(best, tmp_path / "best"))
    assert mlflow.models.get_model_info(uri).signature.inputs.input_names() == ["message"]


@pytest.mark.local_model
def test_plain_program_from_a_config_optimizes_exports_and_predicts_from_another_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "two_step.py").write_text(PROGRAM)
    shutil.copy(SUBSET, project / "messages.csv")
    (project / "study.toml").write_text("""
[program]
factory = "two_step:TwoStep"

[data]
path = "messages.csv"
inputs = { message = "text" }
labels = { area = "area", intent = "intent" }
limit = 12

[split]
train = 0.34
dev = 0.33
test = 0.33
seed = 0

[metrics]
end_to_end = { output = "intent", label = "intent", metric = "label_accuracy" }
stages = [ { stage = "area", output = "area", label = "area", metric = "label_accuracy" } ]

[search]
trials = 2

[search.stages.area]
models = ["smollm2-135m"]

[search.stages.intent]
models = ["smollm2-135m", "gemma3-270m"]
""")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    stagewise_command = str(Path(sys.executable).with_name("stagewise"))
    optimized = subprocess.run([stagewise_command, "optimize", "study.toml", "--out", "out"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=900)
    assert optimized.returncode == 0, optimized.stderr[-3000:]
    manifest = json.loads((project / "out" / "best" / "manifest.json").read_text())
    assert manifest["factory"] == "two_step:TwoStep" and manifest["code"] == "code"
    assert set(manifest["stages"]) == {"area", "intent"}
    assert not any(str(tmp_path) in json.dumps(value) for value in manifest.values())  # relative paths only

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(project / "out" / "best", elsewhere / "best")
    shutil.rmtree(project)  # nothing of the original folder is left to import from
    script = ("import dspy, stagewise\n"
              "program = stagewise.load('best', trust_code=True)\n"
              "with dspy.context(adapter=dspy.JSONAdapter()):\n"
              "    print(program(message='I still have not received my new card').intent)\n")
    predicted = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True,
                               text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert predicted.stdout.strip() in INTENTS

    few = tmp_path / "few.csv"
    few.write_text("".join(SUBSET.read_text().splitlines(keepends=True)[:7]))  # the header and 6 messages
    evaluated = CliRunner().invoke(app, ["evaluate", str(elsewhere / "best"), "--data", str(few), "--json",
                                         "--trust-code"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["examples"] == 6 and set(report["stages"]) == {"area.area"}

    from fastapi.testclient import TestClient

    from stagewise.runtime.serve import create_app

    client = TestClient(create_app(elsewhere / "best", token=None, trust_code=True))
    served = client.post("/v1/run", json={"message": "What exchange rate do you use?"})
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["outputs"]["intent"] in INTENTS
    assert [s["stage"] for s in body["stages"]] == ["area", "intent"] and body["cost_usd"] > 0
    assert client.get("/healthz").json()["stages"] == ["area", "intent"]


def test_export_refuses_a_program_defined_in_a_function(tmp_path):
    class Local(dspy.Module):
        def __init__(self):
            super().__init__()
            self.area = dspy.Predict(Area)

    program = Local()
    set_models(program, {"area": get_lm("smollm2-135m")})
    with pytest.raises(stagewise.ExportError, match="defined in a function: define it in a module"):
        stagewise.export(program, tmp_path / "best")


def test_predictor_stage_reads_and_sets_the_predictors_model():
    predictor = dspy.Predict(Area)
    stage = PredictorStage("area", predictor)
    lm = get_lm("smollm2-135m")
    stage.lm = lm
    assert predictor.lm is lm and stage.lm is lm and stage.step is predictor
