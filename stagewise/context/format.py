r"""Format transformation: how sections look at the point of injection into a prompt.

Each catalog model prefers one of three formats (`ModelSpec.context_format`). Every
format is lossless: `parse(render(sections, fmt), fmt)` gives back each section's
`(id, kind, content)` exactly, whatever the content holds (markup characters, `#`
lines, colons, blank lines, unicode, the empty string).

`xml`
    `<context>` holding one `<section id="input.query" kind="query">...</section>`
    per section, content XML-escaped (`\r` as `&#13;` so parsers do not fold it
    into `\n`). XML 1.0 cannot carry most C0 control characters, even escaped, so a
    content holding one is refused with a ValueError naming the section.

`markdown`
    A `### <id> (<kind>)` heading, then the content in a backtick fence one longer
    than the longest backtick run inside it (at least three), the CommonMark rule:
    nothing in the content can close the fence early, and `#` lines inside it are
    not headings. Sections are separated by a blank line.

`plain`
    For small models: `<label>: <content>`, one section per unindented line, with
    every further line of the content indented by two spaces (so no content line can
    pass for a label). The label is the section id followed by `(<kind>)`, shortened
    by two lossless rules: the `input.` source is dropped (`query` means
    `input.query`: every id has a dot, so a label without one can only be an input),
    and `(<kind>)` is dropped when the kind equals the part of the id after its first
    dot (the section name). So the request's query renders as
    `query: What is my balance?` and retrieved passages as
    `retrieve.passages (retrieved): ...`.

In the markdown and plain formats the id is part of a one-line label, so an id holding
whitespace, parentheses or a colon is refused (ValueError naming the section); the ids
stages produce (`source.name`, `name~compressed`) never do.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Literal, get_args
from xml.sax.saxutils import escape, quoteattr

from stagewise.context.record import INPUT, Section

ContextFormat = Literal["xml", "markdown", "plain"]  # a model's preferred format (ModelSpec.context_format)
FORMATS: tuple[str, ...] = get_args(ContextFormat)

# Characters XML 1.0 cannot represent at all, not even as character references.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_LABEL_ID = re.compile(r"[^\s():]+")
_MD_HEADING = re.compile(r"### (?P<id>[^\s():]+) \((?P<kind>[^\s():]+)\)")
_MD_FENCE = re.compile(r"`{3,}")
_PLAIN_LABEL = re.compile(r"(?P<id>[^\s():]+)(?: \((?P<kind>[^\s():]+)\))?:(?P<rest>.*)")
_PLAIN_INDENT = "  "


def render(sections: list[Section], fmt: ContextFormat) -> str:
    """The sections as prompt text in format `fmt` (`"xml"`, `"markdown"` or `"plain"`).

    Examples:
        >>> from stagewise.context import Section, render
        >>> query = Section(name="query", kind="query", source="input", content="Where is my card?", tokens=6)
        >>> print(render([query], "xml"))
        <context>
        <section id="input.query" kind="query">Where is my card?</section>
        </context>
        >>> print(render([query], "plain"))
        query: Where is my card?
    """
    if fmt == "xml":
        return _render_xml(sections)
    if fmt == "markdown":
        return "\n\n".join(_render_markdown(s) for s in sections)
    if fmt == "plain":
        return "\n".join(_render_plain(s) for s in sections)
    raise _unknown(fmt)


def parse(text: str, fmt: ContextFormat) -> list[tuple[str, str, str]]:
    """`(id, kind, content)` of each section in `text`, the inverse of [`render`][stagewise.context.render].

    Text that is not in the format's shape is a ValueError saying where it breaks.
    """
    if fmt == "xml":
        return _parse_xml(text)
    if fmt == "markdown":
        return _parse_markdown(text)
    if fmt == "plain":
        return _parse_plain(text)
    raise _unknown(fmt)


def _unknown(fmt: str) -> ValueError:
    return ValueError(f"unknown context format {fmt!r} (allowed: {', '.join(FORMATS)})")


def _check_label_id(section: Section, fmt: str) -> None:
    if not _LABEL_ID.fullmatch(section.id):
        raise ValueError(f"section id {section.id!r} cannot be a {fmt} label: "
                         "it must be non-empty, without whitespace, parentheses or colons")


# --- xml ---------------------------------------------------------------------------

def _render_xml(sections: list[Section]) -> str:
    parts = []
    for section in sections:
        bad = _XML_FORBIDDEN.search(section.content)
        if bad:
            raise ValueError(f"section {section.id!r} holds character U+{ord(bad.group()):04X} "
                             f"at offset {bad.start()}, which XML 1.0 cannot carry; use the markdown or plain format")
        body = escape(section.content, {"\r": "&#13;"})
        parts.append(f"<section id={quoteattr(section.id)} kind={quoteattr(section.kind)}>{body}</section>")
    return "<context>" + "".join(f"\n{p}" for p in parts) + ("\n" if parts else "") + "</context>"


def _parse_xml(text: str) -> list[tuple[str, str, str]]:
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ValueError(f"xml context is not well-formed: {exc}") from None
    if root.tag != "context":
        raise ValueError(f"xml context: root element is <{root.tag}>, expected <context>")
    if (root.text or "").strip():
        raise ValueError(f"xml context: stray text before the first section: {root.text.strip()[:40]!r}")
    out = []
    for position, element in enumerate(root, 1):
        where = f"xml context, section {position}"
        if element.tag != "section":
            raise ValueError(f"{where}: element <{element.tag}>, expected <section>")
        missing = [a for a in ("id", "kind") if a not in element.attrib]
        if missing:
            raise ValueError(f"{where}: missing attribute {', '.join(missing)}")
        if len(element):
            raise ValueError(f"{where} ({element.attrib['id']!r}): content holds markup <{element[0].tag}> "
                             "(contents must be escaped)")
        if (element.tail or "").strip():
            raise ValueError(f"{where}: stray text after the section: {element.tail.strip()[:40]!r}")
        out.append((element.attrib["id"], element.attrib["kind"], element.text or ""))
    return out


# --- markdown ----------------------------------------------------------------------

def _render_markdown(section: Section) -> str:
    _check_label_id(section, "markdown")
    longest_run = max((len(run) for run in re.findall(r"`+", section.content)), default=0)
    fence = "`" * max(3, longest_run + 1)
    return f"### {section.id} ({section.kind})\n{fence}\n{section.content}\n{fence}"


def _parse_markdown(text: str) -> list[tuple[str, str, str]]:
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines separate sections
            i += 1
            continue
        heading = _MD_HEADING.fullmatch(lines[i])
        if not heading:
            raise ValueError(f"markdown context, line {i + 1}: expected a '### <id> (<kind>)' heading, "
                             f"got {lines[i][:60]!r}")
        if i + 1 >= len(lines) or not _MD_FENCE.fullmatch(lines[i + 1]):
            raise ValueError(f"markdown context, line {i + 2}: section {heading['id']!r} has no opening "
                             "``` fence after its heading")
        fence = lines[i + 1]
        try:
            close = lines.index(fence, i + 2)
        except ValueError:
            raise ValueError(f"markdown context: the fence of section {heading['id']!r} "
                             f"(line {i + 2}) is never closed") from None
        out.append((heading["id"], heading["kind"], "\n".join(lines[i + 2:close])))
        i = close + 1
    return out


# --- plain -------------------------------------------------------------------------

def _render_plain(section: Section) -> str:
    _check_label_id(section, "plain")
    # Both shortenings are decided on the id alone, exactly as _parse_plain undoes them.
    label = section.id
    source, name = label.split(".", 1)
    if source == INPUT and "." not in name:
        label = name
    if section.kind != name:
        label += f" ({section.kind})"
    first, *rest = section.content.split("\n")
    head = f"{label}: {first}" if first else f"{label}:"
    return "\n".join([head, *(_PLAIN_INDENT + line for line in rest)])


def _parse_plain(text: str) -> list[tuple[str, str, str]]:
    if not text:
        return []
    out: list[tuple[str, str, list[str]]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith(_PLAIN_INDENT) or not line:
            # An empty line is an indented empty line whose indent was stripped
            # (editors and chat front ends trim trailing whitespace).
            if not out:
                raise ValueError(f"plain context, line {number}: indented text before the first label")
            out[-1][2].append(line[len(_PLAIN_INDENT):])
            continue
        label = _PLAIN_LABEL.fullmatch(line)
        if not label:
            raise ValueError(f"plain context, line {number}: expected '<label>: <content>', got {line[:60]!r}")
        rest = label["rest"]
        if rest and not rest.startswith(" "):
            raise ValueError(f"plain context, line {number}: expected a space after the colon of "
                             f"{label['id']!r}, got {line[:60]!r}")
        section_id = label["id"] if "." in label["id"] else f"{INPUT}.{label['id']}"
        kind = label["kind"] or section_id.split(".", 1)[1]
        out.append((section_id, kind, [rest[1:]]))
    return [(section_id, kind, "\n".join(lines)) for section_id, kind, lines in out]
