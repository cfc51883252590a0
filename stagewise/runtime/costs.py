"""Cost per request, per stage, and an alert when a request costs far more than usual.

[`CostMonitor`][stagewise.runtime.CostMonitor] observes program calls: it records each request's cost by stage and flags
a request whose cost is above the `quantile` of the recent costs of the same program times
`factor` (once at least `min_history` requests are known). An alert goes to the log
(warning) and to `callback(alert)`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from stagewise.programs.run import Observer, Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostAlert:
    """A request that cost more than `threshold_usd`: its program, id, cost and cost by stage."""

    program: str
    request_id: str
    cost_usd: float
    threshold_usd: float
    by_stage: dict[str, float]

    def __str__(self) -> str:
        top = max(self.by_stage.items(), key=lambda item: item[1], default=("-", 0.0))
        return (f"request {self.request_id} of {self.program!r} cost ${self.cost_usd:.6f}, above the usual "
                f"${self.threshold_usd:.6f} (most in stage {top[0]!r}: ${top[1]:.6f})")


class CostMonitor(Observer):
    """Records each request's cost by stage and flags a request that costs far more than usual.

    Each request's cost goes to `history`, its cost by stage to `last`. A request above the
    `quantile` of the last `window` requests' costs times `factor`, once `min_history` are known,
    makes a [`CostAlert`][stagewise.runtime.CostAlert]: logged as a warning, appended to `alerts` and
    passed to `callback` (nothing is raised).

    Args:
        program: the program's name, in alerts.
        window: how many recent request costs the threshold is computed from.
        quantile: the quantile of those costs that, times `factor`, is the threshold.
        factor: the multiplier of the quantile.
        min_history: how many requests must be known before any alert.
        callback: called with each alert.
    """

    def __init__(self, program: str = "program", *, window: int = 500, quantile: float = 0.99, factor: float = 1.5,
                 min_history: int = 20, callback: Callable[[CostAlert], None] | None = None):
        self.program, self.quantile, self.factor, self.min_history = program, quantile, factor, min_history
        self.callback = callback
        self.history: collections.deque[float] = collections.deque(maxlen=window)
        self.last: dict[str, float] = {}  # the last request's cost by stage
        self.alerts: list[CostAlert] = []
        self._lock = threading.Lock()

    def threshold(self) -> float | None:
        """The cost above which a request is flagged now, or None while the history is too short."""
        with self._lock:
            if len(self.history) < self.min_history:
                return None
            return float(np.quantile(np.array(self.history), self.quantile)) * self.factor

    @contextmanager
    def request(self, run: Run, inputs: dict):
        """Wraps a request; when it ends, records its cost and checks it against the threshold."""
        yield
        by_stage: dict[str, float] = collections.defaultdict(float)
        for record in run.ledger.records:
            by_stage[record.stage or "-"] += record.cost_usd or 0.0
        cost = sum(by_stage.values())
        threshold = self.threshold()
        with self._lock:
            self.history.append(cost)
            self.last = dict(by_stage)
        if threshold is not None and cost > threshold:
            alert = CostAlert(self.program, run.request_id, cost, threshold, dict(by_stage))
            self.alerts.append(alert)
            log.warning("cost anomaly: %s", alert)
            if self.callback is not None:
                self.callback(alert)
