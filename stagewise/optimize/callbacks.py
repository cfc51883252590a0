"""What a running study reports, and to whom: progress bars, MLflow, your own callbacks.

A [`StudyCallback`][stagewise.optimize.StudyCallback] hears the study start, each trial of this process finish (a
[`TrialRecord`][stagewise.optimize.TrialRecord]), the count of finished trials change (this process's and other
workers'), and the study end. [`ProgressBar`][stagewise.optimize.ProgressBar] draws a rich bar;
[`Tracker`][stagewise.optimize.tracking.Tracker] logs to MLflow. Pass your own to `Study.run(callbacks=[...])`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ProgressBar", "StudyCallback", "TrialRecord"]


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its configuration, what it measured, and files worth keeping.

    `state` is `complete`, `pruned` (stopped on the dev subset) or `reused` (the sampler
    proposed a configuration already scored). `artifacts` exist only during the callback.
    """

    number: int
    state: Literal["complete", "pruned", "reused"]
    params: dict[str, Any]
    metrics: dict[str, float]
    artifacts: tuple[Path, ...] = field(default=())


class StudyCallback:
    """Hears a study's progress; every method does nothing unless overridden."""

    def study_started(self, name: str, params: dict[str, Any], *, done: int, total: int) -> None:
        """The study `name` starts (or continues) with `done` of `total` trials finished."""

    def trial_finished(self, record: TrialRecord) -> None:
        """A trial of this process finished."""

    def trials_counted(self, done: int, total: int) -> None:
        """`done` of `total` trials are finished (by any worker)."""

    def study_finished(self) -> None:
        """This process runs no more trials (called even when the study failed)."""


class ProgressBar(StudyCallback):
    """A rich progress bar of the study's trials, with counts and the time remaining."""

    def __init__(self) -> None:
        self._bar = self._task = None

    def study_started(self, name, params, *, done, total):
        """Show the bar."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar.start()
        self._task = self._bar.add_task("trials", total=total, completed=done)

    def trials_counted(self, done, total):
        """Move the bar."""
        if self._bar is not None:
            self._bar.update(self._task, completed=min(total, done))

    def study_finished(self):
        """Take the bar down."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
