"""The documentation's text as tests read it: README.md and every page of docs/. A test that checks a
block or a sentence names what it looks for, not the page it is on, so a section can move between the
README and the site without the test losing it."""

import re

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_blocks(text: str, language: str = "python") -> list[str]:
    """The fenced ``language`` blocks of ``text`` (info strings such as ``toml title="x.toml"`` count)."""
    return re.findall(rf"^```{language}(?:[ \t][^\n]*)?\n(.*?)^```$", text, flags=re.S | re.M)


def doc_block(marker: str, language: str = "python") -> str:
    """The one fenced ``language`` block, in the README or any page of docs/, that contains ``marker``."""
    found = [(page, block) for page in PAGES for block in fenced_blocks(page.read_text(encoding="utf-8"), language)
             if marker in block]
    assert len(found) == 1, (f"the documentation has {len(found)} {language} blocks containing {marker!r}"
                             f"{': ' if found else ''}{', '.join(str(p.relative_to(ROOT)) for p, _ in found)}")
    return found[0][1]


def doc_text() -> str:
    """The README and every page of docs/, one after the other."""
    return "\n\n".join(page.read_text(encoding="utf-8") for page in PAGES)
