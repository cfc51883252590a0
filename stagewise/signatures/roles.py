"""Typed signatures for the stage roles stagewise's programs use.

Each docstring is the instruction the model receives. Users write their own signatures the
same way; the programs take any signature and never assume these.
"""

from __future__ import annotations

from typing import Literal

import dspy
from pydantic import BaseModel, Field


class QueryAnalysis(dspy.Signature):
    """Analyze the user's request before anyone answers it: say what kind of request it is,
    list the named things it mentions (people, products, amounts, dates), and pick the output
    format the answer should take."""

    query: str = dspy.InputField()
    category: str = dspy.OutputField(desc="a short label for the kind of request")
    entities: list[str] = dspy.OutputField(desc="named things mentioned in the query, verbatim")
    output_format: Literal["short answer", "list", "paragraph", "steps"] = dspy.OutputField()


class RoutingDecision(dspy.Signature):
    """Choose the one route best suited to answer the query. Answer with a route name from the
    list exactly as written, and how sure you are (0 to 1)."""

    query: str = dspy.InputField()
    routes: str = dspy.InputField(desc="the available routes, one per line: name: what it handles")
    route: str = dspy.OutputField()
    confidence: float = dspy.OutputField(desc="between 0 and 1")


class SpecialistAnswer(dspy.Signature):
    """Answer the query using only the context given. If the context does not contain the
    answer, say so plainly instead of guessing."""

    query: str = dspy.InputField()
    context: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Summarize(dspy.Signature):
    """Compress the text, keeping every fact needed to answer questions about it: names,
    numbers, decisions and their reasons. Drop repetition and filler. Stay under the word limit."""

    text: str = dspy.InputField()
    max_words: int = dspy.InputField()
    summary: str = dspy.OutputField()


class Review(dspy.Signature):
    """Review an answer before it reaches the user. You see the original query, a summary of
    the context the answer was built from, and the full answer. Check that the answer addresses
    the query, is supported by the context, and contains no contradictions. List each problem
    found; score the answer from 0 (unusable) to 1 (ready to send)."""

    query: str = dspy.InputField()
    context_summary: str = dspy.InputField()
    output: str = dspy.InputField()
    verdict: Literal["accept", "revise", "reject"] = dspy.OutputField()
    issues: list[str] = dspy.OutputField(desc="one entry per problem; empty if none")
    score: float = dspy.OutputField(desc="between 0 and 1")


class SubTask(BaseModel):
    specialist: str = Field(description="the name of the specialist who will do it, exactly as listed")
    task: str = Field(description="what the specialist must do, self-contained")


class Plan(dspy.Signature):
    """Break the task into the fewest sub-tasks that solve it, each assigned to one of the named
    specialists by their capabilities. Respect the constraints: never plan more sub-tasks than
    the budget allows. You do not see the specialists' documents; they do."""

    query: str = dspy.InputField()
    specialists: str = dspy.InputField(desc="one per line: name: capabilities")
    constraints: str = dspy.InputField(desc="limits on time, cost, quality and number of sub-tasks")
    subtasks: list[SubTask] = dspy.OutputField()


class Synthesize(dspy.Signature):
    """Combine the specialists' results into one answer to the original query. Keep what the
    results agree on, resolve conflicts in favour of the better-supported result, and do not
    add facts that none of them gave."""

    query: str = dspy.InputField()
    results: str = dspy.InputField(desc="each specialist's sub-task and result")
    answer: str = dspy.OutputField()


class Aggregate(dspy.Signature):
    """Several independent answers to the same query are given. Produce the single best answer:
    the one most answers support, corrected where a minority is clearly right."""

    query: str = dspy.InputField()
    candidates: str = dspy.InputField(desc="the answers, one per branch")
    answer: str = dspy.OutputField()


class Verify(dspy.Signature):
    """Decide whether the answer to the query is correct and complete. Be strict: accept only
    answers you would send to the user unchanged."""

    query: str = dspy.InputField()
    answer: str = dspy.InputField()
    correct: bool = dspy.OutputField()
    confidence: float = dspy.OutputField(desc="between 0 and 1: how sure you are the answer is correct")
