"""Sequential chain: stages run in order, each on the context the earlier ones accumulated."""

from __future__ import annotations

from typing import Any

from stagewise.programs.run import Run
from stagewise.programs.stage import Pipeline, StageConfigError


class Chain(Pipeline):
    """Runs its steps in order.

    Each step reads the sections it needs from the shared context (never a concatenated string) and
    adds its outputs to it. The chain's outputs are the last step's, or the fields named in
    `outputs` as `{"answer": "generate.answer"}`.

    Args:
        name: the chain's name.
        steps: the programs to run, in order (stages or other programs).
        outputs: the chain's output fields, each from a section `"<stage>.<field>"` (default: the
            last step's outputs).

    Raises:
        StageConfigError: `steps` is empty, or two stages have the same name.

    Examples:
        >>> from stagewise.programs import Chain, Stage
        >>> support = Chain("support", [Stage("area", "message -> area"),
        ...                             Stage("reply", "message, area -> reply")])
        >>> list(support.stages())
        ['area', 'reply']
    """

    def __init__(self, name: str, steps: list[Pipeline], *, outputs: dict[str, str] | None = None):
        super().__init__()
        if not steps:
            raise StageConfigError(f"chain {name!r} has no steps")
        self.name = name
        self.steps = list(steps)
        self.outputs = outputs
        self.stages()  # duplicate stage names are an error now, not at the first request

    def execute(self, run: Run) -> dict[str, Any]:
        """Run the steps in order in `run`; the outputs are the last step's, or the `outputs` sections."""
        last: dict[str, Any] = {}
        for step in self.steps:
            last = step.execute(run)
        if self.outputs is None:
            return last
        return {field: run.context.select([section_id], stage=self.name)[0].content
                for field, section_id in self.outputs.items()}
