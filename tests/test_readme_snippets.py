"""README.md's code blocks run as printed: each test reads its block from the README itself, so the
text and the test cannot drift apart."""

import logging
import re

import dspy
import pytest

from .conftest import ROOT

README = ROOT / "README.md"


def readme_block(marker: str, language: str = "python") -> str:
    """The one fenced ``language`` block of README.md that contains ``marker``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"README.md has {len(found)} {language} blocks containing {marker!r}"
    return found[0]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def dspy_warnings():
    """Warnings DSPy's LM client logs (its logger does not reach pytest's caplog)."""
    handler, logger = _Records(), logging.getLogger("dspy.clients.lm")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture()
def dspy_settings():
    """A snippet may dspy.configure(...): the next test gets the settings back as they were."""
    adapter, lm = dspy.settings.adapter, dspy.settings.lm
    yield
    dspy.configure(adapter=adapter, lm=lm)


@pytest.mark.local_model
def test_the_chain_snippet_answers_on_the_local_models(dspy_warnings, dspy_settings, capsys):
    namespace = {}
    exec(readme_block('Chain("support"'), namespace)
    result = namespace["result"]
    answer = result.context["generate.answer"].content
    assert answer.strip(), "generate.answer came back empty"
    assert not [m for m in dspy_warnings if "truncated" in m], dspy_warnings
    trace = result.trace
    assert [(s.stage, s.model) for s in trace.stages] == [
        ("analyze", "smollm2-135m"), ("retrieve", None), ("generate", "gemma3-270m"), ("review", "smollm2-135m")]
    assert trace["generate"].received == ("input.query", "retrieve.passage_1", "retrieve.passage_2")
    assert trace["generate"].output_tokens <= 2 * 64  # its own max_tokens (a strict retry may follow a cut one)
    assert result.verdict in ("accept", "revise", "reject")
    lineage = {section.id for section in trace.lineage("review.verdict")}
    assert {"input.query", "retrieve.passage_1", "generate.answer"} <= lineage
    assert "trace of request" in capsys.readouterr().out
