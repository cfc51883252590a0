"""Hierarchical: a planner delegates sub-tasks to specialists; a synthesizer combines results.

The planner sees the query, the specialists' capability descriptions and the constraints,
never their documents. Each specialist runs on a context of its own: its sub-task as the
query plus its own documents (`<specialist>-docs.context`), nothing from the others. The
plan is validated: an unknown specialist, an empty plan or a plan over the sub-task budget
is either an error ([`PlanError`][stagewise.programs.PlanError]) or sent back to the planner with the reason, by
`policy`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, create_model

from stagewise.context.record import INPUT, Context, Section
from stagewise.errors import ProgramError
from stagewise.programs.run import Run, StageRun, stepping, use_run
from stagewise.programs.stage import Pipeline, Stage, StageConfigError, as_text, default_count


class PlanError(ProgramError, ValueError):
    """The planner's plan is invalid and the policy says not to re-plan (or re-planning failed)."""


@dataclass
class Specialist:
    """One specialist of a [`Hierarchy`][stagewise.programs.Hierarchy].

    It holds the `program` that does its sub-tasks, the capability `description` the planner reads,
    and its own `documents` (which only it sees).
    """

    program: Pipeline
    description: str
    documents: list[str] = field(default_factory=list)


class Hierarchy(Pipeline):
    """A planner splits the request into sub-tasks for specialists; a synthesizer combines their answers.

    Each sub-task (at most `max_subtasks`) is run by one of the `specialists` on its own context:
    the sub-task and the specialist's documents. An invalid plan is sent back to the planner with
    the reason (`policy="replan"`, at most `max_replans` times) or raises
    [`PlanError`][stagewise.programs.PlanError] (`policy="error"`).

    Args:
        name: the hierarchy's name (its sections, trace entry and step key).
        planner: the stage whose `subtasks` output lists `specialist` and `task` pairs.
        specialists: the specialists, by the name the planner uses.
        synthesizer: the stage that reads the results and answers.
        max_subtasks: the most sub-tasks a plan may have.
        constraints: extra planning instructions, after the sub-task budget.
        policy: `"replan"` or `"error"`, for an invalid plan.
        max_replans: how many times the planner may plan again (with `policy="replan"`).

    Raises:
        StageConfigError: no specialists, or an unknown policy.
    """

    def __init__(self, name: str, planner: Stage, specialists: dict[str, Specialist], synthesizer: Stage, *,
                 max_subtasks: int = 3, constraints: str = "", policy: Literal["error", "replan"] = "replan",
                 max_replans: int = 1):
        super().__init__()
        if not specialists:
            raise StageConfigError(f"hierarchy {name!r} has no specialists")
        if policy not in ("error", "replan"):
            raise StageConfigError(f"hierarchy {name!r}: policy must be 'error' or 'replan', got {policy!r}")
        self.name, self.planner, self.synthesizer = name, planner, synthesizer
        self.specialists = {n: s.program for n, s in specialists.items()}  # sub-modules, seen by set_models
        self.profiles = {n: (s.description, list(s.documents)) for n, s in specialists.items()}
        self.max_subtasks, self.constraints = max_subtasks, constraints
        self.policy, self.max_replans = policy, max_replans
        self._constrain_planner()
        self.stages()

    def _constrain_planner(self) -> None:
        """Type the plan so a schema-following model can only name real specialists, within budget.

        When the planner's `subtasks` output is a list of objects with a `specialist` field,
        that field becomes a `Literal` of the specialists' names and the list gets 1 to
        `max_subtasks` items. Models that honour the JSON schema (local models, structured
        outputs) then cannot produce an invalid plan; the validation below still guards the rest.
        """
        signature = self.planner.signature
        annotation = signature.output_fields.get("subtasks")
        item = (get_args(annotation.annotation)[0]
                if annotation is not None and get_args(annotation.annotation) else None)
        if not (isinstance(item, type) and issubclass(item, BaseModel) and "specialist" in item.model_fields):
            return
        names = tuple(self.specialists)
        fields = {name: (info.annotation, info) for name, info in item.model_fields.items()}
        fields["specialist"] = (Literal[names], item.model_fields["specialist"])
        assigned = create_model(f"{item.__name__}For{self.name.title().replace('_', '')}", **fields)
        typed = Annotated[list[assigned], Field(min_length=1, max_length=self.max_subtasks)]
        for predictor in self.planner.step.predictors():
            predictor.signature = predictor.signature.with_updated_fields("subtasks", type_=typed)

    def _problem(self, subtasks: list[Any]) -> str | None:
        if not subtasks:
            return "the plan is empty"
        unknown = sorted({t.specialist for t in subtasks} - set(self.specialists))
        if unknown:
            return f"unknown specialist(s) {unknown}; the specialists are {sorted(self.specialists)}"
        if len(subtasks) > self.max_subtasks:
            return f"{len(subtasks)} sub-tasks is over the budget of {self.max_subtasks}"
        return None

    def _plan(self, run: Run) -> list[Any]:
        roster = "\n".join(f"{n}: {description}" for n, (description, _) in self.profiles.items())
        base = f"at most {self.max_subtasks} sub-tasks. {self.constraints}".strip()
        for name, text in (("specialists", roster), ("constraints", base)):
            run.context.add(Section(name=name, kind="instruction", source=self.name, content=text,
                                    tokens=default_count(text)))
        for attempt in range(self.max_replans + 1 if self.policy == "replan" else 1):
            subtasks = list(self.planner.execute(run).get("subtasks") or [])
            problem = self._problem(subtasks)
            if problem is None:
                return subtasks
            run.log(StageRun(self.name, None, [f"{self.planner.name}.subtasks"], [],
                             [f"plan rejected (attempt {attempt + 1}): {problem}"]))
            text = f"{base}\nYour previous plan was rejected: {problem}. Plan again."
            run.context.add(Section(name="constraints", kind="instruction", source=self.name, content=text,
                                    tokens=default_count(text)))
        raise PlanError(f"hierarchy {self.name!r}: planner stage {self.planner.name!r} gave an invalid plan: {problem}")

    def _delegate(self, run: Run, subtask: Any) -> dict[str, Any]:
        """The specialist runs on its own context: the sub-task and its own documents only."""
        _, documents = self.profiles[subtask.specialist]
        own = run.fork(Context())
        own.context.add(Section(name="query", kind="query", source=INPUT, content=subtask.task,
                                tokens=default_count(subtask.task), lineage=(f"{self.planner.name}.subtasks",)))
        if documents:
            text = "\n\n".join(documents)
            own.context.add(Section(name="context", kind="retrieved", source=f"{subtask.specialist}-docs",
                                    content=text, tokens=default_count(text)))
        with use_run(own):
            outputs = self.specialists[subtask.specialist].execute(own)
        for _section_id, section in own.context.sections.items():
            if section.source != INPUT:
                run.context.add(section)  # the results join the request's record, for synthesis and lineage
        return outputs

    def execute(self, run: Run) -> dict[str, Any]:
        """Plan, run each sub-task on its specialist, then return the synthesizer's outputs.

        Raises:
            PlanError: the plan is invalid and may not be (or was not successfully) replanned.
        """
        with stepping(run, self, "plan", [f"{self.planner.name}.subtasks"]) as step:
            subtasks = self._plan(run)
            step.decision = {"subtasks": [{"specialist": t.specialist, "task": t.task} for t in subtasks]}
            step.outputs = {"subtasks": step.decision["subtasks"]}
        results = []
        for subtask in subtasks:
            outputs = self._delegate(run, subtask)
            results.append({"specialist": subtask.specialist, "task": subtask.task,
                            "result": {k: as_text(v) for k, v in outputs.items()}})
        text = json.dumps(results, indent=1)
        specialist_sections = tuple(i for i, s in run.context.sections.items()
                                    if s.source in {n for p in self.specialists.values() for n in p.stages()})
        run.context.add(Section(name="results", kind="stage_output", source=self.name, content=text,
                                tokens=default_count(text), lineage=specialist_sections))
        run.log(StageRun(self.name, None, [f"{self.planner.name}.subtasks"], [f"{self.name}.results"],
                         [f"{len(subtasks)} sub-task(s): {', '.join(t.specialist for t in subtasks)}"]))
        return self.synthesizer.execute(run)
