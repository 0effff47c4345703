"""summary.md: a short Markdown table for CI job summaries.

Every string that comes from input (a folder or model name, a check id, an error message) is escaped so
that it renders as the characters it holds: no Markdown, no raw HTML (a job summary renders ``<img>``,
``<a>`` and ``<details>``), no line break that could end the table or start a block of its own.
"""

from __future__ import annotations

import html
import re

from gate.report import Report
from gate.textsafe import one_line

ICON = {"pass": "✅", "fail": "❌", "error": "⚠️"}
_ENTITY = set("&<>")
#: what GitHub's Markdown acts on inline: emphasis, code, links and images, strikethrough, table cells,
#: emoji and autolinks (``:``), mentions, issue references, math; text never starts a line here, so the
#: block markers (``-``, ``+``, ``1.``, ``=``) stay as they are and numbers stay readable
_ACTIVE = set("\\`*_[]()!~|:@#$")


def md_text(value: object) -> str:
    """Inline text: HTML's specials as entities, the rest of what Markdown acts on backslash-escaped
    (CommonMark lets any ASCII punctuation be), control characters shown as escapes on one line
    (:func:`gate.textsafe.one_line`)."""
    return "".join(html.escape(ch) if ch in _ENTITY else "\\" + ch if ch in _ACTIVE else ch
                   for ch in one_line(value))


def md_code(value: object, in_table: bool = False) -> str:
    """A code span: nothing inside is Markdown or HTML, but a backtick would close it, so the fence is one
    longer than the longest run of backticks inside; in a table ``|`` still splits cells (GFM), so escaped."""
    text = one_line(value)
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_summary(report: Report) -> str:
    p = report.provenance
    what = md_code(f"models:/{p.model['name']}/{p.model['version']}" if p.model else p.samples_dir)
    lines = [f"## gate: {ICON[report.verdict]} {report.verdict.upper()}", "",
             f"{what} against policy {md_code(p.policy_name)} (mode {md_text(report.mode)}). "
             f"{md_text(report.summary)}.", "",
             "| | check | metric | value | bound | severity |", "|---|---|---|---|---|---|"]
    for c in report.checks:
        cid = md_code(c.id, in_table=True)
        if c.status == "error":
            lines.append(f"| ⚠️ | {cid} | — | error | {md_text(c.error)} | block |")
        for o in c.rules:
            value = "NaN" if o.value is None else f"{o.value:.4g}"
            lines.append(f"| {'✅' if o.passed else '❌'} | {cid} | {md_code(o.metric, in_table=True)} | {value} "
                         f"| {md_text(o.condition)} | {md_text(o.severity)} |")
    return "\n".join(lines) + "\n"
