"""Writes every report file of a run into ``--out`` so that a reader never sees a half-written set:
files are written into a staging folder first (the attestation and the signed PDF included) and moved
in one by one, report.json last."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Callable

from gate.engine import Outcome
from gate.errors import InputError
from gate.render.csvsafe import neutralise_formulas
from gate.render.html import render_html
from gate.render.junit import render_junit
from gate.render.markdown import render_summary
from gate.render.pdf import render_pdf
from gate.render.redact import redact
from gate.report import Report
from gate.textsafe import one_line
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
        figures = redact(outcome.figures, report.patient_images)
        _write_figures(stage, figures)
        (stage / "report.html").write_text(render_html(report, figures), encoding="utf-8")
        (stage / "junit.xml").write_text(render_junit(report), encoding="utf-8")
        (stage / "summary.md").write_text(render_summary(report), encoding="utf-8")
        body = report.model_dump_json(indent=2).encode()
        sha = hashlib.sha256(body).hexdigest()
        envelope = sign(sha) if sign else None
        if envelope:
            (stage / ENVELOPE_FILE).write_text(envelope + "\n", encoding="utf-8")
        (stage / "report.pdf").write_bytes(render_pdf(report, envelope, figures))
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
            index.append({"check": check_id, "file": name, "title": fig.title, "caption": fig.caption,
                          "shows_real_images": fig.shows_real_images})
    (stage / FIGURES_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")


MAX_REPORT_BYTES = 64 * 2**20
MAX_FIGURES = 256
MAX_FIGURE_BYTES = 16 * 2**20
MAX_FIGURES_TOTAL = 128 * 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_regular(path: Path, limit: int) -> bytes:
    """A report folder may be hostile: a regular file only (no link to a key, no FIFO, no /dev/zero),
    read to at most ``limit`` bytes whatever its size claims."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc} (a report folder holds plain files)") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{path}: not a plain file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: over the limit of {limit} bytes")
    return data


def rerender(folder: Path, out_dir: Path | None = None) -> list[str]:
    """Render report.html, report.pdf, junit.xml and summary.md again from ``folder``'s report.json (and
    its figures and attestation, when present), with this gate's templates; report.json itself, which
    an attestation signs, is never rewritten. Everything read is bounded and checked first; anything
    malformed is one InputError. Returns the files written."""
    folder, out_dir = Path(folder), Path(out_dir or folder)
    source = folder / "report.json"
    report, digest = read_report(folder)
    # the report's own policy decides what its figures may show, whatever the folder's files hold
    figures = redact(_read_figures(folder), report.patient_images)
    envelope = None
    if (folder / ENVELOPE_FILE).is_symlink() or (folder / ENVELOPE_FILE).exists():
        text = _read_regular(folder / ENVELOPE_FILE, 1 * 2**20).decode("utf-8", "replace").strip()
        # shown only when it speaks for this report.json: the digest it signs must be this file's
        if _signed_report_digest(text) == digest:
            envelope = text
    try:
        files = {"report.html": render_html(report, figures).encode(), "junit.xml": render_junit(report).encode(),
                 "summary.md": render_summary(report).encode(), "report.pdf": render_pdf(report, envelope, figures)}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InputError(f"{source}: a report this gate cannot render ({type(exc).__name__}: "
                         f"{one_line(str(exc), 200)})") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = out_dir / f".{name}.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        os.replace(tmp, out_dir / name)  # a reader sees the old file or the new one, never half of one
    return [str(out_dir / name) for name in files]


def read_report(folder: Path) -> tuple[Report, str]:
    """A folder's report.json, bounded and validated (one InputError otherwise), and its sha256."""
    source = Path(folder) / "report.json"
    body = _read_regular(source, MAX_REPORT_BYTES)
    try:
        report = Report.model_validate_json(body)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InputError(f"{source}: not a gate report: {one_line(str(exc).splitlines()[0], 200)}") from None
    return report, hashlib.sha256(body).hexdigest()


def _read_figures(folder: Path) -> dict[str, list[Figure]]:
    index_path = folder / FIGURES_INDEX
    if not (index_path.is_symlink() or index_path.exists()):
        return {}
    try:
        index = json.loads(_read_regular(index_path, 1 * 2**20))
        # an index without the flag (an older gate's, or edited) is taken to show patients: redacted if asked
        items = [(str(i["check"]), Path(str(i["file"])).name, str(i["title"]), str(i.get("caption", "")),
                  i.get("shows_real_images") is not False) for i in index]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{index_path}: not a figure index ({type(exc).__name__})") from None
    if len(items) > MAX_FIGURES:
        raise InputError(f"{index_path}: {len(items)} figures, over the limit of {MAX_FIGURES}")
    if (folder / "figures").is_symlink():
        raise InputError(f"{folder / 'figures'}: a link (a report folder holds plain files)")
    figures: dict[str, list[Figure]] = {}
    seen, total = set(), 0
    for check, name, title, caption, real in items:
        if name in seen:
            raise InputError(f"{index_path}: lists {one_line(name, 80)} twice")
        seen.add(name)
        png = _read_regular(folder / "figures" / name, MAX_FIGURE_BYTES)  # never a path out of the folder
        total += len(png)
        if not png.startswith(PNG_MAGIC) or total > MAX_FIGURES_TOTAL:
            raise InputError(f"{folder / 'figures' / one_line(name, 80)}: not a PNG, or the figures exceed "
                             f"{MAX_FIGURES_TOTAL} bytes together")
        figures.setdefault(check, []).append(Figure(title, png, caption, real))
    return figures


def _signed_report_digest(envelope: str) -> str | None:
    """The report digest an attestation's statement names (not its signature: gate verify checks that)."""
    import base64

    try:
        statement = json.loads(base64.b64decode(json.loads(envelope)["payload"], validate=True))
        return str(statement["predicate"]["report_sha256"])
    except (ValueError, KeyError, TypeError):
        return None
