"""The search: DSPy optimizers and an Optuna study over each stage's model, prompt and demos.

- :class:`JointOptimizer`: the main job as a DSPy-style API (``compile(program, trainset=, valset=)``);
- :class:`Study`, :class:`StudySettings`, :class:`SearchSettings`, :class:`StudyResult`: the study
  underneath (objective in :mod:`~stagewise.optimize.objective`, workers in
  :mod:`~stagewise.optimize.storage`, selection in :mod:`~stagewise.optimize.pareto`);
- :class:`StageOptimizer`, :func:`register_optimizer`, :func:`get_optimizer`,
  :func:`optimizer_names`, :class:`OptimizerSetup`, :class:`Reflection` and the built-in
  optimizers (:class:`NoOptimizer`, :class:`LabeledFewShot`, :class:`BootstrapFewShot`,
  :class:`BootstrapRandomSearch`, :class:`Mipro`, :class:`Gepa`, :class:`Simba`);
- :data:`SAMPLERS`, :class:`MarginPruner`: samplers by name and the default pruner;
- :class:`StudyCallback`, :class:`ProgressBar`, :class:`TrialRecord`, :class:`Tracker`: progress;
- :class:`StageChoices`, :class:`RouterChoices`, :class:`TrialChoice`: the search space;
- :func:`load_config`, :class:`StudyConfig`: study config files (TOML);
- :func:`export`, :func:`load`, :func:`trusted_factory`, :class:`UntrustedCodeError`: exported programs;
- :class:`CompileCache`: compiled stage states, shared by workers;
- :func:`front`, :func:`select`: the Pareto front and selection from it.
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
from stagewise.optimize.tracking import Tracker
from stagewise.optimize.trust import UntrustedCodeError, trusted_factory

__all__ = [
    "SAMPLERS", "BootstrapFewShot", "BootstrapRandomSearch", "CompileCache", "Gepa", "JointOptimizer",
    "LabeledFewShot", "MarginPruner", "Mipro", "NoOptimizer", "OptimizerSetup", "ProgressBar", "Reflection",
    "RouterChoices", "SearchSettings", "SelectionError", "Simba", "StageChoices", "StageOptimizer", "Study",
    "StudyCallback", "StudyConfig", "StudyResult", "StudySettings", "Tracker", "TrialChoice", "TrialRecord",
    "UntrustedCodeError", "export", "front", "get_optimizer", "load", "load_config", "optimizer_names",
    "register_optimizer", "select", "trusted_factory",
]
