"""The documentation site (docs/, mkdocs.yml): it builds with ``mkdocs build --strict`` and its API
reference has an entry for every public name.

Every fenced block of the pages and of README.md runs through the runner in the repository's root
conftest.py (Sybil): read its docstring for the rules a page is written to (scratch folder with
data/ and examples/, python blocks in order, sh blocks with bash, titled blocks are files,
``<!-- skip: next "why" -->``). ``pytest docs/PAGE.md`` runs one page.
"""

import importlib
import re
import subprocess
import sys
import tomllib

import pytest

from .conftest import ROOT
from .documentation import fenced_blocks

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
REFERENCE = {  # page of docs/reference/ -> the package it documents
    "stagewise": "stagewise", "programs": "stagewise.programs", "optimize": "stagewise.optimize",
    "routing": "stagewise.routing", "runtime": "stagewise.runtime", "models": "stagewise.models",
    "data": "stagewise.data", "metrics": "stagewise.metrics", "context": "stagewise.context",
    "signatures": "stagewise.signatures",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as `make docs` builds it (strict: any warning fails the build)."""
    directory = tmp_path_factory.mktemp("site")
    mkdocs = ROOT / ".venv" / "bin" / "mkdocs"
    if not mkdocs.exists():
        mkdocs = type(ROOT)(sys.executable).with_name("mkdocs")
    built = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(directory)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600,
                           env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout[-4000:]}\n{built.stderr[-8000:]}"
    return directory


def test_the_site_builds_strictly_with_every_page_of_its_nav(site):
    for page in PAGES:
        relative = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if relative.name == "index" else relative / "index.html")
        assert built.exists(), f"{page.relative_to(ROOT)} was not built"
    assert (site / "get-started" / "index.html").exists()
    assert not list(site.rglob("*.py")), "the build hooks are not part of the site"


@pytest.mark.parametrize("page", sorted(REFERENCE))
def test_the_python_reference_has_every_public_name_of_the_package(site, page):
    html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([\w.]+)"', html))
    names = importlib.import_module(REFERENCE[page]).__all__
    # a name is rendered under the package, or (lazy or shadowed by a submodule) under the module defining it
    missing = [name for name in names
               if f"{REFERENCE[page]}.{name}" not in ids
               and not any(i.startswith("stagewise.") and i.endswith(f".{name}") for i in ids)]
    assert not missing, f"docs/reference/{page}.md renders no entry for {missing}"
    roles = sorted(set(re.findall(r":(?:class|func|mod|meth|attr|data|exc):", html)))
    assert not roles, f"Sphinx roles shown as written (docstrings are Google style, Markdown): {roles}"


def test_the_generated_reference_pages_hold_the_cli_the_config_keys_and_the_http_api(site):
    from stagewise.optimize.config import _StudyFile

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("stagewise optimize", "stagewise serve", "stagewise worker", "stagewise runs show"):
        assert f"<code>{command}</code>" in cli, command
    assert "Usage: stagewise optimize" in cli
    config = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    for key in _StudyFile.model_fields:
        assert f"<code>{key}</code>" in config, key
    for table in ("[search.stages.NAME]", "[search.routers.NAME]", "[privacy]", "[[metrics.stages]]"):
        assert table in config, table
    http = (site / "reference" / "http" / "index.html").read_text(encoding="utf-8")
    for endpoint in ("POST /v1/run", "GET /v1/budget", "GET /healthz"):
        assert endpoint in http, endpoint
    assert "<!-- generated" not in cli + config + http


def test_the_study_config_pages_toml_is_a_valid_config():
    from stagewise.optimize.config import _StudyFile

    (toml,) = fenced_blocks((DOCS / "reference" / "config.md").read_text(encoding="utf-8"), "toml")
    _StudyFile.model_validate(tomllib.loads(toml))


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    import yaml

    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = [str(page.relative_to(DOCS)) for page in PAGES]
    assert sorted(nav) == sorted(pages), {"not in the nav": sorted(set(pages) - set(nav)),
                                          "no such page": sorted(set(nav) - set(pages))}


@pytest.fixture(scope="module")
def served_site(site):
    """The built site over HTTP on loopback, as a reader's browser gets it (directory URLs need a server)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("path, heading", [("", "stagewise"), ("tutorials/plain-dspy/", "end to end"),
                                           ("reference/stagewise/", "JointOptimizer")])
def test_the_site_in_headless_chromium_renders_its_pages_and_every_link_inside_it_resolves(
        site, served_site, path, heading, tmp_path):
    """Chromium renders the page (its DOM after scripts ran) and a screenshot; every link of the rendered
    page that stays on the site names a page or file the build wrote."""
    from urllib.parse import urljoin, urlsplit

    from .conftest import require_service

    chromium = require_service("chromium")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,1600"]
    url = f"{served_site}/{path}"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert heading in dom, dom[:2000]
    assert "md-nav" in dom and "Get started" in dom  # the theme's navigation rendered
    broken = []
    for link in set(re.findall(r'href="([^"#]+)', dom)):
        target = urlsplit(urljoin(url, link))
        if target.netloc != urlsplit(served_site).netloc:
            continue
        file = site / target.path.lstrip("/")
        if not (file.is_file() or (file / "index.html").is_file()):
            broken.append(link)
    assert broken == [], f"{url}: links to nothing in the site: {broken}"
    screenshot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
