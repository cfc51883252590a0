"""One standalone HTML page per recorded run (`stagewise runs show RUN_ID --html FILE`).

The page shows the run's inputs and outputs (or its error), its steps as a timeline (each with
its model, tokens, cost, latency and notes, a bar as long as its share of the run's model time),
and the context diff of `stagewise.runtime.diff`. Inline CSS, no scripts, no external
resources: it opens anywhere, offline, and can be attached to a ticket.
"""

from __future__ import annotations

import html
import json

from stagewise.runtime.diff import _STYLE, diff_parts

__all__ = ["run_page"]

_TIMELINE_STYLE = """
.bar{background:#4a78c2;height:.8rem;min-width:2px}
.timeline td.bar-cell{width:30%}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{font-weight:600}
dd{margin:0;white-space:pre-wrap}
"""


def run_page(record: dict) -> str:
    """The page of a checkpointed run `record` (as `CheckpointStore.load` returns it)."""
    esc = html.escape
    steps = record["steps"]
    longest = max((step.get("latency_s") or 0.0 for step in steps), default=0.0) or 1.0
    total = {key: sum(step.get(key) or 0 for step in steps) for key in ("input_tokens", "output_tokens", "cost_usd",
                                                                         "latency_s", "calls")}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>stagewise run {esc(record['run_id'])}</title>"
             f"<style>{_STYLE}{_TIMELINE_STYLE}</style></head><body>",
             f"<h1>Run <code>{esc(record['run_id'])}</code> ({esc(record['status'])})</h1>",
             "<dl id='facts'>",
             f"<dt>updated</dt><dd>{esc(str(record.get('updated')))}</dd>",
             f"<dt>program</dt><dd>{esc(json.dumps(record.get('program')))}</dd>",
             *[f"<dt>input {esc(name)}</dt><dd>{esc(_shown(value))}</dd>" for name, value in record["inputs"].items()]]
    if record.get("error"):
        error = record["error"]
        parts.append(f"<dt>error</dt><dd>at {esc(str(error.get('stage')))}: {esc(str(error.get('message')))}</dd>")
    else:
        parts.extend(f"<dt>output {esc(name)}</dt><dd>{esc(_shown(value))}</dd>"
                     for name, value in (record.get("outputs") or {}).items())
    parts.append(f"<dt>totals</dt><dd id='totals'>{total['calls']} model call(s), {total['input_tokens']} tokens in, "
                 f"{total['output_tokens']} out, ${total['cost_usd']:.6f}, {total['latency_s']:.2f} s</dd></dl>")
    parts.append("<h2>Steps</h2><table class='timeline'><tr><th>step</th><th>model</th><th>tokens in</th>"
                 "<th>tokens out</th><th>$</th><th>s</th><th class='bar-cell'>time</th><th>outputs</th>"
                 "<th>notes</th></tr>")
    for step in steps:
        latency = step.get("latency_s") or 0.0
        outputs = json.dumps(step["outputs"], ensure_ascii=False, default=str)
        parts.append(
            f"<tr class='step' id='step-{esc(step['key'])}'><td><code>{esc(step['key'])}</code></td>"
            f"<td>{esc(step.get('model') or '-')}</td><td>{step.get('input_tokens', 0)}</td>"
            f"<td>{step.get('output_tokens', 0)}</td><td>{step.get('cost_usd') or 0.0:.6f}</td><td>{latency:.2f}</td>"
            f"<td class='bar-cell'><div class='bar' style='width:{100 * latency / longest:.1f}%'></div></td>"
            f"<td>{esc(outputs if len(outputs) <= 300 else outputs[:297] + '...')}</td>"
            f"<td>{esc('; '.join(step.get('notes') or []))}</td></tr>")
    parts.append("</table><h2>Context</h2>")
    parts.extend(diff_parts(record))
    parts.append("</body></html>")
    return "\n".join(parts)


def _shown(value) -> str:
    """A field's value as a person reads it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
