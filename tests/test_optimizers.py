"""The optimizer extension point, samplers and pruners as objects, and study callbacks.

Studies here run on recorded models (RouterBench outcomes replayed): real answers and costs,
no model to load. SIMBA runs on a program whose two predictors use different models, the case
where DSPy's single-LM optimizers refuse ("Multiple LMs are being used in the module").
"""

import dspy
import optuna
import pytest

from stagewise.data import split
from stagewise.errors import ConfigError, SearchSpaceError
from stagewise.metrics import RecordedCorrectness
from stagewise.metrics.report import as_end_to_end
from stagewise.optimize import (
    SAMPLERS,
    JointOptimizer,
    LabeledFewShot,
    MarginPruner,
    StageChoices,
    StageOptimizer,
    Study,
    StudyCallback,
    StudySettings,
    get_optimizer,
    optimizer_names,
    register_optimizer,
)

from .conftest import ROUTERBENCH_TEST

CHEAP, STRONG = "recorded/mistral-7b-chat", "recorded/gpt-4-1106-preview"


@pytest.fixture(scope="module")
def table():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


@pytest.fixture()
def splits(table):
    examples = [dspy.Example(prompt=p).with_inputs("prompt") for p in table.prompts[:40]]
    return split(examples, train=0.4, dev=0.4, test=0.2, seed=0)


class Drafted(dspy.Module):
    """A plain DSPy program: a draft and a final answer, each its own predictor (so its own stage)."""

    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("prompt -> answer")
        self.final = dspy.Predict("prompt -> answer")

    def forward(self, prompt):
        self.draft(prompt=prompt)
        return self.final(prompt=prompt)


def _study(table, splits, tmp_path, space, name, **settings):
    correct = RecordedCorrectness(table)

    def recorded(example, prediction, trace=None) -> float:
        """What the cheap model recorded for the prompt (the final stage replays it): right on some, wrong on others."""
        return correct(example.prompt, CHEAP)

    return Study(Drafted, splits, space, as_end_to_end(recorded),
                 settings=StudySettings(name=name, trials=1, **settings), out_dir=tmp_path / "out",
                 data_fingerprint=table.fingerprint, lm_options={"*": {"replay_table": table}})


# --- the registry -------------------------------------------------------------------------------

def test_the_built_in_optimizers_are_registered_with_what_they_need():
    assert optimizer_names()[:7] == ("none", "labeled_fewshot", "bootstrap_fewshot", "bootstrap_random_search",
                                     "mipro", "gepa", "simba")
    assert not get_optimizer("none").compiles and get_optimizer("none").model_free
    assert get_optimizer("labeled_fewshot").model_free and get_optimizer("labeled_fewshot").uses_demos
    assert get_optimizer("bootstrap_fewshot").needs_teacher and not get_optimizer("gepa").uses_demos
    assert get_optimizer("gepa").reflection == "required" and get_optimizer("mipro").reflection == "optional"
    assert get_optimizer("simba").single_model


def test_registering_is_checked_and_unknown_names_list_the_registered_ones():
    with pytest.raises(ConfigError, match="already registered"):
        register_optimizer("labeled_fewshot", LabeledFewShot)
    with pytest.raises(ConfigError, match="lower-case"):
        register_optimizer("My Optimizer", LabeledFewShot)
    with pytest.raises(ConfigError, match="expected a StageOptimizer subclass or instance, got function"):
        register_optimizer("not_one", lambda setup: None)
    with pytest.raises(SearchSpaceError, match=r"unknown optimizer 'simba2' \(optimizers: none, labeled_fewshot"):
        get_optimizer("simba2")


class FirstExamples(StageOptimizer):
    """A user's optimizer: the first ``demos`` training examples as demos, through DSPy's LabeledFewShot
    (sample=False), so the test knows which demos to expect."""

    uses_demos = True
    model_free = True

    def build(self, setup):
        return dspy.LabeledFewShot(k=setup.demos)

    def compile(self, student, *, setup, teacher=None):
        return self.build(setup).compile(student, trainset=list(setup.trainset), sample=False)


def test_a_registered_optimizer_is_searched_like_a_built_in_one(table, splits, tmp_path):
    register_optimizer("first_examples", FirstExamples, replace=True)
    study = _study(table, splits, tmp_path, {"draft": StageChoices((STRONG,)),
                                             "final": StageChoices((CHEAP,), ("first_examples",), (3,))}, "custom")
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    [trial] = result.trials.to_dict("records")
    assert trial["final.optimizer"] == "first_examples" and trial["final.demos"] == 3
    assert [d["prompt"] for d in result.program.final.demos] == [e.prompt for e in splits.train[:3]]
    assert result.program.draft.demos == []  # only the stage that names it is compiled
    with pytest.raises(SearchSpaceError, match="unknown optimizer 'first_exampels'"):
        _study(table, splits, tmp_path, {"draft": StageChoices((STRONG,)),
                                         "final": StageChoices((CHEAP,), ("first_exampels",), (3,))}, "typo")


def test_simba_compiles_one_stage_of_a_program_whose_stages_use_different_models(table, splits, tmp_path):
    """SIMBA samples the whole program on one model (dspy.Module.get_lm); stagewise runs it with the
    stage's model on every predictor and keeps that stage's learned state, each stage its own model."""
    from stagewise.models.lm import get_lm
    from stagewise.optimize import CompileCache, TrialChoice
    from stagewise.optimize.compile import compile_stages

    strong, cheap = (get_lm(model, replay_table=table) for model in (STRONG, CHEAP))
    program = Drafted()
    program.draft.lm, program.final.lm = strong, cheap
    with pytest.raises(ValueError, match="Multiple LMs"):  # what DSPy alone does with this program
        dspy.SIMBA(metric=lambda e, p: 1.0, bsize=2, max_steps=1).compile(program.deepcopy(), trainset=splits.train)
    choice = TrialChoice(models={"draft": STRONG, "final": CHEAP}, optimizers={"final": "simba"}, demos={"final": 2})
    correct = RecordedCorrectness(table)
    with dspy.context(adapter=dspy.JSONAdapter()):
        outcome = compile_stages(program, choice, splits.train, lambda e, p, trace=None: correct(e.prompt, CHEAP),
                                 CompileCache(tmp_path / "cache"), "fp")
    assert outcome == {"final": "compiled"}
    simba = get_optimizer("simba")
    assert len(cheap.usage) >= simba.steps * simba.candidates * min(simba.bsize, len(splits.train))  # it sampled
    assert len(strong.usage) == 0  # ... on the final stage's model only
    assert program.draft.lm is strong and program.final.lm is cheap  # each stage kept its model
    train = {e.prompt for e in splits.train}
    assert len(program.final.demos) <= 2 and all(d["prompt"] in train for d in program.final.demos)
    # In a study: the trial completes with SIMBA on one stage and another model on the other.
    study = _study(table, splits, tmp_path, {"draft": StageChoices((STRONG,)),
                                             "final": StageChoices((CHEAP,), ("simba",), (2,))}, "simba")
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = study.results(study.run(progress=False))
    [trial] = result.trials.to_dict("records")
    assert trial["final.optimizer"] == "simba" and trial["draft.model"] == STRONG
    assert result.program.final.lm.model.startswith(f"replay/{CHEAP}")
    assert study.cache.misses == 1


# --- samplers, pruners, callbacks ---------------------------------------------------------------

def test_samplers_by_name_or_as_objects_and_a_bad_one_is_a_clear_error(table, splits, tmp_path):
    assert set(SAMPLERS) == {"tpe", "grid", "random", "nsga2"}
    space = {"draft": StageChoices((CHEAP,)), "final": StageChoices((CHEAP, STRONG))}
    study = _study(table, splits, tmp_path, space, "nsga2", sampler="nsga2")
    assert isinstance(study.open().sampler, optuna.samplers.NSGAIISampler)
    mine = optuna.samplers.RandomSampler(seed=3)
    study = _study(table, splits, tmp_path, space, "mine", sampler=mine)
    assert study.open().sampler is mine
    assert study.signature()["search.sampler"] == '"optuna.samplers._random.RandomSampler"'
    with pytest.raises(ConfigError, match="sampler: .*use one of tpe, grid, random, nsga2"):
        JointOptimizer(metric=lambda e, p, t=None: 1.0, models={"*": [CHEAP]}, sampler="anneal").study_for(
            Drafted(), trainset=splits.train, valset=splits.dev)


class Recorder(StudyCallback):
    def __init__(self):
        self.events = []

    def study_started(self, name, params, *, done, total):
        self.events.append(("started", name, done, total))

    def trial_finished(self, record):
        self.events.append(("trial", record.number, record.state, round(record.metrics["cost_per_request"], 9)))

    def trials_counted(self, done, total):
        self.events.append(("counted", done, total))

    def study_finished(self):
        self.events.append(("finished",))


class Everything(optuna.pruners.BasePruner):
    """Prunes every trial it is asked about, and remembers what it saw."""

    def __init__(self):
        self.seen = []

    def prune(self, study, trial):
        self.seen.append(trial.user_attrs["early"])
        return True


def test_any_pruner_is_asked_after_the_dev_subset_and_callbacks_hear_every_trial(table, splits, tmp_path):
    pruner, recorder = Everything(), Recorder()
    space = {"draft": StageChoices((CHEAP,)), "final": StageChoices((CHEAP, STRONG))}
    study = _study(table, splits, tmp_path, space, "pruned", pruner=pruner, prune_on=4)
    study.settings.trials = 2
    with dspy.context(adapter=dspy.JSONAdapter()):
        ran = study.run(progress=False, callbacks=[recorder])
    assert [t.state for t in ran.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert len(pruner.seen) == 2 and all(set(seen) == {"quality", "cost_per_request"} for seen in pruner.seen)
    assert recorder.events[0] == ("started", "pruned", 0, 2) and recorder.events[-1] == ("finished",)
    trials = [e for e in recorder.events if e[0] == "trial"]
    assert [(e[1], e[2]) for e in trials] == [(0, "pruned"), (1, "pruned")]
    assert all(cost > 0 for *_, cost in trials)
    assert [e for e in recorder.events if e[0] == "counted"] == [("counted", 1, 2), ("counted", 2, 2)]
    assert study.signature()["search.pruner"] == '"tests.test_optimizers.Everything"'


def test_the_margin_pruner_prunes_only_what_a_cheaper_trial_beats_by_the_margin():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.8, 0.01], params={}, distributions={}))
    pruner = MarginPruner(0.15)

    def asked(quality, cost):
        trial = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                          user_attrs={"early": {"quality": quality, "cost_per_request": cost}})
        return pruner.prune(study, trial)

    assert asked(0.6, 0.02)  # 0.8 >= 0.6 + 0.15 at no more cost
    assert not asked(0.7, 0.02)  # within the margin
    assert not asked(0.5, 0.005)  # cheaper than every completed trial


def test_the_readmes_optimizer_is_one_class_and_one_call_and_a_study_searches_it(table, splits, tmp_path):
    from stagewise.optimize import optimizers

    from .test_readme_snippets import readme_block

    namespace: dict = {}
    try:
        exec(readme_block("class QuickSimba"), namespace)  # as printed
        assert "quick_simba" in optimizer_names()
        assert isinstance(get_optimizer("quick_simba"), namespace["QuickSimba"])
        study = _study(table, splits, tmp_path, {"draft": StageChoices((STRONG,)),
                                                 "final": StageChoices((CHEAP,), ("none", "quick_simba"), (2,))},
                       "readme", sampler="grid")
        study.settings.trials = 2
        with dspy.context(adapter=dspy.JSONAdapter()):
            result = study.results(study.run(progress=False))
        assert set(result.trials["final.optimizer"]) == {"none", "quick_simba"}
        assert study.cache.misses == 1  # quick_simba compiled once; none compiles nothing
    finally:
        optimizers._REGISTRY.pop("quick_simba", None)
