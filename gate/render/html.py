"""Self-contained HTML: inline CSS and inline PNGs, nothing fetched by the browser."""

from __future__ import annotations

import base64

import jinja2

from gate.report import Report, data_warnings, verdict_words
from gate.validators import Figure


def render_html(report: Report, figures: dict[str, list[Figure]]) -> str:
    # every value in the report may come from input (folder and model names, ids, errors): escape all of
    # it in every template, whatever its file name (select_autoescape goes by the extension)
    env = jinja2.Environment(loader=jinja2.PackageLoader("gate.render", "templates"), autoescape=True)
    env.filters["b64"] = lambda data: base64.b64encode(data).decode()
    return env.get_template("report.html.j2").render(r=report, p=report.provenance, figures=figures,
                                                     verdict_words=verdict_words(report),
                                                     data_warnings=data_warnings(report))
