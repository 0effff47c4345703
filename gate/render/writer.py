"""Writes every report file of a run into ``--out`` so that a reader never sees a half-written set:
files are written into a staging folder first (the attestation and the signed PDF included) and moved
in one by one, report.json last."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from gate.engine import Outcome
from gate.render.csvsafe import neutralise_formulas
from gate.render.html import render_html
from gate.render.junit import render_junit
from gate.render.markdown import render_summary
from gate.render.pdf import render_pdf
from gate.report import Report
from gate.validators import Figure


ENVELOPE_FILE = "attestation.dsse.json"


def write_reports(outcome: Outcome, out_dir: Path, sign: Callable[[str], str] | None = None) -> tuple[str, str | None]:
    """Return the sha256 of the report.json written and, with ``sign`` (report sha256 -> compact DSSE
    envelope), the attestation, written as ``attestation.dsse.json`` with the PDF's signature section
    in the same staging step: if signing fails, nothing of this run reaches ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / f".staging-{uuid.uuid4().hex[:8]}"
    (stage / "samples").mkdir(parents=True)
    try:
        report = outcome.report
        for check_id, table in outcome.tables.items():
            # cells that a spreadsheet would run as formulas (a sample id like =HYPERLINK(...)) are neutralised
            neutralise_formulas(table).to_csv(stage / "samples" / f"{check_id}.csv", index=False, float_format="%.6g")
        if outcome.gx_evidence:
            (stage / "gx_validation.json").write_text(json.dumps(outcome.gx_evidence, indent=1, default=str))
        _write_figures(stage, outcome.figures)
        (stage / "report.html").write_text(render_html(report, outcome.figures), encoding="utf-8")
        (stage / "junit.xml").write_text(render_junit(report), encoding="utf-8")
        (stage / "summary.md").write_text(render_summary(report), encoding="utf-8")
        body = report.model_dump_json(indent=2).encode()
        sha = hashlib.sha256(body).hexdigest()
        envelope = sign(sha) if sign else None
        if envelope:
            (stage / ENVELOPE_FILE).write_text(envelope + "\n", encoding="utf-8")
        (stage / "report.pdf").write_bytes(render_pdf(report, envelope))
        (stage / "report.json").write_bytes(body)
        (out_dir / "samples").mkdir(exist_ok=True)
        (out_dir / "figures").mkdir(exist_ok=True)
        if not envelope:  # an older run's signature does not speak for this one
            (out_dir / ENVELOPE_FILE).unlink(missing_ok=True)
        names = [p.relative_to(stage) for p in stage.rglob("*") if p.is_file()]
        for rel in sorted(names, key=lambda r: r.name == "report.json"):
            os.replace(stage / rel, out_dir / rel)
        return sha, envelope
    finally:
        shutil.rmtree(stage, ignore_errors=True)


FIGURES_INDEX = "figures/index.json"


def _write_figures(stage: Path, figures: dict[str, list[Figure]]) -> None:
    """Each figure as a PNG file beside an index of titles and captions, so that ``gate report`` can
    render the HTML again from the folder alone."""
    (stage / "figures").mkdir()
    index = []
    for check_id, items in figures.items():
        for n, fig in enumerate(items):
            name = f"{hashlib.sha256(check_id.encode()).hexdigest()[:12]}-{n}.png"  # ids come from input
            (stage / "figures" / name).write_bytes(fig.png)
            index.append({"check": check_id, "file": name, "title": fig.title, "caption": fig.caption})
    (stage / FIGURES_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")


MAX_REPORT_BYTES = 64 * 2**20


def rerender(folder: Path, out_dir: Path | None = None) -> list[str]:
    """Render report.html, report.pdf, junit.xml and summary.md again from ``folder``'s report.json (and
    its figures and attestation, when present), with this gate's templates; report.json itself, which
    an attestation signs, is never rewritten. Returns the files written."""
    from gate.errors import InputError

    folder, out_dir = Path(folder), Path(out_dir or folder)
    source = folder / "report.json"
    try:
        if source.stat().st_size > MAX_REPORT_BYTES:
            raise InputError(f"{source}: {source.stat().st_size} bytes, over the limit of {MAX_REPORT_BYTES}")
        report = Report.model_validate_json(source.read_bytes())
    except OSError as exc:
        raise InputError(f"{source}: cannot read the report: {exc.strerror or exc}") from None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InputError(f"{source}: not a gate report: {str(exc).splitlines()[0][:200]}") from None
    figures: dict[str, list[Figure]] = {}
    index_path = folder / FIGURES_INDEX
    if index_path.is_file():
        for item in json.loads(index_path.read_text(encoding="utf-8")):
            png = folder / "figures" / Path(str(item["file"])).name  # never a path out of the folder
            if png.is_file():
                figures.setdefault(str(item["check"]), []).append(
                    Figure(str(item["title"]), png.read_bytes(), str(item.get("caption", ""))))
    envelope_path = folder / ENVELOPE_FILE
    envelope = envelope_path.read_text(encoding="utf-8").strip() if envelope_path.is_file() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report.html": render_html(report, figures).encode(), "junit.xml": render_junit(report).encode(),
             "summary.md": render_summary(report).encode(), "report.pdf": render_pdf(report, envelope)}
    for name, data in files.items():
        tmp = out_dir / f".{name}.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        os.replace(tmp, out_dir / name)  # a reader sees the old file or the new one, never half of one
    return [str(out_dir / name) for name in files]
