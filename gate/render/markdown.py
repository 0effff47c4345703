"""summary.md: a short Markdown table for CI job summaries."""

from __future__ import annotations

from gate.report import Report

ICON = {"pass": "✅", "fail": "❌", "error": "⚠️"}


def render_summary(report: Report) -> str:
    p = report.provenance
    what = f"`models:/{p.model['name']}/{p.model['version']}`" if p.model else f"`{p.samples_dir}`"
    lines = [f"## gate: {ICON[report.verdict]} {report.verdict.upper()}", "",
             f"{what} against policy `{p.policy_name}` (mode {report.mode}). {report.summary}.", "",
             "| | check | metric | value | bound | severity |", "|---|---|---|---|---|---|"]
    for c in report.checks:
        if c.status == "error":
            lines.append(f"| ⚠️ | `{c.id}` | — | error | {c.error} | block |")
        for o in c.rules:
            value = "NaN" if o.value is None else f"{o.value:.4g}"
            lines.append(f"| {'✅' if o.passed else '❌'} | `{c.id}` | `{o.metric}` | {value} | {o.condition} | {o.severity} |")
    return "\n".join(lines) + "\n"
