"""The canonical context record: what flows between stages, as named, typed sections.

A request's [`Context`][stagewise.context.Context] holds [`Section`][stagewise.context.Section] objects. Each section
has a kind (query, retrieved, stage output, summary, instruction), the stage that produced it, its
content, its token count and its lineage (the ids of the sections it was derived from).
Sections are addressed as `"<source>.<name>"` (`"input.query"`, `"retrieve.passages"`,
`"analyze.entities"`), so a stage asks for exactly the sections it needs; a pattern may
end in `*` (`"retrieve.*"`) to take every section of a source.

The record is append-only: transforms (compress, filter, merge) add new sections that
point back at their inputs, so the full context stays available for `expand` and for
tracing a final output back to the inputs that produced it.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field, replace
from typing import Literal

from stagewise.errors import ProgramError

SectionKind = Literal["query", "retrieved", "stage_output", "summary", "instruction"]
INPUT = "input"  # the source name of the request's own inputs


class MissingSectionError(ProgramError, LookupError):
    """A stage asked for a section that no earlier stage produced."""

    def __init__(self, stage: str, wanted: str, available: list[str]):
        self.stage, self.wanted = stage, wanted
        super().__init__(
            f"stage {stage!r} needs section {wanted!r}, which no earlier stage produced "
            f"(available: {', '.join(available) or 'none'})"
        )

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Section:
    """One piece of context. `id` is `"<source>.<name>"`; `tokens` is counted at creation."""

    name: str
    kind: SectionKind
    source: str
    content: str
    tokens: int
    lineage: tuple[str, ...] = ()
    note: str | None = None  # what a transform did to it ("compressed 812 -> 240 tokens")

    @property
    def id(self) -> str:
        """The section's id, `"<source>.<name>"`."""
        return f"{self.source}.{self.name}"

    def derive(self, **changes) -> Section:
        """A new section computed from this one (its lineage points back here)."""
        lineage = changes.pop("lineage", (self.id,))
        return replace(self, lineage=lineage, **changes)


@dataclass
class Context:
    """All sections of one request, in the order they were added. Thread-safe for fan-out."""

    sections: dict[str, Section] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, section: Section) -> Section:
        """Add a section; one with the same id replaces it (a stage that runs again in a request)."""
        with self._lock:
            self.sections[section.id] = section
        return section

    def __contains__(self, section_id: str) -> bool:
        return section_id in self.sections

    def __getitem__(self, section_id: str) -> Section:
        return self.sections[section_id]

    def ids(self) -> list[str]:
        """Every section's id, in the order the sections were added."""
        return list(self.sections)

    def select(self, patterns: list[str] | tuple[str, ...], *, stage: str) -> list[Section]:
        """The sections matching `patterns` (ids, or `source.*`), in pattern order.

        A pattern that matches nothing is an error naming the stage that asked.
        """
        chosen: dict[str, Section] = {}
        with self._lock:
            available = list(self.sections)
            for pattern in patterns:
                # A stage's budget-fitted copies (source `<stage>~budget`) are its own: a wildcard
                # (`*.passage`) never picks them up for another stage, or for a retry of the same one.
                matches = [i for i in available if fnmatch.fnmatchcase(i, pattern)
                           and ("~" not in i.split(".", 1)[0] or "~" in pattern)] if "*" in pattern else (
                    [pattern] if pattern in self.sections else [])
                if not matches:
                    raise MissingSectionError(stage, pattern, available)
                for section_id in matches:
                    chosen.setdefault(section_id, self.sections[section_id])
        return list(chosen.values())

    def lineage(self, section_id: str) -> list[Section]:
        """Every section `section_id` was derived from, directly or not, nearest first."""
        seen: dict[str, Section] = {}
        frontier = [section_id]
        while frontier:
            current = self.sections.get(frontier.pop(0))
            if current is None:
                continue
            for parent in current.lineage:
                if parent not in seen and parent in self.sections:
                    seen[parent] = self.sections[parent]
                    frontier.append(parent)
        return list(seen.values())

    def copy(self) -> Context:
        """A new context holding the same sections (the sections themselves are shared)."""
        with self._lock:
            return Context(dict(self.sections))
