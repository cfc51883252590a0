"""Parallel fan-out / fan-in: the same baseline context to every branch, branches concurrent.

Every branch starts from a copy of the same context; before a branch runs, its view of the
baseline is checked against the fingerprint taken at the fork, so branch outputs stay
comparable. Branches run in worker threads (each with a copy of the caller's context
variables, so usage is accounted per stage and request). Their new sections are merged
back, and an aggregator turns the branch outputs into the fan-out's outputs:

- [`MajorityVote`][stagewise.programs.MajorityVote]: the most frequent value of a field (ties: the earlier branch);
- [`WeightedVote`][stagewise.programs.WeightedVote]: votes weighted by a confidence field;
- [`DisagreementReport`][stagewise.programs.DisagreementReport]: the majority value and which branches differed from it;
- [`MergeProfile`][stagewise.programs.MergeProfile]: one structured profile from every branch's fields (multi-aspect);
- [`LLMAggregate`][stagewise.programs.LLMAggregate]: an LLM stage that reads all candidates and writes one answer.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stagewise.context.format import render
from stagewise.context.record import Section
from stagewise.errors import ProgramError
from stagewise.programs.run import Run, StageRun, stepping, use_run
from stagewise.programs.stage import Pipeline, Stage, StageConfigError, as_text, default_count


class BaselineMismatchError(ProgramError, RuntimeError):
    """A branch saw a different baseline context than its siblings."""


def _fingerprint(sections: list[Section]) -> str:
    digest = hashlib.sha256()
    for section in sections:
        digest.update(section.id.encode())
        digest.update(b"\0")
        digest.update(section.content.encode())
        digest.update(b"\1")
    return digest.hexdigest()


class Aggregator:
    """Turns `{branch: outputs}` into the fan-out's outputs. May run stages of its own."""

    def aggregate(self, outputs: dict[str, dict[str, Any]], run: Run, fanout: FanOut) -> dict[str, Any]:
        """The fan-out's outputs from each branch's outputs.

        Args:
            outputs: each branch's outputs, by branch name.
            run: the request's run (an aggregator may add sections or run stages in it).
            fanout: the fan-out aggregating.
        """
        raise NotImplementedError


class MajorityVote(Aggregator):
    """The most frequent value of `field` across the branches (ties: the earlier branch).

    The outputs are `field`, the `votes` per value and the `agreement` (the winner's share of the branches).

    Args:
        field: the branches' output field to vote on.
    """

    def __init__(self, field: str):
        self.field = field

    def _values(self, outputs, fanout) -> dict[str, Any]:
        missing = [b for b, out in outputs.items() if self.field not in out]
        if missing:
            raise StageConfigError(f"fan-out {fanout.name!r}: branch(es) {missing} produce no field {self.field!r}")
        return {branch: out[self.field] for branch, out in outputs.items()}

    def aggregate(self, outputs, run, fanout):
        """The winning value, the votes and the agreement; a branch without `field` is a `StageConfigError`."""
        values = self._values(outputs, fanout)
        counts = Counter(as_text(v) for v in values.values())
        best = max(counts.values())
        winner = next(v for v in values.values() if counts[as_text(v)] == best)  # ties: earliest branch
        return {self.field: winner, "votes": dict(counts), "agreement": best / len(values)}


class WeightedVote(MajorityVote):
    """The value of `field` whose branches' `weight` field sums highest (ties: the earlier branch).

    The outputs are `field` and the total `weights` per value. A weight that is not a number counts as 0.

    Args:
        field: the branches' output field to vote on.
        weight: the branches' numeric output field that weighs their vote.
    """

    def __init__(self, field: str, weight: str = "confidence"):
        super().__init__(field)
        self.weight = weight

    def aggregate(self, outputs, run, fanout):
        """The winning value and the weights; a branch without `field` is a `StageConfigError`."""
        values = self._values(outputs, fanout)
        totals: dict[str, float] = defaultdict(float)
        first: dict[str, Any] = {}
        for branch, value in values.items():
            key = as_text(value)
            weight = outputs[branch].get(self.weight)
            totals[key] += float(weight) if isinstance(weight, (int, float)) else 0.0
            first.setdefault(key, value)
        best_key = max(totals, key=lambda k: (totals[k], -list(first).index(k)))
        return {self.field: first[best_key], "weights": dict(totals)}


class DisagreementReport(MajorityVote):
    """A [`MajorityVote`][stagewise.programs.MajorityVote] that also names the `dissenters`.

    The dissenters are the branches whose value differs from the majority's.
    """

    def aggregate(self, outputs, run, fanout):
        """The majority vote's outputs plus `dissenters`."""
        result = super().aggregate(outputs, run, fanout)
        majority = as_text(result[self.field])
        result["dissenters"] = [b for b, out in outputs.items() if as_text(out[self.field]) != majority]
        return result


class MergeProfile(Aggregator):
    """One profile from every branch: `{"profile": {field: value, ...}}` plus the fields themselves.

    Two branches writing the same field is an error (ambiguous profile).
    """

    def aggregate(self, outputs, run, fanout):
        """`profile` and each branch's fields; a field from two branches is a `StageConfigError`."""
        profile: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for branch, out in outputs.items():
            for field, value in out.items():
                if field in profile:
                    raise StageConfigError(f"fan-out {fanout.name!r}: branches {owner[field]!r} and {branch!r} "
                                           f"both produce {field!r}; a merged profile needs distinct fields")
                profile[field], owner[field] = value, branch
        return {"profile": profile, **profile}


class LLMAggregate(Aggregator):
    """An LLM stage (e.g. the `Aggregate` signature) over all candidates of `field`.

    The candidates are merged into one section `<fanout>.candidates` that the stage reads
    (its `candidates` input by default).

    Args:
        stage: the aggregating stage.
        field: the branches' output field whose values are the candidates.
    """

    def __init__(self, stage: Stage, field: str = "answer"):
        self.stage, self.field = stage, field

    def aggregate(self, outputs, run, fanout):
        """Add the `<fanout>.candidates` section and return the stage's outputs on it."""
        candidates = [Section(name=branch, kind="stage_output", source=fanout.name,
                              content=as_text(out.get(self.field)), tokens=0)
                      for branch, out in outputs.items()]
        text = render(candidates, "markdown")
        run.context.add(Section(name="candidates", kind="stage_output", source=fanout.name, content=text,
                                tokens=default_count(text), lineage=fanout.branch_sections(run)))
        return self.stage.execute(run)


class FanOut(Pipeline):
    """Runs `branches` concurrently on the same baseline context, then aggregates.

    Each branch runs in a worker thread on its own copy of the context; the sections the
    branches add join the request's context, and the aggregator's outputs are added as
    `<name>.<field>` sections.

    Args:
        name: the fan-out's name (its sections, trace entry and step key).
        branches: at least two programs, by branch name.
        aggregator: turns the branches' outputs into the fan-out's.
        baseline: section patterns every branch must see identically (default: the whole
            context at the fork).
        max_workers: threads to run the branches on (default: one per branch).

    Raises:
        StageConfigError: fewer than two branches.
    """

    def __init__(self, name: str, branches: dict[str, Pipeline], aggregator: Aggregator,
                 *, baseline: list[str] | None = None, max_workers: int | None = None):
        super().__init__()
        if len(branches) < 2:
            raise StageConfigError(f"fan-out {name!r} needs at least two branches")
        self.name = name
        self.branches = dict(branches)
        self.aggregator = aggregator
        if isinstance(aggregator, LLMAggregate):
            self.aggregator_stage = aggregator.stage  # a sub-module, so set_models and optimizers see it
        self.baseline = baseline
        self.max_workers = max_workers
        self.stages()

    def branch_sections(self, run: Run) -> tuple[str, ...]:
        """Ids of the sections the branches' stages produced in this run."""
        sources = {name for branch in self.branches.values() for name in branch.stages()}
        sources |= {getattr(branch, "name", None) for branch in self.branches.values()}
        return tuple(i for i, section in run.context.sections.items() if section.source in sources)

    def execute(self, run: Run) -> dict[str, Any]:
        """Run the branches and aggregate their outputs in `run`.

        Raises:
            BaselineMismatchError: a branch does not see the baseline context the others see.
        """
        with stepping(run, self, "fanout") as step:
            step.outputs = self._execute(run, step)
        return step.outputs

    def _execute(self, run: Run, step) -> dict[str, Any]:
        patterns = self.baseline or ["*"]
        baseline = run.context.select(patterns, stage=self.name)
        expected = _fingerprint(baseline)
        forks = {branch: run.fork() for branch in self.branches}

        def run_branch(branch: str) -> dict[str, Any]:
            fork = forks[branch]
            seen = _fingerprint(fork.context.select(patterns, stage=branch))
            if seen != expected:
                raise BaselineMismatchError(f"fan-out {self.name!r}: branch {branch!r} does not see the baseline "
                                            "context the other branches see")
            with use_run(fork):
                return self.branches[branch].execute(fork)

        with ThreadPoolExecutor(max_workers=self.max_workers or len(self.branches)) as pool:
            futures = {b: pool.submit(contextvars.copy_context().run, run_branch, b) for b in self.branches}
            outputs = {b: future.result() for b, future in futures.items()}
        before = set(run.context.ids())
        for fork in forks.values():
            for section_id, section in fork.context.sections.items():
                if section_id not in before:
                    run.context.add(section)
        lineage = self.branch_sections(run)
        step.reads = list(lineage)
        result = self.aggregator.aggregate(outputs, run, self)
        for field, value in result.items():
            text = as_text(value)
            step.added.append(run.context.add(Section(name=field, kind="stage_output", source=self.name,
                                                      content=text, tokens=default_count(text), lineage=lineage)))
        run.log(StageRun(self.name, None, [s.id for s in baseline], [s.id for s in step.added],
                         [f"{len(self.branches)} branches: {', '.join(self.branches)}"]))
        branches = {branch: {k: as_text(v) for k, v in out.items()} for branch, out in outputs.items()}
        step.decision = {"aggregator": type(self.aggregator).__name__, "branches": branches,
                         **{k: result[k] for k in ("votes", "agreement", "weights", "dissenters") if k in result}}
        return result
