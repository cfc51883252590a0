"""What the documentation's blocks do, beyond running (every block of README.md and docs/ runs under the
root conftest.py): each test reads its block from the page itself, by what the block says, so the text and
the test cannot drift apart; and the README's and pages' references lead somewhere."""

import re

import dspy
import pytest

from .conftest import ROOT, logged_warnings
from .documentation import doc_block

README = ROOT / "README.md"


readme_block = doc_block  # the block may be on a page of docs/ as well as in the README


@pytest.fixture()
def dspy_warnings():
    """Warnings DSPy's LM client logs (its logger does not reach pytest's caplog)."""
    with logged_warnings("dspy.clients.lm") as messages:
        yield messages


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


@pytest.mark.local_model
def test_the_runtime_snippet_checkpoints_resumes_diffs_traces_and_records_to_redis(tmp_path, monkeypatch,
                                                                                   dspy_settings, capsys):
    """The tutorial's blocks (docs/tutorials/trace-diff-replay.md), in its order: the program's file, its
    export, the checkpointed run and resume, then the traced call recorded to Redis."""
    import shlex

    from typer.testing import CliRunner

    from stagewise.cli import app
    from stagewise.runtime import open_checkpoints, open_context_store

    from .conftest import require_service

    redis = require_service("redis")
    monkeypatch.setenv("REDIS_URL", redis)
    monkeypatch.delenv("STAGEWISE_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "bank_support", raising=False)
    (tmp_path / "bank_support.py").write_text(readme_block("class PaymentIntent(dspy.Signature)"))

    namespace = {}
    exec(readme_block('stagewise.export(program, "runs/support"'), namespace)
    exec(readme_block("resume(prediction.run_id"), namespace)
    printed = capsys.readouterr().out
    run_id = namespace["prediction"].run_id
    record = open_checkpoints("sqlite:///runs.db").load(run_id)
    best = tmp_path / "runs" / "support"
    assert record["status"] == "completed" and record["program"] == {"export": str(best.resolve())}
    stages = [step["stage"] for step in record["steps"] if step.get("kind", "stage") == "stage"]
    assert stages[0] == "route" and stages[1:] in (["cards"], ["payments"])
    [routed] = [step for step in record["steps"] if step.get("kind") == "route"]  # the router's decision, a step
    assert routed["stage"] == "support" and routed["decision"]["route"] == stages[1]

    # The command the snippet prints finds the run, in the store the snippet wrote.
    [command] = [line for line in printed.splitlines() if line.startswith("stagewise diff ")]
    diffed = CliRunner().invoke(app, shlex.split(command)[1:])
    assert diffed.exit_code == 0, diffed.output
    assert "route" in diffed.output and stages[1] in diffed.output
    assert not (tmp_path / "stagewise-runs.db").exists()

    # The traced call: a span per model call on the console, and every section it added in Redis.
    exec(readme_block("ContextRecorder(store)"), namespace)
    printed = capsys.readouterr().out
    assert '"name": "chat smollm2-135m"' in printed
    request = namespace["reply"].trace.request_id
    entries = open_context_store(redis).entries(request)
    assert {entry["stage"] for entry in entries} >= {"route"} and len(entries) >= 2
    assert "route route.area" in printed


def test_diff_of_an_unknown_run_in_a_store_that_does_not_exist_is_one_line_and_creates_nothing(tmp_path,
                                                                                              monkeypatch):
    from typer.testing import CliRunner

    from stagewise.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STAGEWISE_RUNS", raising=False)
    for arguments in (["diff", "0123abcd"], ["diff", "0123abcd", "--store", "sqlite:///runs.db"],
                      ["replay", "0123abcd", "--stage", "route"]):
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("error: no run '0123abcd': the checkpoint store sqlite:///") and "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_the_readmes_links_name_files_of_the_repository():
    """The README is read on the repository's page, outside the site's strict build: each relative link
    names a file or folder of the repository."""
    links = re.findall(r"\]\(([^)#]+)[^)]*\)", README.read_text(encoding="utf-8"))
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links into the documentation"
    assert [link for link in relative if not (ROOT / link).exists()] == []


def test_references_are_links_not_directions():
    """A reference to another part of the documentation is a link (checked by mkdocs --strict and the test
    above), never "see above" or "see below", which pointed the wrong way when sections moved."""
    from .documentation import PAGES

    found = [f"{page.relative_to(ROOT)}: {match.group(0)!r}" for page in PAGES
             for match in re.finditer(r'see (?:"[^"]+" )?(?:above|below)', page.read_text(encoding="utf-8"))]
    assert found == []
