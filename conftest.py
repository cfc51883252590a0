"""Every fenced block of README.md and of docs/**/*.md runs under pytest, as printed (Sybil).

``pytest docs/tutorials/plain-dspy.md`` runs one page; ``make test`` runs them all. The rules a
page is written to:

- Each page runs in its own fresh scratch folder, the current directory of its blocks, holding
  ``data/`` and ``examples/`` (links to the repository's), so ``data/routerbench/...`` and
  ``examples/banking/study.toml`` work as printed and nothing a page writes lands in the repository.
- ```python blocks run in order, one namespace per page; the scratch folder is on ``sys.path``.
- ```sh blocks run with ``bash`` (``set -eo pipefail``) in the scratch folder, the virtualenv's
  ``bin/`` first on ``PATH``, and must exit 0. A command ending in ``&`` (a server) keeps running
  until the page ends, then is stopped; a page waits for a server as a reader would (``curl --fail
  --silent --retry 30 --retry-connrefused --retry-delay 1 http://127.0.0.1:8765/healthz``). The
  environment holds ``DATABASE_URL`` (a fresh, empty PostgreSQL database for the page) and
  ``REDIS_URL`` (the tests' Redis). Servers a page starts use ports 8765-8799.
- A block with a title is a file, written to that path in the scratch folder when the page
  reaches it: ```toml title="study.toml"```, ```python title="pipeline.py"``` (then ``from
  pipeline import ...`` works in later blocks and a study config can name ``pipeline:Drafted``).
- ```toml blocks without a title must parse; ```text, ```json and ```console blocks are output,
  shown and not run.
- ``<!-- skip: next "why" -->`` before a block that cannot run inside the tests (``make test``
  itself, ``pip install``, a hosted model that needs an API key).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sybil import Document, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SHELLS = {"sh", "bash", "shell"}
SHELL_TIMEOUT = 900  # seconds for one sh block: the slowest (a study on the local models) takes a few minutes
_INFO = re.compile(r'(?P<language>[\w+-]+)(?:[ \t]+title="(?P<title>[^"]+)")?[ \t]*$\n', re.MULTILINE)


class _Page:
    """One page's run: its scratch folder, environment and the process groups its sh blocks left running."""

    def __init__(self, document_path: str):
        self.source = Path(document_path)
        self.folder = Path(tempfile.mkdtemp(prefix=f"docs-{self.source.stem}-"))
        for shared in ("data", "examples"):
            (self.folder / shared).symlink_to(ROOT / shared)
        self.groups: list[int] = []
        self.database: tuple[str, str] | None = None
        self.environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        import dspy  # what the page may change, put back when it ends

        self.restore = (Path.cwd(), list(sys.path), {key: dspy.settings.get(key) for key in ("lm", "adapter")},
                        set(sys.modules), dict(os.environ))

    def provide_services(self, text: str) -> None:
        """``DATABASE_URL`` (a fresh database) and ``REDIS_URL`` for a page that uses them, from the tests'
        services: missing, they fail the page under ``make test`` and skip it elsewhere, saying why."""
        from tests.conftest import require_service

        if "REDIS_URL" in text:
            self.environment["REDIS_URL"] = os.environ["REDIS_URL"] = require_service("redis")
        if "DATABASE_URL" in text:
            import psycopg

            server = require_service("postgres")
            name = f"docs_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(server, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
            self.database = (server, name)
            url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
            self.environment["DATABASE_URL"] = os.environ["DATABASE_URL"] = url

    def close(self) -> None:
        for group in self.groups:  # what a page started in the background, gently first
            _signal(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(group) for group in self.groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        for group in self.groups:
            _signal(group, signal.SIGKILL)
        if self.database:
            import psycopg

            server, name = self.database
            with psycopg.connect(server, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.folder, ignore_errors=True)


def _signal(group: int, number: int) -> None:
    try:
        os.killpg(group, number)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _setup(namespace: dict) -> None:
    page = _Page(namespace["__file__"])
    try:
        page.provide_services(page.source.read_text(encoding="utf-8"))
    except BaseException:  # a missing service fails (or skips) the page: nothing of it is left behind
        page.close()
        raise
    namespace["__name__"] = "docs_" + re.sub(r"\W", "_", page.source.stem)
    namespace["__page__"] = page
    os.chdir(page.folder)
    sys.path.insert(0, str(page.folder))


def _teardown(namespace: dict) -> None:
    import dspy

    page: _Page | None = namespace.pop("__page__", None)
    if page is None:  # its setup failed and cleaned up after itself
        return
    cwd, path, settings, modules, environment = page.restore
    os.chdir(cwd)
    sys.path[:] = path
    for name in set(sys.modules) - modules:  # the page's own files (pipeline.py ...) are gone with it
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(str(page.folder)):
            del sys.modules[name]
    dspy.settings.configure(**settings)
    os.environ.clear()  # what the page exported (DATABASE_URL, MLFLOW_TRACKING_URI ...) stays with it
    os.environ.update(environment)
    page.close()


def _write_file(example) -> None:
    page: _Page = example.namespace["__page__"]
    path = page.folder / example.region.lexemes["title"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(example.parsed), encoding="utf-8")


def _run_shell(example) -> None:
    __tracebackhide__ = True  # the failure message says what ran and what it printed
    page: _Page = example.namespace["__page__"]
    number = len(page.groups) + 1
    out, err = page.folder / f".block-{number}.out", page.folder / f".block-{number}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(["bash", "-eo", "pipefail", "-c", str(example.parsed)], cwd=page.folder,
                                   env=page.environment, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        page.groups.append(process.pid)
        try:
            status = process.wait(timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal(process.pid, signal.SIGKILL)
            status = f"killed after {SHELL_TIMEOUT} s"
    printed = out.read_text(errors="replace")
    sys.stdout.write(printed)
    if status != 0:
        raise AssertionError(f"{page.source.name} line {example.line}: the sh block exited with {status}\n"
                             f"--- stdout (end) ---\n{printed[-3000:]}\n"
                             f"--- stderr (end) ---\n{err.read_text(errors='replace')[-5000:]}\n"
                             f"--- block ---\n{example.parsed}")


def _parse_toml(example) -> None:
    tomllib.loads(str(example.parsed))


class _DocumentationBlocks:
    """Fenced blocks by their info line: a title makes the block a file, otherwise python runs in the page's
    namespace, sh runs with bash, toml must parse; any other language is output, not run."""

    def __init__(self):
        self.lexer = RawFencedCodeBlockLexer(info_pattern=_INFO)
        self.python = PythonEvaluator()

    def __call__(self, document):
        for region in self.lexer(document):
            language, title = region.lexemes["language"], region.lexemes.get("title")
            if title:
                region.evaluator = _write_file
            elif language == "python":
                region.evaluator = self.python
            elif language in SHELLS:
                region.evaluator = _run_shell
            elif language == "toml":
                region.evaluator = _parse_toml
            else:
                continue
            region.parsed = region.lexemes["source"]
            yield region


class _PageDocument(Document):
    """A page whose namespace knows its file, so the page's setup can find its scratch folder's name."""

    def __init__(self, text: str, path: str):
        super().__init__(text, path)
        self.namespace["__file__"] = path


pytest_collect_file = Sybil(
    parsers=[SkipParser(), _DocumentationBlocks()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    setup=_setup, teardown=_teardown, document_types={".md": _PageDocument},
).pytest()
