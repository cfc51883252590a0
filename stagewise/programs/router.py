"""Router: a routing decision sends each query to one of several routes, each a program.

The decision is an LLM stage (e.g. the `RoutingDecision` signature, with `route` and
`confidence` outputs) or any object with `predict(texts) -> labels` (a scikit-learn
classifier such as [`LabelRouter`][stagewise.routing.routers.LabelRouter]; its `predict_proba`
gives the confidence when it has one). The route taken and its confidence are part of the
result.

A router built with an LLM stage can swap in a trained classifier later
([`Router.use_classifier`][stagewise.programs.Router.use_classifier]): the classifier then stands in for the stage, and
writes its label under the stage's name, so the stage's metrics score the classifier. An optimization
study uses this to search "LLM router or trained classifier" as one choice.
"""

from __future__ import annotations

from typing import Any

from stagewise.context.record import Section
from stagewise.errors import ProgramError
from stagewise.programs.run import Run, StageRun, stepping
from stagewise.programs.stage import Pipeline, Stage, StageConfigError, default_count


class UnknownRouteError(ProgramError, LookupError):
    """The routing decision named a route that does not exist."""

    def __str__(self) -> str:
        return self.args[0]


class Router(Pipeline):
    """A decision sends the query to one of `routes`; the outputs are the route's plus `route` and `confidence`.

    Args:
        name: the router's name (its sections, trace entry and step key).
        decide: a Stage whose outputs include `route` (and `confidence`), or a classifier
            (`predict(texts) -> labels`).
        routes: route label -> program.
        descriptions: route label -> what it handles; given to an LLM router as `routes`.
        query: the section the decision reads (a classifier gets its text).
        field: the decision stage's output that names the route.

    Raises:
        StageConfigError: no routes, or `decide` is neither a Stage nor has `predict`.
    """

    def __init__(self, name: str, decide: Stage | Any, routes: dict[str, Pipeline], *,
                 descriptions: dict[str, str] | None = None, query: str = "input.query", field: str = "route"):
        super().__init__()
        if not routes:
            raise StageConfigError(f"router {name!r} has no routes")
        if not isinstance(decide, Stage) and not callable(getattr(decide, "predict", None)):
            raise StageConfigError(f"router {name!r}: decide must be a Stage or have predict(texts) -> labels")
        self.name, self.decide, self.routes, self.query, self.field = name, decide, dict(routes), query, field
        self.descriptions = descriptions or {label: label for label in routes}
        self.classifier = None if isinstance(decide, Stage) else decide
        self.stages()

    def use_classifier(self, classifier: Any | None) -> Router:
        """Decide with `classifier` (`predict(texts) -> labels`) instead of the LLM stage; None: the stage again."""
        if classifier is None and not isinstance(self.decide, Stage):
            raise StageConfigError(f"router {self.name!r} has no decision stage to return to")
        if classifier is not None and not callable(getattr(classifier, "predict", None)):
            raise StageConfigError(f"router {self.name!r}: a classifier needs predict(texts) -> labels")
        self.classifier = classifier
        return self

    @property
    def stand_in(self) -> str | None:
        """The name of the decision stage a classifier stands in for, if one does."""
        return self.decide.name if self.classifier is not None and isinstance(self.decide, Stage) else None

    def _decide(self, run: Run) -> tuple[str, float | None, dict[str, Any]]:
        """(route, confidence, why): why names what decided and, for a classifier, its probabilities."""
        if self.classifier is None:
            text = "\n".join(f"{label}: {self.descriptions.get(label, label)}" for label in self.routes)
            if f"{self.name}.routes" not in run.context:
                run.context.add(Section(name="routes", kind="instruction", source=self.name, content=text,
                                        tokens=default_count(text)))
            out = self.decide.execute(run)
            if self.field not in out:
                raise StageConfigError(f"router {self.name!r}: its decision stage has no {self.field!r} output "
                                       f"(outputs: {list(out)})")
            confidence = out.get("confidence")
            confidence = float(confidence) if isinstance(confidence, (int, float)) else None
            return str(out[self.field]).strip(), confidence, {"by": f"stage {self.decide.name}"}
        [query] = run.context.select([self.query], stage=self.name)
        label = str(self.classifier.predict([query.content])[0])
        confidence, why = None, {"by": type(self.classifier).__name__}
        if callable(getattr(self.classifier, "predict_proba", None)):
            probabilities = self.classifier.predict_proba([query.content])[0]
            confidence = float(max(probabilities))
            classes = getattr(self.classifier, "classes_", None)
            if classes is not None and len(classes) == len(probabilities):
                why["probabilities"] = {str(c): round(float(p), 4) for c, p in zip(classes, probabilities)}
        if self.stand_in is not None:  # the stage's outputs, from the classifier, under the stage's name
            run.context.add(Section(name=self.field, kind="stage_output", source=self.stand_in, content=label,
                                    tokens=default_count(label)))
            run.log(StageRun(self.stand_in, None, [query.id], [f"{self.stand_in}.{self.field}"],
                             [f"decided by {type(self.classifier).__name__} instead of the LLM stage"]))
        return label, confidence, why

    def execute(self, run: Run) -> dict[str, Any]:
        """Decide the route (or take a forced or restored one), then run it in `run`.

        Raises:
            UnknownRouteError: the decision names a route that does not exist.
        """
        with stepping(run, self, "route", [self.query]) as step:
            if step.forced and "route" in step.forced:
                label, confidence, why = str(step.forced["route"]), None, {"by": "forced (replay --route)"}
            elif step.restored is not None:  # resumed or replayed: the stored decision, its sections restored
                step.outputs, step.decision = step.restored, {"route": step.restored["route"], "by": "restored"}
                return {**self.routes[step.restored["route"]].execute(run), **step.restored}
            else:
                label, confidence, why = self._decide(run)
            if label not in self.routes:
                raise UnknownRouteError(f"router {self.name!r}: the decision chose route {label!r}, which does not "
                                        f"exist (routes: {', '.join(self.routes)})")
            for field, value in (("route", label), ("confidence", confidence)):
                text = "" if value is None else str(value)
                step.added.append(run.context.add(Section(name=field, kind="stage_output", source=self.name,
                                                          content=text, tokens=default_count(text))))
            shown = "" if confidence is None else f" (confidence {confidence:.2f})"
            run.log(StageRun(self.name, None, [self.query], [f"{self.name}.route"], [f"routed to {label!r}{shown}"]))
            step.decision = {"route": label, "confidence": confidence, **why}
            step.outputs = {"route": label, "confidence": confidence}
        outputs = self.routes[label].execute(run)
        return {**outputs, "route": label, "confidence": confidence}
