"""Samplers and pruning of a study: config names for Optuna's samplers, and the margin pruner.

A study config names a sampler (`[search] sampler = "tpe"`); the Python API takes any
`optuna.samplers.BaseSampler` and any `optuna.pruners.BasePruner`. Each trial is first
scored on the first `prune_on` dev examples; the study then asks its pruner
(`pruner.prune(study, trial)`) whether to stop the trial there. The trial's early scores are
in its user attribute `early` (`{"quality": ..., "cost_per_request": ...}`): Optuna keeps no
intermediate values for multi-objective studies, so pruners that read them (`MedianPruner`
...) never prune here; [`MarginPruner`][stagewise.optimize.MarginPruner], the default, reads `early`.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from stagewise.errors import SearchSpaceError

__all__ = ["OBJECTIVES", "SAMPLERS", "MarginPruner", "make_sampler", "objective_values"]

OBJECTIVES = ("quality", "cost_per_request", "latency_s")  # in the study's order (latency: when optimized)

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, grid: optuna.samplers.TPESampler(seed=seed),
    "grid": lambda seed, grid: optuna.samplers.GridSampler(grid(), seed=seed),  # every configuration once
    "random": lambda seed, grid: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed, grid: optuna.samplers.NSGAIISampler(seed=seed),
}


def make_sampler(spec: str | optuna.samplers.BaseSampler, *, seed: int,
                 grid: Callable[[], dict[str, list]]) -> optuna.samplers.BaseSampler:
    """The sampler `spec` names (`grid()` gives the grid sampler its search space), or `spec` itself."""
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    if spec not in SAMPLERS:
        raise SearchSpaceError(f"[search] sampler {spec!r}: use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[spec](seed, grid)


def objective_values(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """A finished trial's objective values by name (`quality`, `cost_per_request`, maybe `latency_s`)."""
    return dict(zip(OBJECTIVES, trial.values or ()))


class MarginPruner(optuna.pruners.BasePruner):
    """Prune a trial whose early quality is hopeless.

    Hopeless: a completed trial that cost no more reached at least `margin` more quality.

    Args:
        margin: the quality lead that makes a trial hopeless.
    """

    def __init__(self, margin: float = 0.15):
        self.margin = margin

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """True when the trial's `early` scores are beaten by `margin` at no more cost."""
        early = trial.user_attrs.get("early")
        if not early:
            return False
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return any(values["quality"] >= early["quality"] + self.margin
                   and values["cost_per_request"] <= early["cost_per_request"]
                   for values in map(objective_values, done))
