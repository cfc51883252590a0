"""A griffe extension for the API reference: the docstrings' Sphinx roles as Markdown code.

The codebase's docstrings are reST-ish prose: ``:class:`Study```, ``:func:`~stagewise.load```.
Markdown has no roles, so they would show as written; this turns each into inline code of the
name (``~`` keeps only its last part, as Sphinx does), and a paragraph's closing ``::`` (reST's
literal-block marker; the indented block renders as code in Markdown too) into ``:``. Nothing else
of a docstring is changed.
"""

from __future__ import annotations

import re

import griffe

LITERAL = re.compile(r"(?<=\S)::\n")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|type):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by inline code of its target."""
    text = ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return LITERAL.sub(":\n", text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
