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
        if not envelope:  # an older run's signature does not speak for this one
            (out_dir / ENVELOPE_FILE).unlink(missing_ok=True)
        names = [p.relative_to(stage) for p in stage.rglob("*") if p.is_file()]
        for rel in sorted(names, key=lambda r: r.name == "report.json"):
            os.replace(stage / rel, out_dir / rel)
        return sha, envelope
    finally:
        shutil.rmtree(stage, ignore_errors=True)
