"""The joint search on the replay engine: study, resume, pruning, Pareto selection, export, CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Literal

import dspy
import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from stagewise.cli import app
from stagewise.data import split
from stagewise.metrics import EndToEnd, EvaluationError, RecordedCorrectness, StageMetric
from stagewise.optimize import pareto
from stagewise.optimize.export import ExportError, export, load
from stagewise.optimize.space import SearchSpaceError, StageChoices
from stagewise.optimize.study import Study, StudySettings
from stagewise.optimize.tracking import Tracker
from stagewise.programs import Stage

from .conftest import ROOT, ROUTERBENCH_TEST

ARC_CONFIG = ROOT / "examples" / "arc_routing" / "study.toml"
MODELS = ("recorded/gpt-4-1106-preview", "recorded/mixtral-8x7b-chat", "recorded/mistral-7b-chat",
          "recorded/gpt-3.5-turbo-1106")


def build():
    return Stage("answer", "prompt -> answer")


@pytest.fixture(scope="module")
def table():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture()
def study_parts(table, tmp_path):
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:120]]
    splits = split(examples, train=0.25, dev=0.5, test=0.25, seed=0)
    end = EndToEnd("answer", metric=RecordedCorrectness(table))

    def make(trials, name="s", **settings):
        return Study(build, splits, {"answer": StageChoices(MODELS)}, end,
                     settings=StudySettings(name=name, trials=trials, **settings), out_dir=tmp_path / "out",
                     data_fingerprint=table.fingerprint, tracker=Tracker("tests", f"sqlite:///{tmp_path}/mlflow.db"),
                     lm_options={"*": {"replay_table": table}})
    return make, splits


def test_study_finds_the_front_and_resumes_with_the_same_name(study_parts, tmp_path):
    make, splits = study_parts
    with dspy.context(adapter=dspy.JSONAdapter()):
        first = make(3)
        study = first.run(progress=False)
        assert len([t for t in study.trials if t.state.is_finished()]) == 3
        resumed = make(6)  # the same study name in the same storage: it continues, it does not restart
        study = resumed.run(progress=False)
        numbers = [t.number for t in study.trials]
        assert numbers == list(range(6))
        result = resumed.results(study)
    assert set(result.trials["answer.model"]) <= set(MODELS)
    front = result.front
    assert (front["quality"].diff().dropna() > 0).all()  # cheapest first, each step buys quality
    assert (tmp_path / "out" / "pareto.csv").exists() and (tmp_path / "out" / "pareto.png").stat().st_size > 10_000
    assert pd.read_csv(tmp_path / "out" / "pareto.csv")["trial"].tolist() == front["trial"].tolist()
    # Every scored trial is an MLflow run nested under the study's run.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tests"])
    trial_runs = runs[runs["tags.stagewise_role"] == "trial"]
    assert len(runs[runs["tags.stagewise_role"] == "study"]) == 1
    assert len(trial_runs) == 6 and set(trial_runs["tags.mlflow.parentRunId"]) == \
        set(runs.loc[runs["tags.stagewise_role"] == "study", "run_id"])
    assert "params.answer.model" in trial_runs and "metrics.cost_per_request" in trial_runs
    assert not any("key" in c.lower() and "api" in c.lower() for c in runs.columns)


def test_hopeless_trials_are_pruned_on_a_dev_subset(table, tmp_path):
    """On these questions claude-v2 costs ten times Yi-34B's recorded cost and answers worse: once
    Yi-34B is scored, claude-v2 is stopped after the dev subset instead of the whole dev split."""
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:120]]
    splits = split(examples, train=0.25, dev=0.5, test=0.25, seed=0)
    space = {"answer": StageChoices(("recorded/yi-34b-chat", "recorded/claude-v2"))}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    seeded = optuna.create_study(study_name="pruning", storage=storage, directions=["maximize", "minimize"])
    for model in space["answer"].models:  # fix the order: the strong, cheaper model first
        seeded.enqueue_trial({"answer.model": model, "answer.optimizer": "none"})
    study = Study(build, splits, space, EndToEnd("answer", metric=RecordedCorrectness(table)),
                  settings=StudySettings(name="pruning", trials=2, storage=storage, prune_on=10, prune_margin=0.15),
                  out_dir=tmp_path / "out", data_fingerprint=table.fingerprint,
                  lm_options={"*": {"replay_table": table}})
    with dspy.context(adapter=dspy.JSONAdapter()):
        trials = study.run(progress=False).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert trials[1].user_attrs["pruned_at"] == 10


def test_selection_by_constraint():
    trials = pd.DataFrame({"trial": [0, 1, 2, 3], "quality": [0.6, 0.8, 0.9, 0.85],
                           "cost_per_request": [0.001, 0.002, 0.01, 0.02]})
    front = pareto.front(trials)
    assert front["trial"].tolist() == [0, 1, 2]  # trial 3 is dominated by trial 2
    assert pareto.select(front, min_quality=0.75)["trial"] == 1
    assert pareto.select(front, max_cost_per_1k=5.0)["trial"] == 1
    assert pareto.select(front)["trial"] == 2
    saving = pareto.saving_at(front)  # 95% of 0.9 is 0.855: trial 2 itself; at 85%, trial 1 saves 80%
    assert saving["trial"] == 2 and saving["saving"] == 0
    assert pareto.saving_at(front, 0.85)["trial"] == 1 and pareto.saving_at(front, 0.85)["saving"] == pytest.approx(0.8)
    with pytest.raises(pareto.SelectionError, match="no configuration reaches quality >= 0.95"):
        pareto.select(front, min_quality=0.95)
    with pytest.raises(pareto.SelectionError, match=r"costs <= \$0.5 per 1,000"):
        pareto.select(front, max_cost_per_1k=0.5)


def test_bad_inputs_are_refused_before_any_model_is_called(table, tmp_path):
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:40]]
    splits = split(examples, train=0.25, dev=0.5, test=0.25, seed=0)
    end = EndToEnd("answer", metric=RecordedCorrectness(table))
    settings = StudySettings(name="bad")
    with pytest.raises(SearchSpaceError, match=r"stage 'answer', candidate unknown model 'recorded/gpt-5-turbo'"):
        Study(build, splits, {"answer": StageChoices(("recorded/gpt-5-turbo",))}, end, settings=settings,
              out_dir=tmp_path, data_fingerprint="x")
    with pytest.raises(EvaluationError, match="stage 'answer' has no output field 'label'"):
        Study(build, splits, {"answer": StageChoices(MODELS)}, end, settings=settings, out_dir=tmp_path,
              data_fingerprint="x", stage_metrics=[StageMetric("answer", "label", "prompt")])
    empty = split(examples[:4], train=0.0, dev=0.5, test=0.5, seed=0)
    with pytest.raises(EvaluationError, match="the train split is empty"):
        Study(build, empty, {"answer": StageChoices(MODELS)}, end, settings=settings, out_dir=tmp_path,
              data_fingerprint="x")


def test_exported_program_loads_in_a_fresh_process_with_the_same_predictions(table, tmp_path):
    from stagewise.models.lm import get_lm

    program = build()
    program.set_models({"answer": get_lm("recorded/mixtral-8x7b-chat", replay_table=table)})
    program.stages()["answer"].step.demos = [dspy.Example(prompt="2+2?", answer="4")]
    directory = export(program, tmp_path / "best", factory="tests.test_optimize:build", metrics={"dev": 0.8},
                       data_fingerprint=table.fingerprint)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["stages"]["answer"]["model"] == "recorded/mixtral-8x7b-chat"
    assert manifest["stages"]["answer"]["replay_table_fingerprint"] == table.fingerprint
    assert "lm" not in json.loads((directory / "program.json").read_text())["step"] or \
        json.loads((directory / "program.json").read_text())["step"]["lm"] is None
    prompts = table.prompts[200:205]
    with dspy.context(adapter=dspy.JSONAdapter()):
        here = [program(prompt=p).answer for p in prompts]
    script = ("import json, sys, dspy, stagewise\n"
              "from stagewise.optimize.export import load\n"
              f"program = load({str(directory)!r}, trust_code=True)\n"
              "with dspy.context(adapter=dspy.JSONAdapter()):\n"
              f"    print(json.dumps([program(prompt=p).answer for p in {prompts!r}]))\n")
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == here
    loaded = load(directory, factory=build)
    assert loaded.stages()["answer"].step.demos[0]["answer"] == "4"
    with pytest.raises(ExportError, match="manifest.json' does not exist"):
        load(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ExportError, match="field 'format'"):
        load(tmp_path / "broken")


def test_optimize_command_on_the_replay_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the MLflow database goes in the working directory
    result = CliRunner().invoke(app, ["optimize", str(ARC_CONFIG), "--trials", "5", "--out", str(tmp_path / "run"),
                                      "--study", "cli-test"])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "chosen: trial" in result.output
    assert "cheapest at >= 95% of the best quality" in result.output
    # The chosen program is an MLflow model logged from code (no pickle) that serves predictions.
    import mlflow

    uri = re.search(r"MLflow model: (models:/\S+)", result.output).group(1)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(uri)
    # its requirements are stagewise's own pinned ones (given, not inferred by importing the model again)
    from importlib.metadata import version

    with open(mlflow.pyfunc.get_model_dependencies(uri)) as requirements:
        needs = requirements.read().split()
    assert f"dspy=={version('dspy')}" in needs and f"mlflow=={version('mlflow')}" in needs
    assert not [n for n in needs if n.startswith(("pytest", "ruff", "torch"))]  # no dev or optional extras
    from stagewise.data import OutcomeTable
    from stagewise.models.catalog import default_catalog

    arc = OutcomeTable.load(ROUTERBENCH_TEST)
    chosen = json.loads((tmp_path / "run" / "best" / "manifest.json").read_text())["stages"]["answer"]["model"]
    prompts = arc.prompts[:3]
    predicted = served.predict(pd.DataFrame({"prompt": prompts}))["answer"]
    # its signature takes the program's input field, so MLflow refuses a request without it
    assert served.metadata.get_input_schema().input_names() == ["prompt"]
    with pytest.raises(mlflow.exceptions.MlflowException, match="prompt"):
        served.predict(pd.DataFrame({"question": prompts}))
    # The served model answers as the chosen program does: the chosen model's recorded responses.
    assert list(predicted) == [arc.outcome(p, default_catalog()[chosen].model).response for p in prompts]
    for name in ("pareto.csv", "pareto.png", "best/program.json", "best/manifest.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "mlflow.db").exists()

    evaluated = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "best"), "--data", str(ARC_CONFIG),
                                         "--json", "--trust-code"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    manifest = json.loads((tmp_path / "run" / "best" / "manifest.json").read_text())
    assert report["end_to_end"] == pytest.approx(manifest["metrics"]["test"]["end_to_end"])
    assert report["cost_per_request_usd"] > 0

    compared = CliRunner().invoke(app, ["compare", "--experiment", "arc-routing", "--plot", str(tmp_path / "cmp.png")])
    assert compared.exit_code == 0, compared.output
    assert "5 trials from arc-routing" in compared.output and (tmp_path / "cmp.png").exists()
    unknown = CliRunner().invoke(app, ["compare", "--experiment", "nope"])
    assert unknown.exit_code == 2 and "no experiment named 'nope'" in unknown.output
    from stagewise.optimize import trial_runs  # what compare shows, from Python

    runs = trial_runs(["arc-routing"])
    assert list(runs.columns) == ["experiment", "trial", "state", "quality", "cost_per_1k_requests", "answer.model"]
    assert len(runs) == 5 and set(runs["experiment"]) == {"arc-routing"}
    assert list(runs["quality"]) == sorted(runs["quality"], reverse=True)
    for row in runs.to_dict("records"):
        assert f"{row['quality']:.3f}" in compared.output and row["answer.model"] in compared.output


BASELINE_CONFIG = """
[program]
factory = "tests.test_optimize:build"

[data]
outcomes = "{outcomes}"

[split]
train = 0.2
dev = 0.4
test = 0.4
seed = 0

[metrics]
end_to_end = {{ output = "answer", metric = "recorded_correctness" }}

[search]
study = "baseline-comparison"
trials = 3

[search.stages.answer]
models = ["recorded/gpt-4-1106-preview", "recorded/claude-instant-v1"]

[baseline]
answer = "recorded/mistral-7b-chat"

[tracking]
experiment = "baseline-comparison"
"""


def test_optimize_compares_the_chosen_program_with_the_unoptimized_baseline(table, tmp_path, monkeypatch):
    """What `make demo` ends with, on a small replay config: the baseline and the chosen program on the
    held-out test split, each figure recomputed here from the recorded outcomes."""
    from stagewise.models.catalog import default_catalog

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "study.toml"
    config.write_text(BASELINE_CONFIG.format(outcomes=ROUTERBENCH_TEST.as_posix()))
    result = CliRunner().invoke(app, ["optimize", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "held-out test split: chosen program versus the unoptimized baseline" in result.output
    rows = {label: (float(quality), float(cost)) for label, quality, cost in
            re.findall(r"│\s*(baseline|optimized)\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│", result.output)}
    assert set(rows) == {"baseline", "optimized"}, result.output

    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts]
    test = split(examples, train=0.2, dev=0.4, test=0.4, seed=0).test

    def on_test(model):  # mean recorded correctness and cost per 1,000 requests; an empty cell scores 0, costs 0
        column = default_catalog()[model].model
        outcomes = [None if pd.isna(table.scores.at[table.find(e.prompt), column]) else table.outcome(e.prompt, column)
                    for e in test]
        quality = sum(o.correct for o in outcomes if o) / len(test)
        return quality, 1000 * sum(o.cost_usd for o in outcomes if o) / len(test)

    manifest = json.loads((tmp_path / "run" / "best" / "manifest.json").read_text())
    baseline, optimized = on_test("recorded/mistral-7b-chat"), on_test(manifest["stages"]["answer"]["model"])
    assert rows["baseline"] == (pytest.approx(baseline[0], abs=5e-4), pytest.approx(baseline[1], abs=5e-5))
    assert rows["optimized"] == (pytest.approx(optimized[0], abs=5e-4), pytest.approx(optimized[1], abs=5e-5))
    assert manifest["metrics"]["baseline_test"]["end_to_end"] == pytest.approx(baseline[0])
    assert manifest["metrics"]["test"]["end_to_end"] == pytest.approx(optimized[0])
    assert optimized[0] > baseline[0]  # either candidate answers ARC better than the Mistral 7B baseline


def test_interrupted_study_resumes_from_its_storage(tmp_path):
    """A real process kill in the middle of a study, then a rerun with the same name finishes it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "stagewise.cli", "optimize", str(ARC_CONFIG), "--trials", "400",
               "--out", str(tmp_path / "run"), "--study", "killed"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{(tmp_path / 'run' / 'optuna.db').resolve()}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            done = [t for t in optuna.load_study(study_name="killed", storage=storage).trials if t.state.is_finished()]
        except Exception:  # the database or the study does not exist yet
            continue
        if len(done) >= 3:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = optuna.load_study(study_name="killed", storage=storage).trials
    finished_before = [t for t in before
                       if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished_before) >= 3
    target = len(finished_before) + 2
    rerun = CliRunner().invoke(app, ["optimize", str(ARC_CONFIG), "--trials", str(target),
                                     "--out", str(tmp_path / "run"), "--study", "killed"])
    assert rerun.exit_code == 0, rerun.output
    after = optuna.load_study(study_name="killed", storage=storage).trials
    finished_after = [t for t in after if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished_after) == target
    assert [t.params for t in finished_after[: len(finished_before)]] == [t.params for t in finished_before]


@pytest.mark.local_model
def test_banking_study_on_the_local_model_compiles_once_and_exports(tmp_path):
    """The flagship pipeline on SmolLM2, small: labeled demos compiled once, reused, exported, reloaded."""
    sys.path.insert(0, str(ROOT / "examples" / "banking"))
    from banking_pipeline import build as build_banking

    from stagewise.data import FieldMap, load_dataset_file

    loaded = load_dataset_file(ROOT / "examples" / "banking" / "banking77_subset.csv",
                               FieldMap(inputs={"message": "text"}, labels={"area": "area", "intent": "intent"}))
    splits = split(loaded.examples[:24], train=0.34, dev=0.33, test=0.33, seed=0)
    space = {"route": StageChoices(("smollm2-135m",), ("labeled_fewshot",), (2,)),
             "cards": StageChoices(("smollm2-135m",)), "payments": StageChoices(("smollm2-135m",))}

    def make(name):
        return Study(build_banking, splits, space, EndToEnd("intent", "intent", "label_accuracy"),
                     stage_metrics=[StageMetric("route", "area", "area", "label_accuracy")],
                     settings=StudySettings(name=name, trials=1), out_dir=tmp_path / "out",
                     data_fingerprint=loaded.fingerprint, lm_options={"*": {"max_tokens": 64}})

    with dspy.context(adapter=dspy.JSONAdapter()):
        first = make("first")
        result = first.results(first.run(progress=False))
        assert first.cache.misses >= 1  # the route stage was compiled
        demos = result.program.stages()["route"].step.demos
        assert len(demos) == 2 and all("message" in d and "area" in d for d in demos)
        assert result.program.stages()["route"].lm.model == "local/smollm2-135m"  # the model survived compiling
        again = make("second")
        again.results(again.run(progress=False))
        assert again.cache.hits >= 1 and again.cache.misses == 0  # reused, not recompiled
        directory = export(result.program, tmp_path / "best", factory="banking_pipeline:build",
                           factory_path=str(ROOT / "examples" / "banking"))
        reloaded = load(directory, trust_code=True)
        assert reloaded.stages()["route"].step.demos == demos
        for example in splits.test[:3]:
            assert reloaded(message=example.message).intent == result.program(message=example.message).intent


def test_bootstrap_demos_come_from_traces_that_pass_the_metric(table, tmp_path):
    from stagewise.models.lm import get_lm
    from stagewise.optimize.compile import CompileCache, compile_stages
    from stagewise.optimize.space import TrialChoice

    metric = RecordedCorrectness(table)
    program = build()
    program.set_models({"answer": get_lm("recorded/mistral-7b-chat", replay_table=table)})
    trainset = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:30]]
    choice = TrialChoice({"answer": "recorded/mistral-7b-chat"}, {"answer": "bootstrap_fewshot"}, {"answer": 3})
    cache = CompileCache(tmp_path / "compiled")
    with dspy.context(adapter=dspy.JSONAdapter()):
        outcome = compile_stages(program, choice, trainset,
                                 lambda ex, pred, trace=None: metric.score_example(ex, pred) >= 0.5,
                                 cache, table.fingerprint)
    assert outcome == {"answer": "compiled"}
    demos = program.stages()["answer"].step.demos
    assert 1 <= len(demos) <= 3
    for demo in demos:  # a bootstrapped demo is a trace the recorded model got right
        assert table.outcome(demo["prompt"], "mistralai/mistral-7b-chat").correct == 1.0
    assert program.stages()["answer"].lm.model.startswith("replay/recorded/mistral-7b-chat")


def _recorded_quality(table, examples, model):
    """Mean recorded correctness of a replayed model on examples (an empty cell is an error: 0)."""
    from stagewise.models.catalog import default_catalog

    column = default_catalog()[model].model
    scores = [table.scores.at[table.find(e.prompt), column] for e in examples]
    return sum(0.0 if pd.isna(score) else float(score) for score in scores) / len(examples)


def test_bootstrap_random_search_runs_in_a_study(table, tmp_path):
    """It scores candidate programs itself: with each stage's model on its predictors, a reset candidate used
    to have none ("No LM is loaded"), and the candidates it keeps on the result repeated the stage's name."""
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:60]]
    splits = split(examples, train=0.25, dev=0.5, test=0.25, seed=0)
    model = "recorded/mistral-7b-chat"
    study = Study(build, splits, {"answer": StageChoices((model,), ("bootstrap_random_search",), (2,))},
                  EndToEnd("answer", metric=RecordedCorrectness(table)), settings=StudySettings(name="brs", trials=1),
                  out_dir=tmp_path / "out", data_fingerprint=table.fingerprint,
                  lm_options={"*": {"replay_table": table}})
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    [trial] = result.trials.to_dict("records")
    assert trial["answer.optimizer"] == "bootstrap_random_search" and trial["answer.demos"] == 2
    # Demos do not change a recorded answer: the trial scores what the model recorded on the dev split.
    assert trial["quality"] == pytest.approx(_recorded_quality(table, splits.dev, model))
    assert study.cache.misses == 1 and len(list((tmp_path / "out" / "compiled").glob("*.json"))) == 1
    answer = result.program.stages()["answer"]
    assert answer.lm.model.startswith("replay/recorded/mistral-7b-chat")  # the stage kept its own model
    train_prompts = {e.prompt for e in splits.train}
    assert len(answer.step.demos) <= 2 and all(d["prompt"] in train_prompts for d in answer.step.demos)


PROPOSAL = "Answer with the single letter of the correct choice."


def test_mipro_runs_in_a_study_with_its_prompt_model_on_loopback(table, tmp_path):
    """MIPRO writes instructions with the study's reflection model (here an OpenAI-compatible server on
    loopback that proposes one fixed instruction) and scores them on the stage's own model (recorded)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stagewise.models.catalog import ModelCatalog

    requests = []

    class Proposer(BaseHTTPRequestHandler):
        def do_POST(self):  # answers every output field the request asks for with PROPOSAL
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            system = next(m["content"] for m in body["messages"] if m["role"] == "system")
            fields = re.findall(r"`(\w+)`", system.split("Your output fields are:", 1)[1].split("All interactions")[0])
            requests.append(fields)
            content = json.dumps({field: PROPOSAL for field in fields})
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "proposer",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": content}}],
                                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proposer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "models.toml").write_text(f"""
[models.proposer]
provider = "loopback"
engine = "litellm"
model = "openai/proposer"
api_base = "http://127.0.0.1:{server.server_address[1]}/v1"
input_price = 0.0
output_price = 0.0
context_window = 100000
max_output = 512
tokenizer = "cl100k_base"
""")
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:60]]
    splits = split(examples, train=0.25, dev=0.5, test=0.25, seed=0)
    model = "recorded/mistral-7b-chat"
    study = Study(build, splits, {"answer": StageChoices((model,), ("mipro",), (2,))},
                  EndToEnd("answer", metric=RecordedCorrectness(table)),
                  settings=StudySettings(name="mipro", trials=1, reflection_model="proposer"),
                  out_dir=tmp_path / "out", data_fingerprint=table.fingerprint,
                  lm_options={"*": {"replay_table": table}}, catalog=ModelCatalog.load(tmp_path / "models.toml"))
    try:
        with dspy.context(adapter=dspy.JSONAdapter()):
            result = study.results(study.run(progress=False))
    finally:
        server.shutdown()
    [trial] = result.trials.to_dict("records")
    assert trial["answer.optimizer"] == "mipro"
    assert trial["quality"] == pytest.approx(_recorded_quality(table, splits.dev, model))
    assert ["proposed_instruction"] in requests  # the prompt model wrote the candidate instructions
    answer = result.program.stages()["answer"]
    assert answer.lm.model.startswith("replay/recorded/mistral-7b-chat")
    # Every candidate scores the same on recorded answers: MIPRO keeps the original or takes the proposal.
    assert answer.signature.instructions in (build().signature.instructions, PROPOSAL)


class Area(dspy.Signature):
    """Which team handles this message?"""

    message: str = dspy.InputField()
    area: Literal["cards", "payments"] = dspy.OutputField()


KEYWORD_INSTRUCTION = "Route by keyword: a message that mentions a card goes to cards, any other to payments."


class Obedient(dspy.utils.DummyLM):
    """A scripted task model that routes well only when its instruction tells it how (says "by keyword")."""

    def __init__(self):
        super().__init__([{"area": "payments"}], adapter=dspy.JSONAdapter())

    def forward(self, prompt=None, messages=None, **kwargs):
        told = "by keyword" in messages[0]["content"]
        message = messages[-1]["content"].split("[[ ## message ## ]]")[-1].split("\n\n")[0]
        area = "cards" if told and "card" in message else "payments"
        self.answers = iter([{"area": area}])
        return super().forward(prompt=prompt, messages=messages, **kwargs)


def test_gepa_puts_the_reflection_models_instruction_on_the_stage(tmp_path):
    """Orchestration, with scripted models: GEPA reads stagewise's feedback, takes the instruction the
    reflection model proposes because it scores better, and the stage keeps it (and its own model)."""
    from stagewise.optimize.compile import CompileCache, Reflection, compile_stages
    from stagewise.optimize.space import TrialChoice

    messages = ["My card has not arrived", "I lost my card", "Where is my new card?",
                "The exchange rate was wrong", "My top-up failed", "Why was I charged a fee for a transfer?"]
    trainset = [dspy.Example(message=m, area="cards" if "card" in m else "payments").with_inputs("message")
                for m in messages]
    reflector = dspy.utils.DummyLM([{"new_instruction": KEYWORD_INSTRUCTION}] * 20, adapter=dspy.JSONAdapter())

    def feedback(example, prediction):
        return float(prediction.area == example.area), f"expected {example.area!r}, answered {prediction.area!r}"

    def compiled_program():
        task = Obedient()
        program = Stage("route", Area, lm=task)
        choice = TrialChoice({"route": "scripted"}, {"route": "gepa"}, {"route": 0})
        with dspy.context(adapter=dspy.JSONAdapter()):
            outcome = compile_stages(program, choice, trainset, lambda ex, pred, trace=None: pred.area == ex.area,
                                     CompileCache(tmp_path / "compiled"), "data-v1",
                                     Reflection(reflector, "scripted-reflector", feedback, max_metric_calls=40))
        return program, task, outcome

    program, task, outcome = compiled_program()
    assert outcome == {"route": "compiled"}
    assert Area.instructions != KEYWORD_INSTRUCTION
    assert program.signature.instructions == KEYWORD_INSTRUCTION  # the instruction changed to the proposal
    assert program.lm is task  # GEPA's compile kept the stage's own model
    asked = " ".join(str(m.get("content")) for entry in reflector.history for m in entry["messages"])
    assert "expected 'cards', answered 'payments'" in asked  # the reflection model read stagewise's feedback
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert all(program(message=e.message).area == e.area for e in trainset)
    again, _, outcome = compiled_program()  # the same compile: from the cache, no reflection
    calls = len(reflector.history)
    assert outcome == {"route": "cached"} and again.signature.instructions == KEYWORD_INSTRUCTION
    assert len(reflector.history) == calls


def test_latency_can_be_a_third_objective(study_parts):
    make, _ = study_parts
    study = make(3, name="three-objectives", latency=True)
    with dspy.context(adapter=dspy.JSONAdapter()):
        ran = study.run(progress=False)
    assert len(ran.directions) == 3
    assert all(len(t.values) == 3 and t.values[2] >= 0
               for t in ran.trials if t.state == optuna.trial.TrialState.COMPLETE)
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(ran)
    assert "latency_s" in result.trials and result.trials["latency_s"].notna().all()


def test_evaluate_a_data_file_with_the_manifests_column_maps_and_metrics(table, tmp_path):
    from stagewise.models.lm import get_lm

    program = build()
    program.set_models({"answer": get_lm("recorded/gpt-4-1106-preview", replay_table=table)})
    rows = [(p, table.outcome(p, "gpt-4-1106-preview").response) for p in table.prompts[:12]
            if not pd.isna(table.scores.at[table.find(p), "gpt-4-1106-preview"])]
    pd.DataFrame(rows, columns=["question", "gold"]).to_csv(tmp_path / "data.csv", index=False)
    evaluation = {"inputs": {"prompt": "question"}, "labels": {"answer": "gold"},
                  "end_to_end": {"output": "answer", "label": "answer", "metric": "exact_match"}, "stages": []}
    directory = export(program, tmp_path / "best", factory="tests.test_optimize:build",
                       extra={"evaluation": evaluation})
    result = CliRunner().invoke(app, ["evaluate", str(directory), "--data", str(tmp_path / "data.csv"), "--json",
                                      "--trust-code"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["examples"] == len(rows) and report["end_to_end"] == 1.0  # the recorded answers, exactly
    bare = export(program, tmp_path / "bare", factory="tests.test_optimize:build")
    refused = CliRunner().invoke(app, ["evaluate", str(bare), "--data", str(tmp_path / "data.csv"), "--trust-code"])
    assert refused.exit_code == 2 and "no 'evaluation' settings" in refused.output


_SCORER = {}


def build_cascade():
    """Mixtral first, GPT-4 when a scorer trained on recorded Mixtral outcomes doubts the answer."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from stagewise.data import OutcomeTable
    from stagewise.programs import Cascade

    from .conftest import ROUTELLM

    if "scorer" not in _SCORER:
        table = OutcomeTable.load(ROUTELLM)
        weak = "mistralai/Mixtral-8x7B-Instruct-v0.1"
        texts = [f"{table.prompts[i]}\n{table.responses.at[i, weak]}" for i in range(600, 1000)]
        labels = [int(table.scores.at[i, weak]) for i in range(600, 1000)]
        _SCORER["scorer"] = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=300)).fit(texts, labels)
    return Cascade("escalate", [Stage("cheap", "prompt -> answer"), Stage("strong", "prompt -> answer")],
                   _SCORER["scorer"], query="input.prompt")


def test_cascade_thresholds_are_searched(tmp_path):
    from stagewise.data import OutcomeTable

    from .conftest import ROUTELLM

    table = OutcomeTable.load(ROUTELLM)
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:60]]
    splits = split(examples, train=0.2, dev=0.5, test=0.3, seed=0)
    space = {"cheap": StageChoices(("recorded/mixtral-8x7b-instruct",)),
             "strong": StageChoices(("recorded/gpt-4-1106-preview",))}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    seeded = optuna.create_study(study_name="thresholds", storage=storage, directions=["maximize", "minimize"])
    for threshold in (0.0, 1.0):
        seeded.enqueue_trial({"escalate.threshold": threshold})
    study = Study(build_cascade, splits, space, EndToEnd("answer", metric=RecordedCorrectness(table)),
                  settings=StudySettings(name="thresholds", trials=2, storage=storage), out_dir=tmp_path / "out",
                  data_fingerprint=table.fingerprint, lm_options={"*": {"replay_table": table}},
                  thresholds={"escalate": (0.0, 1.0)})
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    by_threshold = result.trials.set_index("escalate.threshold")
    # Threshold 1.0 escalates every question to GPT-4: it costs more, and answers at least as well.
    assert by_threshold.loc[1.0, "cost_per_request"] > by_threshold.loc[0.0, "cost_per_request"]
    assert by_threshold.loc[1.0, "quality"] >= by_threshold.loc[0.0, "quality"]
    with pytest.raises(SearchSpaceError, match="no cascade 'nope'"):
        Study(build_cascade, splits, space, EndToEnd("answer", metric=RecordedCorrectness(table)),
              settings=StudySettings(name="x"), out_dir=tmp_path / "x", data_fingerprint="x",
              thresholds={"nope": (0.5,)})


# --- router choice: the LLM decision stage or a trained classifier ---------------------------

class PickTier(dspy.Signature):
    """Can a small model solve this math word problem ("weak"), or does it need a strong one ("strong")?"""

    prompt: str = dspy.InputField()
    tier: Literal["weak", "strong"] = dspy.OutputField()


def build_routed():
    from stagewise.programs import Router

    return Router("pick", Stage("route", PickTier), {
        "weak": Stage("weak", "prompt -> answer"), "strong": Stage("strong", "prompt -> answer"),
    }, query="input.prompt", field="tier")


@pytest.mark.local_model
def test_router_choice_llm_stage_or_trained_classifier_is_searched_and_exported(tmp_path):
    from stagewise.data import OutcomeTable
    from stagewise.optimize.space import RouterChoices, TrialChoice
    from stagewise.routing import LabelRouter

    from .conftest import ROUTELLM

    table = OutcomeTable.load(ROUTELLM)
    weak_col = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    examples = [dspy.Example(prompt=p, tier="weak" if table.scores.at[i, weak_col] else "strong").with_inputs("prompt")
                for i, p in enumerate(table.prompts[:60])]
    splits = split(examples, train=0.6, dev=0.2, test=0.2, seed=0)
    space = {"route": StageChoices(("smollm2-135m",)), "weak": StageChoices(("recorded/mixtral-8x7b-instruct",)),
             "strong": StageChoices(("recorded/gpt-4-1106-preview",))}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    seeded = optuna.create_study(study_name="routers", storage=storage, directions=["maximize", "minimize"])
    seeded.enqueue_trial({"pick.decision": "llm"})
    seeded.enqueue_trial({"pick.decision": "trained", "pick.features": "word", "pick.C": 1.0})
    study = Study(build_routed, splits, space, EndToEnd("answer", metric=RecordedCorrectness(table)),
                  stage_metrics=[StageMetric("route", "tier", "tier", "label_accuracy")],
                  settings=StudySettings(name="routers", trials=2, storage=storage, prune_on=100),
                  out_dir=tmp_path / "out", data_fingerprint=table.fingerprint,
                  lm_options={"*": {"replay_table": table, "max_tokens": 32}},
                  routers={"pick": RouterChoices(label="tier", features=("word",), C=(1.0,))})
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    trials = result.trials.set_index("pick.decision")
    assert set(trials.index) == {"llm", "trained"}
    assert trials.loc["llm", "route.model"] == "smollm2-135m" and pd.isna(trials.loc["trained", "route.model"])
    assert trials.loc["trained", "pick.features"] == "word"
    assert 0.0 <= trials.loc["trained", "stage:route.tier"] <= 1.0  # the classifier is scored as the stage

    trained = study.program_for(TrialChoice(
        models={"weak": "recorded/mixtral-8x7b-instruct", "strong": "recorded/gpt-4-1106-preview"},
        routers={"pick": {"decision": "trained", "features": "word", "C": 1.0}}))
    router = trained.named_sub_modules().__next__()[1]
    assert isinstance(router.classifier, LabelRouter) and router.stand_in == "route"
    prompt = splits.test[0].prompt
    prediction = trained(prompt=prompt)
    route_run = prediction.trace["route"]
    assert route_run.model is None and route_run.cost_usd == 0  # no LLM call for the decision
    assert prediction.context.sections["route.tier"].content == prediction.route

    directory = export(trained, tmp_path / "best", factory="tests.test_optimize:build_routed")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["routers"]["pick"]["kind"] == "LabelRouter" and (directory / "routers" / "pick.skops").is_file()
    assert "decided_by" in manifest["stages"]["route"]
    reloaded = load(directory, factory=build_routed)
    for example in splits.test[:6]:
        assert reloaded(prompt=example.prompt).answer == trained(prompt=example.prompt).answer


def test_router_choice_bad_inputs(tmp_path):
    from stagewise.optimize.config import ConfigError, load_config
    from stagewise.optimize.space import RouterChoices

    examples = [dspy.Example(prompt=f"q{i}", tier="weak").with_inputs("prompt") for i in range(8)]
    splits = split(examples, train=0.5, dev=0.25, test=0.25, seed=0)
    space = {"route": StageChoices(("smollm2-135m",))}

    def make(routers):
        return Study(build_routed, splits, space, EndToEnd("answer", "tier"), settings=StudySettings(name="x"),
                     out_dir=tmp_path / "x", data_fingerprint="x", routers=routers)

    with pytest.raises(SearchSpaceError, match="no router 'nope'"):
        make({"nope": RouterChoices(label="tier")})
    with pytest.raises(SearchSpaceError, match="no label field 'area'"):
        make({"pick": RouterChoices(label="area")})
    with pytest.raises(SearchSpaceError, match="decisions must be among"):
        make({"pick": RouterChoices(label="tier", decisions=("llm", "oracle"))})
    with pytest.raises(SearchSpaceError, match="unknown kind"):
        make({"pick": RouterChoices(label="tier", features=("pixels",))})
    config = (ROOT / "examples" / "banking" / "study.toml").read_text()
    bad = tmp_path / "study.toml"
    bad.write_text(config.replace("[search.routers.support]", "[search.routers.support]\ndepth = 3"))
    (tmp_path / "banking77_subset.csv").write_bytes(
        (ROOT / "examples" / "banking" / "banking77_subset.csv").read_bytes())
    with pytest.raises(ConfigError, match=r"\[search.routers.support\] has unknown key\(s\) \['depth'\]"):
        load_config(bad)


@pytest.mark.local_model
def test_gepa_evolves_a_stage_instruction_with_a_reflection_model(tmp_path):
    """GEPA on the banking router stage: SmolLM2 answers, Gemma 3 reflects on the feedback."""
    sys.path.insert(0, str(ROOT / "examples" / "banking"))
    from banking_pipeline import build as build_banking

    from stagewise.data import FieldMap, load_dataset_file

    loaded = load_dataset_file(ROOT / "examples" / "banking" / "banking77_subset.csv",
                               FieldMap(inputs={"message": "text"}, labels={"area": "area", "intent": "intent"}))
    splits = split(loaded.examples[:16], train=0.5, dev=0.25, test=0.25, seed=0, stratify_by="area")
    space = {"route": StageChoices(("smollm2-135m",), ("gepa",)), "cards": StageChoices(("smollm2-135m",)),
             "payments": StageChoices(("smollm2-135m",))}
    settings = StudySettings(name="gepa", trials=1, reflection_model="gemma3-270m", gepa_metric_calls=16)
    study = Study(build_banking, splits, space, EndToEnd("intent", "intent", "label_accuracy"),
                  settings=settings, out_dir=tmp_path / "out", data_fingerprint=loaded.fingerprint,
                  lm_options={"*": {"max_tokens": 64}, "gemma3-270m": {"max_tokens": 300}})
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    reflection = study.lm("gemma3-270m")
    asked = [" ".join(str(m.get("content")) for m in entry["messages"]) for entry in reflection.history]
    # Gemma read the program's answers with stagewise's feedback: the expected intent, in words.
    assert asked and all("the expected 'intent' is" in prompt for prompt in asked)
    assert study.cache.misses >= 1 and len(list((tmp_path / "out" / "compiled").glob("*.json"))) >= 1
    route = result.program.stages()["route"]
    assert route.lm.model == "local/smollm2-135m"  # GEPA's compile kept the stage's own model
    # GEPA keeps a proposal only if it scores better; Gemma 3 270M's proposals rarely do (that the
    # instruction is replaced is checked with scripted models above): the stage ends with one of them.
    proposed = {json.loads(entry["outputs"][0])["new_instruction"] for entry in reflection.history}
    assert route.signature.instructions in proposed | {build_banking().stages()["route"].signature.instructions}
    assert result.trials.loc[0, "route.optimizer"] == "gepa"
    with pytest.raises(SearchSpaceError, match="needs a reflection model"):
        Study(build_banking, splits, space, EndToEnd("intent", "intent", "label_accuracy"),
              settings=StudySettings(name="x"), out_dir=tmp_path / "x", data_fingerprint="x")
