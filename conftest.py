"""Every fenced block of README.md and of docs/**/*.md runs under pytest, as printed (Sybil).

``pytest docs/tutorials/plain-dspy.md`` runs one page; ``make test`` runs them all. The rules a
page is written to:

- Each page runs in its own fresh scratch folder, the current directory of its blocks, holding
  ``data/`` and ``examples/`` (links to the repository's), so ``data/routerbench/...`` and
  ``examples/banking/study.toml`` work as printed and nothing a page writes lands in the repository.
- ```python blocks run in order, one namespace per page; the scratch folder is on ``sys.path``.
- ```sh blocks run with ``bash`` (``set -eo pipefail``) in the scratch folder, the virtualenv's
  ``bin/`` first on ``PATH``, and must exit 0. A command ending in ``&`` (a server) keeps running
  until the page ends, then is stopped; a page waits for a server as a reader would (``curl
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
