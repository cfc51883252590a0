"""Cascade: the cheapest model first; a scorer accepts its answer or escalates to the next.

The scorer is an LLM verifier stage (e.g. the `Verify` signature: `correct` and
`confidence` outputs), a [`Scorer`][stagewise.routing.contracts.Scorer] (an object with
`correct_probability(queries, answers)`, such as the trained
[`CascadeScorer`][stagewise.routing.routers.CascadeScorer]), or a classifier of texts with
`predict_proba` whose second column is the probability that the answer is right: it reads the
query and the answer joined by a blank line. The last tier's answer is accepted whatever its
score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagewise.context.record import Section
from stagewise.programs.run import Run, StageRun, stepping
from stagewise.programs.stage import Pipeline, Stage, StageConfigError, as_text, default_count

if TYPE_CHECKING:
    from stagewise.routing.contracts import Scorer


class Cascade(Pipeline):
    """The tiers in order, cheapest first, until the scorer accepts one's answer.

    A tier's answer is accepted when its score (the probability that it is right) reaches
    `threshold`; the last tier's answer is accepted whatever its score. The outputs are the
    accepted tier's, plus `tier` (its name), `escalations` and `scores`.

    Args:
        name: the cascade's name (its trace entry and step key).
        tiers: at least two programs, each producing the `answer` field.
        scorer: an LLM verifier stage (outputs `correct` and `confidence`), a
            [`Scorer`][stagewise.routing.contracts.Scorer], or a classifier with `predict_proba(texts)`.
        threshold: the score in [0, 1] a tier's answer needs to be accepted.
        answer: the tiers' output field that is scored.
        query: the section the scorer reads with the answer.

    Raises:
        StageConfigError: fewer than two tiers, a threshold outside [0, 1], or a scorer of none of the three kinds.
    """
    def __init__(self, name: str, tiers: list[Pipeline], scorer: Stage | Scorer | Any, *, threshold: float = 0.5,
                 answer: str = "answer", query: str = "input.query"):
        super().__init__()
        if len(tiers) < 2:
            raise StageConfigError(f"cascade {name!r} needs at least two tiers")
        if not 0.0 <= threshold <= 1.0:
            raise StageConfigError(f"cascade {name!r}: threshold must be in [0, 1], got {threshold}")
        if not (isinstance(scorer, Stage) or _is_scorer(scorer) or callable(getattr(scorer, "predict_proba", None))):
            raise StageConfigError(f"cascade {name!r}: scorer must be a Stage, a Scorer (correct_probability(queries, "
                                   "answers)) or have predict_proba(texts)")
        self.name, self.tiers, self.scorer = name, list(tiers), scorer
        self.threshold, self.answer, self.query = threshold, answer, query
        if isinstance(scorer, Stage) and scorer.inputs.get("answer") == ["*.answer"]:
            scorer.inputs["answer"] = [f"{name}.candidate"]  # the verifier judges the current tier's answer
        self.stages()

    def _score(self, run: Run, tier: Pipeline, answer: Any) -> float:
        if isinstance(self.scorer, Stage):
            # The verifier reads the query and this tier's answer (`<tier>.<answer>` as "answer").
            text = as_text(answer)
            run.context.add(Section(name="candidate", kind="stage_output", source=self.name,
                                    content=text, tokens=default_count(text),
                                    lineage=(f"{getattr(tier, 'name', '')}.{self.answer}",)))
            verdict = self.scorer.execute(run)
            confidence = float(verdict.get("confidence", 1.0))
            return confidence if verdict.get("correct", True) else 1.0 - confidence
        [query] = run.context.select([self.query], stage=self.name)
        if _is_scorer(self.scorer):
            return float(self.scorer.correct_probability([query.content], [as_text(answer)])[0])
        return float(self.scorer.predict_proba(["\n\n".join((query.content, as_text(answer)))])[0][1])

    def execute(self, run: Run) -> dict[str, Any]:
        """Run this step in `run` and return its outputs (it reports to the observers as a step)."""
        with stepping(run, self, "cascade", [self.query]) as step:
            step.outputs = self._run_tiers(run, step.forced or {})
            step.decision = {"accepted": step.outputs["tier"], "escalations": step.outputs["escalations"],
                             "scores": step.outputs["scores"], "threshold": self.threshold}
        return step.outputs

    def _run_tiers(self, run: Run, forced: dict) -> dict[str, Any]:
        """The tiers in order until one is accepted.

        `forced` (`{"accept": True}` or `{"escalate": True}`, from `replay --accept/--escalate`) decides
        the first tier without scoring it.
        """
        scores = []
        for position, tier in enumerate(self.tiers):
            outputs = tier.execute(run)
            if self.answer not in outputs:
                raise StageConfigError(f"cascade {self.name!r}: tier {getattr(tier, 'name', position)!r} "
                                       f"produces no {self.answer!r} field")
            last = position == len(self.tiers) - 1
            if position == 0 and (forced.get("accept") or forced.get("escalate")):
                score = 1.0 if forced.get("accept") else 0.0
            else:
                score = None if last else self._score(run, tier, outputs[self.answer])
            scores.append(score)
            if last or score >= self.threshold:
                tier_name = getattr(tier, "name", str(position))
                run.log(StageRun(self.name, None, [], [], [
                    f"accepted tier {tier_name!r} after {position} escalation(s); scores {scores}"]))
                return {**outputs, "tier": tier_name, "escalations": position, "scores": scores}
        raise AssertionError("unreachable: the last tier is always accepted")


def _is_scorer(scorer: Any) -> bool:
    """`scorer` follows the [`Scorer`][stagewise.routing.contracts.Scorer] contract."""
    from stagewise.routing.contracts import Scorer  # loads stagewise.routing: only for a scorer that is no Stage

    return isinstance(scorer, Scorer)
