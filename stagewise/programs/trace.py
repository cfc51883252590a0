"""The trace of one request: per stage, its model, tokens, latency, cost and context received.

Built from the run's stage log and the usage records of the calls made under each stage,
so the numbers are the accounted ones. `lineage(section_id)` walks a final output back
through every stage to the request inputs that produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from stagewise.context.record import Context, Section
from stagewise.programs.run import Run


@dataclass(frozen=True)
class StageTrace:
    """One stage execution in a request's trace.

    It holds the stage's model, calls, tokens, latency and cost, the section ids it received and
    produced, and the notes of its context transforms.
    """

    stage: str
    model: str | None
    calls: int
    input_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float
    received: tuple[str, ...]
    produced: tuple[str, ...]
    notes: tuple[str, ...]
    tokens_saved: int


@dataclass(frozen=True)
class Trace:
    """The trace of one request (`prediction.trace`).

    It holds a [`StageTrace`][stagewise.programs.StageTrace] per stage execution, in order, and the
    request's context; `trace["stage"]` is that stage's (first) entry.
    """

    request_id: str
    stages: tuple[StageTrace, ...]
    context: Context

    @classmethod
    def of(cls, run: Run) -> Trace:
        """The trace of `run`: its stage log with the usage records of each stage's calls (and its helpers')."""
        records = run.ledger.records
        entries = []
        for stage_run in run.stages:
            # Calls made under the stage, and under its helpers (`<stage>:compress`).
            own = [r for r in records
                   if r.stage == stage_run.stage or (r.stage or "").startswith(f"{stage_run.stage}:")]
            entries.append(StageTrace(
                stage=stage_run.stage, model=stage_run.model, calls=len(own),
                input_tokens=sum(r.input_tokens for r in own), output_tokens=sum(r.output_tokens for r in own),
                latency_s=sum(r.latency_s for r in own), cost_usd=sum(r.cost_usd or 0.0 for r in own),
                received=tuple(stage_run.received), produced=tuple(stage_run.produced),
                notes=tuple(stage_run.notes), tokens_saved=stage_run.tokens_saved,
            ))
        return cls(run.request_id, tuple(entries), run.context)

    def __getitem__(self, stage: str) -> StageTrace:
        for entry in self.stages:
            if entry.stage == stage:
                return entry
        raise KeyError(f"no stage {stage!r} in this trace (stages: {[s.stage for s in self.stages]})")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per stage execution."""
        return pd.DataFrame([asdict(s) for s in self.stages])

    def lineage(self, section_id: str) -> list[Section]:
        """Every section `section_id` was derived from, through every stage, back to the inputs."""
        return self.context.lineage(section_id)

    @property
    def total_cost(self) -> float:
        """The nominal cost of the request's calls, in USD."""
        return sum(s.cost_usd for s in self.stages)

    def __str__(self) -> str:
        lines = [f"trace of request {self.request_id}"]
        for s in self.stages:
            lines.append(f"  {s.stage:<14} {s.model or '-':<22} in {s.input_tokens:>6} out {s.output_tokens:>5} "
                         f"{s.latency_s:6.2f}s ${s.cost_usd:.3g}  received {', '.join(s.received)}")
            if s.tokens_saved:
                lines.append(f"  {'':<14} context fitted to the stage's budget: {s.tokens_saved} tokens saved")
            lines.extend(f"  {'':<14} note: {note}" for note in s.notes)
        return "\n".join(lines)
