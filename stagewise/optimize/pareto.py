"""The cost-quality Pareto front of a study, selection by constraint, and its CSV and plot."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from stagewise.errors import ConfigError
from stagewise.optimize.sampling import objective_values

__all__ = ["SelectionError", "front", "pareto_mask", "saving_at", "select", "trials_table", "write"]


class SelectionError(ConfigError):
    """No configuration satisfies the constraint."""


def pareto_mask(frame: pd.DataFrame, quality: str = "quality", cost: str = "cost_per_request") -> pd.Series:
    """True for rows no other row beats on both quality (higher) and cost (lower)."""
    keep = []
    values = frame[[quality, cost]].to_numpy()
    for q, c in values:
        dominated = any((q2 >= q and c2 <= c) and (q2 > q or c2 < c) for q2, c2 in values)
        keep.append(not dominated)
    return pd.Series(keep, index=frame.index)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per configuration the study completed.

    Columns: trial, quality, cost per request and per 1,000 requests, latency, each parameter and
    each stage's score (`stage:<name>`).

    A trial that reused an earlier one's scores is left out, and so is a second trial of one
    configuration (workers that draw it at the same moment both run it): the first one stays.
    """
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "same_as" in trial.user_attrs:
            continue
        values = objective_values(trial)
        rows.append({"trial": trial.number, "quality": values["quality"],
                     "cost_per_request": values["cost_per_request"],
                     "cost_per_1k_requests": 1000 * values["cost_per_request"],
                     "latency_s": values.get("latency_s", trial.user_attrs.get("latency_s")),
                     **trial.params, **{f"stage:{k}": v for k, v in trial.user_attrs.get("stages", {}).items()}})
    if not rows:
        return pd.DataFrame()
    trials = pd.DataFrame(rows)
    params = sorted({name for trial in study.trials for name in trial.params} & set(trials.columns))
    return trials.sort_values("trial").drop_duplicates(subset=params, keep="first").reset_index(drop=True)


def front(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials Pareto-optimal in quality and cost, cheapest first.

    Latency, when a study optimizes it too, is a column: the cost-quality front is what selection reads.
    """
    if trials.empty:
        return trials
    return trials[pareto_mask(trials)].sort_values(["cost_per_request", "quality"], ascending=[True, False])


def select(front_: pd.DataFrame, *, min_quality: float | None = None,
           max_cost_per_1k: float | None = None) -> pd.Series:
    """"cheapest with quality >= X", or "best quality under $Y per 1,000 requests", or the best quality."""
    if front_.empty:
        raise SelectionError("no completed trial to select from")
    if min_quality is not None and max_cost_per_1k is not None:
        raise SelectionError("give min_quality or max_cost_per_1k, not both")
    if min_quality is not None:
        ok = front_[front_["quality"] >= min_quality]
        if ok.empty:
            raise SelectionError(f"no configuration reaches quality >= {min_quality} "
                                 f"(best: {front_['quality'].max():.3f})")
        return ok.sort_values(["cost_per_request", "quality"], ascending=[True, False]).iloc[0]
    if max_cost_per_1k is not None:
        ok = front_[1000 * front_["cost_per_request"] <= max_cost_per_1k]
        if ok.empty:
            raise SelectionError(f"no configuration costs <= ${max_cost_per_1k} per 1,000 requests "
                                 f"(cheapest: ${1000 * front_['cost_per_request'].min():.4f})")
        return ok.sort_values(["quality", "cost_per_request"], ascending=[False, True]).iloc[0]
    return front_.sort_values(["quality", "cost_per_request"], ascending=[False, True]).iloc[0]


def saving_at(front_: pd.DataFrame, share: float = 0.95) -> dict | None:
    """The cheapest configuration reaching `share` of the best quality, and what it saves.

    The saving is against the best-quality configuration (RouterBench's way to read a front).
    """
    if front_.empty:
        return None
    best = front_.sort_values(["quality", "cost_per_request"], ascending=[False, True]).iloc[0]
    enough = front_[front_["quality"] >= share * best["quality"]].sort_values("cost_per_request").iloc[0]
    saved = 1 - enough["cost_per_request"] / best["cost_per_request"] if best["cost_per_request"] else 0.0
    return {"share": share, "best_trial": int(best["trial"]), "best_quality": float(best["quality"]),
            "trial": int(enough["trial"]), "quality": float(enough["quality"]),
            "cost_per_1k": 1000 * float(enough["cost_per_request"]),
            "best_cost_per_1k": 1000 * float(best["cost_per_request"]), "saving": float(saved)}


def write(trials: pd.DataFrame, directory: str | Path, *, chosen: int | None = None) -> tuple[Path, Path]:
    """`pareto.csv` (the front) and `pareto.png` (every trial, the front, the chosen one)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen: render to a file
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    best = front(trials)
    csv_path = directory / "pareto.csv"
    best.to_csv(csv_path, index=False)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter(1000 * trials["cost_per_request"], trials["quality"], s=18, c="#b0b0b0", label="trials")
    axes.plot(1000 * best["cost_per_request"], best["quality"], "o-", c="#1f5fa8", label="Pareto front")
    if chosen is not None:
        row = trials[trials["trial"] == chosen]
        axes.scatter(1000 * row["cost_per_request"], row["quality"], s=120, facecolors="none",
                     edgecolors="#c0392b", linewidths=2, label="chosen")
    axes.set_xlabel("cost per 1,000 requests (USD)")
    axes.set_ylabel("quality (dev)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    png_path = directory / "pareto.png"
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return csv_path, png_path
