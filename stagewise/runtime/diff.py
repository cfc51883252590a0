"""Context diffs of a checkpointed run: per stage, what context it added, transformed and removed.

For each stage execution of a run, from its checkpoint:

- received: the sections the stage read (with their tokens);
- transformed: sections fitted to the stage's token budget (compressed or truncated copies),
  with the tokens each saved; the original is *removed* from that stage's view;
- added: the sections the stage produced (with the tokens each cost).

`diff_text` renders it for the terminal, `diff_html` as a standalone HTML page (inline CSS,
no scripts, no external resources).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class StageDiff:
    """What one stage execution (or step) did to the context of a checkpointed run.

    It holds what the stage received (id, tokens), what was transformed to fit its budget, what it
    added (id, tokens, preview), its tokens and cost, and, for a step, its kind and decision.
    """
    key: str
    stage: str
    model: str | None
    received: list[tuple[str, int]] = field(default_factory=list)
    transformed: list[dict] = field(default_factory=list)  # {"original", "copy", "before", "after", "note"}
    added: list[tuple[str, int, str]] = field(default_factory=list)  # (id, tokens, content preview)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    kind: str = "stage"  # or a step that is not a model call: route, retrieve, fanout, cascade, plan
    decision: dict = field(default_factory=dict)  # what such a step decided, and why

    @property
    def title(self) -> str:
        """`stage answer#0 (model, tokens, cost)` or `route support#0: {"route": ...}`."""
        if self.kind == "stage":
            return (f"stage {self.key} ({self.model or 'no model'}, {self.input_tokens} in / {self.output_tokens} "
                    f"out tokens, ${self.cost_usd:.6f})")
        shown = {k: v for k, v in self.decision.items() if k != "branches"}  # branches: side by side below
        return f"{self.kind} {self.key.partition(':')[2] or self.key}: {decision_text(shown)}"

    @property
    def branches(self) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """A fan-out's branches side by side: (branch names, [(field, each branch's value)])."""
        branches = self.decision.get("branches") or {}
        names = list(branches)
        fields = list(dict.fromkeys(f for outputs in branches.values() for f in outputs))
        return names, [(f, [str(branches[b].get(f, "-")) for b in names]) for f in fields]
    restored: bool = False

    @property
    def tokens_added(self) -> int:
        """Tokens of the sections the stage added."""
        return sum(tokens for _, tokens, _ in self.added)

    @property
    def tokens_saved(self) -> int:
        """Tokens the budget transforms saved."""
        return sum(t["before"] - t["after"] for t in self.transformed)


def run_diff(record: dict) -> list[StageDiff]:
    """The per-stage context changes of a checkpointed run, in execution order."""
    tokens: dict[str, int] = {}
    for section in record.get("context", []):
        tokens[f"{section['source']}.{section['name']}"] = section["tokens"]
    diffs = []
    for step in record["steps"]:
        diff = StageDiff(step["key"], step["stage"], step.get("model"), input_tokens=step.get("input_tokens", 0),
                         output_tokens=step.get("output_tokens", 0), cost_usd=step.get("cost_usd", 0.0) or 0.0,
                         kind=step.get("kind", "stage"), decision=step.get("decision") or {})
        for section in step["sections"]:
            section_id = f"{section['source']}.{section['name']}"
            tokens[section_id] = section["tokens"]
            if section["source"].endswith("~budget"):
                original = (section.get("lineage") or [section["name"]])[0]
                diff.transformed.append({"original": original, "copy": section_id,
                                         "before": tokens.get(original, section["tokens"]),
                                         "after": section["tokens"], "note": section.get("note") or ""})
            else:
                preview = " ".join(section["content"].split())
                shown = preview[:120] + ("..." if len(preview) > 120 else "")
                diff.added.append((section_id, section["tokens"], shown))
        diff.received = [(section_id, tokens.get(section_id, 0)) for section_id in step.get("received", [])]
        diffs.append(diff)
    return diffs


def diff_text(record: dict) -> str:
    """The context diff of a checkpointed run, for the terminal.

    Per stage, what it received, transformed, removed from its view and added, and each step's branches.
    """
    diffs = run_diff(record)
    lines = [f"run {record['run_id']} ({record['status']}): {_counted(diffs)}"]
    for diff in diffs:
        lines.append(diff.title)
        for section_id, count in diff.received:
            lines.append(f"    received     {section_id} ({count} tokens)")
        for change in diff.transformed:
            saved = change["before"] - change["after"]
            lines.append(f"  ~ transformed  {change['original']} -> {change['copy']}: {change['before']} -> "
                         f"{change['after']} tokens (saved {saved}){': ' + change['note'] if change['note'] else ''}")
            lines.append(f"  - removed      {change['original']} from this stage's view (replaced by its copy)")
        for section_id, count, preview in diff.added:
            lines.append(f"  + added        {section_id} (+{count} tokens): {preview}")
        names, rows = diff.branches
        if names:
            width = min(40, max(12, *(len(n) for n in names), *(len(v) for _, values in rows for v in values)))
            lines.append(f"  = branches     {' | '.join(n.ljust(width) for n in names)}")
            for field_name, values in rows:
                cells = [(v if len(v) <= width else v[:width - 3] + "...").ljust(width) for v in values]
                lines.append(f"    {field_name[:12]:<12} {' | '.join(cells)}")
    if record.get("error"):
        error = record["error"]
        lines.append(f"failed at {error.get('stage')}: {error.get('type')}: {error.get('message')}")
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
h1{font-size:1.3rem}
table{border-collapse:collapse;margin:0 0 1.5rem 0;min-width:60%}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f4}
.added td:first-child{color:#116611}
.transformed td:first-child{color:#8a5a00}
.removed td:first-child{color:#aa1111}
.received td:first-child{color:#555}
code{font-size:.85rem}
"""


def diff_html(record: dict) -> str:
    """A standalone page: one table per stage execution."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>stagewise run {esc(record['run_id'])}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Context diff of run <code>{esc(record['run_id'])}</code> ({esc(record['status'])})</h1>",
             *diff_parts(record), "</body></html>"]
    return "\n".join(parts)


def diff_parts(record: dict) -> list[str]:
    """The HTML of a run's context diff: a summary, one table per stage execution, then any error.

    It goes in a page of its own ([`diff_html`][stagewise.runtime.diff_html]) or inside another
    (`stagewise runs show --html`).
    """
    esc = html.escape
    diffs = run_diff(record)
    parts = [f"<p id='summary'>{_counted(diffs)}; {sum(d.tokens_added for d in diffs)} tokens added, "
             f"{sum(d.tokens_saved for d in diffs)} tokens saved by transforms.</p>"]
    for diff in diffs:
        head, _, detail = diff.title.partition(" (") if diff.kind == "stage" else diff.title.partition(": ")
        detail = f"({detail}" if diff.kind == "stage" else detail
        parts.append(f"<h2 id='{esc(diff.kind)}-{esc(diff.key)}'>{esc(head)} <small>{esc(detail)}</small></h2>")
        parts.append("<table><tr><th>change</th><th>section</th><th>tokens</th><th>detail</th></tr>")
        for section_id, count in diff.received:
            parts.append(f"<tr class='received'><td>received</td><td><code>{esc(section_id)}</code></td>"
                         f"<td>{count}</td><td></td></tr>")
        for change in diff.transformed:
            saved = change["before"] - change["after"]
            parts.append("<tr class='transformed'><td>transformed</td>"
                         f"<td><code>{esc(change['original'])}</code> &rarr; "
                         f"<code>{esc(change['copy'])}</code></td><td>{change['before']} &rarr; {change['after']} "
                         f"(saved {saved})</td><td>{esc(change['note'])}</td></tr>")
            parts.append(f"<tr class='removed'><td>removed</td><td><code>{esc(change['original'])}</code></td>"
                         f"<td>-{change['before']}</td><td>replaced by its copy in this stage's view</td></tr>")
        for section_id, count, preview in diff.added:
            parts.append(f"<tr class='added'><td>added</td><td><code>{esc(section_id)}</code></td><td>+{count}</td>"
                         f"<td>{esc(preview)}</td></tr>")
        parts.append("</table>")
        names, rows = diff.branches
        if names:
            parts.append("<table class='branches'><tr><th>field</th>" + "".join(
                f"<th>branch {esc(n)}</th>" for n in names) + "</tr>")
            parts.extend(f"<tr><td><code>{esc(f)}</code></td>" + "".join(f"<td>{esc(v)}</td>" for v in values)
                         + "</tr>" for f, values in rows)
            parts.append("</table>")
    if record.get("error"):
        error = record["error"]
        parts.append(f"<p id='error'>failed at {esc(str(error.get('stage')))}: {esc(str(error.get('type')))}: "
                     f"{esc(str(error.get('message')))}</p>")
    return parts


def decision_text(decision: dict) -> str:
    """A step's decision in one line: `route='cards' confidence=0.92 by=LabelRouter ...`."""
    import json

    shown = []
    for name, value in decision.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        shown.append(f"{name}={text if len(text) <= 200 else text[:197] + '...'}")
    return " ".join(shown) or "-"


def _counted(diffs: list[StageDiff]) -> str:
    """`3 stage executions` (`, 2 other steps` when routes, retrievals... were recorded too)."""
    stages = sum(1 for d in diffs if d.kind == "stage")
    others = len(diffs) - stages
    return f"{stages} stage executions" + (f", {others} other steps" if others else "")
