"""The search: DSPy optimizers and an Optuna study over each stage's model, prompt and demos.

- `JointOptimizer`: the main job as a DSPy-style API (`compile(program, trainset=, valset=)`);
- [`Study`][stagewise.optimize.Study], [`StudySettings`][stagewise.optimize.StudySettings],
[`SearchSettings`][stagewise.optimize.SearchSettings], [`StudyResult`][stagewise.optimize.StudyResult]: the study
  underneath (objective in `objective`, workers in
  `storage`, selection in `pareto`);
- [`StageOptimizer`][stagewise.optimize.StageOptimizer], [`register_optimizer`][stagewise.optimize.register_optimizer],
[`get_optimizer`][stagewise.optimize.get_optimizer],
  [`optimizer_names`][stagewise.optimize.optimizer_names], [`OptimizerSetup`][stagewise.optimize.OptimizerSetup],
  [`Reflection`][stagewise.optimize.Reflection] and the built-in optimizers
  ([`NoOptimizer`][stagewise.optimize.NoOptimizer], [`LabeledFewShot`][stagewise.optimize.LabeledFewShot],
  [`BootstrapFewShot`][stagewise.optimize.BootstrapFewShot],
  [`BootstrapRandomSearch`][stagewise.optimize.BootstrapRandomSearch], [`Mipro`][stagewise.optimize.Mipro],
  [`Gepa`][stagewise.optimize.Gepa], [`Simba`][stagewise.optimize.Simba]);
- `SAMPLERS`, [`MarginPruner`][stagewise.optimize.MarginPruner]: samplers by name and the default pruner;
- [`StudyCallback`][stagewise.optimize.StudyCallback], [`ProgressBar`][stagewise.optimize.ProgressBar],
[`TrialRecord`][stagewise.optimize.TrialRecord], [`Tracker`][stagewise.optimize.Tracker]: progress;
- [`StageChoices`][stagewise.optimize.StageChoices], [`RouterChoices`][stagewise.optimize.RouterChoices],
[`TrialChoice`][stagewise.optimize.TrialChoice]: the search space;
- [`load_config`][stagewise.optimize.load_config], [`StudyConfig`][stagewise.optimize.StudyConfig]: study config files
(TOML);
- `export`, [`load`][stagewise.optimize.load], [`trusted_factory`][stagewise.optimize.trusted_factory],
[`UntrustedCodeError`][stagewise.optimize.UntrustedCodeError]: exported programs;
- [`CompileCache`][stagewise.optimize.CompileCache]: compiled stage states, shared by workers;
- [`front`][stagewise.optimize.front], [`select`][stagewise.optimize.select]: the Pareto front and selection from it;
- [`trial_runs`][stagewise.optimize.trial_runs], [`plot_trial_runs`][stagewise.optimize.plot_trial_runs]: the trials
  studies logged to MLflow, side by side (what `stagewise compare` shows).
"""

from stagewise.optimize.callbacks import ProgressBar, StudyCallback, TrialRecord
from stagewise.optimize.compile import CompileCache
from stagewise.optimize.config import StudyConfig, load_config
from stagewise.optimize.export import export, load
from stagewise.optimize.joint import JointOptimizer
from stagewise.optimize.optimizers import (
    BootstrapFewShot,
    BootstrapRandomSearch,
    Gepa,
    LabeledFewShot,
    Mipro,
    NoOptimizer,
    OptimizerSetup,
    Reflection,
    Simba,
    StageOptimizer,
    get_optimizer,
    optimizer_names,
    register_optimizer,
)
from stagewise.optimize.pareto import SelectionError, front, select
from stagewise.optimize.sampling import SAMPLERS, MarginPruner
from stagewise.optimize.settings import SearchSettings, StudySettings
from stagewise.optimize.space import RouterChoices, StageChoices, TrialChoice
from stagewise.optimize.study import Study, StudyResult
from stagewise.optimize.tracking import Tracker, plot_trial_runs, trial_runs
from stagewise.optimize.trust import UntrustedCodeError, trusted_factory

__all__ = [
    "SAMPLERS", "BootstrapFewShot", "BootstrapRandomSearch", "CompileCache", "Gepa", "JointOptimizer",
    "LabeledFewShot", "MarginPruner", "Mipro", "NoOptimizer", "OptimizerSetup", "ProgressBar", "Reflection",
    "RouterChoices", "SearchSettings", "SelectionError", "Simba", "StageChoices", "StageOptimizer", "Study",
    "StudyCallback", "StudyConfig", "StudyResult", "StudySettings", "Tracker", "TrialChoice", "TrialRecord",
    "UntrustedCodeError", "export", "front", "get_optimizer", "load", "load_config", "optimizer_names",
    "plot_trial_runs", "register_optimizer", "select", "trial_runs", "trusted_factory",
]
