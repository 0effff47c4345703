"""report.pdf: the compliance report a governance board reads and signs (fpdf2, pure Python, offline).

Laid out after the fields that FDA's guidance on AI-enabled device software functions, its guidance on
predetermined change control plans and the EU AI Act's Annex IV ask of technical documentation:

1. page 1, the decision: the verdict in words, each failed blocking rule with its value, bound, what it
   means and what to do, the model version and its immutable identity, the policy and its digest, the
   signature, and the evidence figure of the first failing check;
2. the evidence of each check (its status derived from its rules), with every figure the check drew;
3. the data: each set's manifest, counts that add up, and the independence of the sets;
4. intended use, limitations, what the metrics cannot see, the sampling plan and seeds;
5. the change against the version that holds the alias (PCCP-style impact), then waivers and signature;
appendix: the policy's full text, software, weights digests and retention.

Everything comes from the :class:`Report` (the same fields as report.json and the HTML report) and the
figures written beside it; nothing here computes a result.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

from gate.report import Report, data_warnings, verdict_words
from gate.textsafe import one_line
from gate.validators import Figure

_PLAIN = {"≤": "<=", "≥": ">=", "—": "-", "–": "-", "…": "...", "×": "x", "±": "+/-", "→": "->", "ρ": "rho",
          "√": "sqrt", "‘": "'", "’": "'", "“": '"', "”": '"', "✅": "[ok]", "❌": "[X]", "⚠": "[!]", "²": "^2"}
_COLOURS = {"pass": (46, 125, 50), "fail": (198, 40, 40), "error": (106, 27, 154), "warn": (178, 106, 0)}
MAX_FIGURE_PIXELS = 40_000_000
#: at most this many failed rules are spelled out on page 1 (the rest follow in section 2)
PAGE_ONE_FINDINGS = 4


def _text(s: object) -> str:
    """Core PDF fonts are Latin-1: map the usual symbols, replace the rest."""
    out = str(s)
    for a, b in _PLAIN.items():
        out = out.replace(a, b)
    return out.encode("latin-1", "replace").decode("latin-1")


class _Doc:
    """A thin layer over FPDF: headings, labelled lines, wrapped text, tables and figures, all through
    :func:`_text` and :func:`one_line`, so that no input text can forge a line or break the font."""

    def __init__(self) -> None:
        from fpdf import FPDF

        self.pdf = FPDF(format="A4")
        self.pdf.set_auto_page_break(True, margin=15)
        self.pdf.set_fill_color(235, 235, 235)
        self.pdf.add_page()
        self.width = self.pdf.w - self.pdf.l_margin - self.pdf.r_margin

    def heading(self, title: str, size: int = 12) -> None:
        self.pdf.ln(2)
        self.pdf.set_font("Helvetica", "B", size)
        self.pdf.multi_cell(self.width, size * 0.6, _text(one_line(title, 400)), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_font("Helvetica", "", 9)

    def line(self, label: str, value: object, bold_value: bool = False) -> None:
        self.pdf.set_font("Helvetica", "B", 9)
        self.pdf.cell(42, 5, _text(label))
        self.pdf.set_font("Helvetica", "B" if bold_value else "", 9)
        # a field is one line: a folder or model name with newlines must not forge lines of the report
        self.pdf.multi_cell(self.width - 42, 5, _text(one_line(value, 4000)), align="L", new_x="LMARGIN",
                            new_y="NEXT")
        self.pdf.set_font("Helvetica", "", 9)

    def para(self, text: str, size: float = 9, style: str = "", height: float = 4.6) -> None:
        self.pdf.set_font("Helvetica", style, size)
        # one line of input text is one paragraph: nothing in a report.json can start a line of its own
        self.pdf.multi_cell(self.width, height, _text(one_line(text, 6000)), align="L", new_x="LMARGIN",
                            new_y="NEXT")
        self.pdf.set_font("Helvetica", "", 9)

    def mono(self, text: str) -> None:
        self.pdf.set_font("Courier", "", 7)
        self.pdf.multi_cell(self.width, 3.4, _text(text), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_font("Helvetica", "", 9)

    def banner(self, text: str, colour: tuple[int, int, int]) -> None:
        self.pdf.set_fill_color(*colour)
        self.pdf.set_text_color(255, 255, 255)
        self.pdf.set_font("Helvetica", "B", 14)
        self.pdf.multi_cell(self.width, 10, _text(text), fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_text_color(0, 0, 0)
        self.pdf.set_fill_color(235, 235, 235)  # tables' heading rows use the fill colour
        self.pdf.set_font("Helvetica", "", 9)

    def status(self, text: str, outcome: str) -> None:
        self.pdf.set_text_color(*_COLOURS.get(outcome, (0, 0, 0)))
        self.heading(text, 11)
        self.pdf.set_text_color(0, 0, 0)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], widths: Sequence[float],
              size: float = 7.5) -> None:
        self.pdf.set_font("Helvetica", "", size)
        with self.pdf.table(col_widths=tuple(widths), text_align="LEFT", line_height=size * 0.5,
                            first_row_as_headings=True) as table:
            for cells in [header, *rows]:
                row = table.row()
                for cell in cells:
                    row.cell(_text(one_line(cell, 400)))
        self.pdf.set_font("Helvetica", "", 9)

    def figure(self, fig: Figure, max_height: float | None = None) -> bool:
        """Place a figure scaled to the text width (and to ``max_height`` mm); False when it does not fit
        in ``max_height`` at a legible size (at least 35 mm high)."""
        from PIL import Image

        try:  # a figure read back from a report folder may be anything that starts like a PNG
            with Image.open(io.BytesIO(fig.png)) as im:
                w_px, h_px = im.size
                if w_px * h_px > MAX_FIGURE_PIXELS:
                    raise ValueError(f"{w_px}x{h_px} pixels")
                im.load()  # decoded here, where a truncated or corrupt file is caught, not inside fpdf2
            w = self.width
            h = w * h_px / max(w_px, 1)
            if max_height is not None and h > max_height:
                if max_height < 35:
                    return False
                h, w = max_height, max_height * w_px / max(h_px, 1)
            self.pdf.set_font("Helvetica", "B", 8.5)
            self.pdf.multi_cell(self.width, 4.2, _text(one_line(fig.title, 300)), new_x="LMARGIN", new_y="NEXT")
            self.pdf.image(io.BytesIO(fig.png), x=self.pdf.l_margin + (self.width - w) / 2, w=w, h=h)
        except Exception as exc:  # noqa: BLE001 - one unreadable figure must not lose the report
            self.para(f"(figure '{one_line(fig.title, 100)}' could not be drawn: {type(exc).__name__})", size=8)
            return True
        if fig.caption:
            self.para(one_line(fig.caption, 1500), size=7.5, height=3.6)
        return True

    def room(self) -> float:
        """Millimetres left on the current page."""
        return self.pdf.h - self.pdf.b_margin - self.pdf.get_y()

    def output(self) -> bytes:
        return bytes(self.pdf.output())


def render_pdf(report: Report, attestation: str | None = None,
               figures: dict[str, list[Figure]] | None = None) -> bytes:
    figures = figures or {}
    doc = _Doc()
    statement = _statement(attestation) if attestation else None
    _decision(doc, report, statement, attestation, figures)
    _evidence(doc, report, figures)
    _data(doc, report)
    _use(doc, report)
    _change(doc, report)
    _waivers_and_signature(doc, report, attestation, statement)
    _appendix(doc, report)
    return doc.output()


def _statement(attestation: str) -> dict | None:
    """The envelope and its statement, in the shape gate writes; None for anything else (a folder's
    attestation file is input: ``gate verify`` judges it, the PDF only shows it)."""
    try:
        env = json.loads(attestation)
        statement = json.loads(base64.b64decode(env["payload"]))
        facts = {"keyid": str(env["signatures"][0]["keyid"]), "name": str(statement["subject"][0]["name"]),
                 "artifacts": str(statement["subject"][0]["digest"]["sha256"]),
                 "report": str(statement["predicate"]["report_sha256"]),
                 "issued": str(statement["predicate"]["issued_at"])}
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return facts


def _decision(doc: _Doc, report: Report, signed: dict | None, attestation: str | None,
              figures: dict[str, list[Figure]]) -> None:
    p = report.provenance
    doc.heading("gate compliance report", 16)
    doc.banner(f"{report.verdict.upper()} - {verdict_words(report)}", _COLOURS[report.verdict])
    doc.pdf.ln(1)
    if p.model:
        m = p.model
        doc.line("model version", f"models:/{m.get('name')}/{m.get('version')}", bold_value=True)
        doc.line("identity", f"artifacts sha256 {m.get('artifacts_sha256', 'n/a')}; registered "
                             f"{_when(m.get('creation_timestamp'))}; run {m.get('run_id') or 'n/a'}")
    else:
        doc.line("candidate", f"samples folder {p.samples_dir} (no registry version: nothing to promote)",
                 bold_value=True)
    doc.line("policy", f"{p.policy_name}, sha256 {p.policy_sha256}")
    doc.line("mode", f"{report.mode}; {'blocks promotion' if report.blocking else 'does not block'}")
    if signed:
        doc.line("signature", f"signed (Ed25519, key {signed['keyid']}); verify with gate verify")
    else:
        doc.line("signature", "present but not in gate's format (see section 7)" if attestation else "not signed")
    doc.line("validated", f"{p.started_at} to {p.finished_at}")

    if report.findings:
        doc.heading("Why" if report.verdict != "pass" else "Findings")
        shown = report.findings[:PAGE_ONE_FINDINGS]
        for n, f in enumerate(shown):
            value = "n/a" if f.value is None else f"{f.value:.4g}"
            doc.para(f"{f.rule} = {value}, needs {f.condition}: FAILED", size=9.5, style="B", height=5)
            doc.para(f"What this means: {f.meaning}", size=8.5, height=4.2)
            if n + 1 == len(shown) or shown[n + 1].action != f.action:  # one check's rules share its advice
                doc.para(f"What to do: {f.action}", size=8.5, height=4.2)
            doc.pdf.ln(1)
        if len(report.findings) > PAGE_ONE_FINDINGS:
            doc.para(f"... and {len(report.findings) - PAGE_ONE_FINDINGS} more, in section 2.", size=8.5)
    else:
        doc.heading("Why")
        doc.para("Every blocking rule held and every check ran to the end.")
    if report.comparison is not None:
        c = report.comparison
        worse = "; ".join(c.regressions) if c.regressions else "no regression beyond the policy's tolerances"
        doc.para(f"Against {c.baseline}: {worse}{' (allowed by --allow-regression)' if c.allowed and c.regressions else ''}.",
                 size=8.5)
    for warning in data_warnings(report):
        doc.pdf.set_text_color(*_COLOURS["warn"])
        doc.para(f"Data warning: {warning}", size=8.5, style="B")
        doc.pdf.set_text_color(0, 0, 0)
    fig = _page_one_figure(report, figures)
    if fig is not None:
        doc.pdf.ln(1)
        placed = doc.figure(fig, max_height=doc.room() - 14)
        if not placed:
            doc.para(f"Evidence: see '{one_line(fig.title, 100)}' in section 2.", size=8.5)


def _page_one_figure(report: Report, figures: dict[str, list[Figure]]) -> Figure | None:
    """The first figure of the first check that failed (its evidence: the flagged samples beside their
    nearest train images, the Dice per class), else of the first check with figures."""
    ordered = sorted(report.checks, key=lambda c: {"fail": 0, "error": 1, "warn": 2, "pass": 3}[c.outcome])
    for check in ordered:
        items = figures.get(check.id) or []
        if items:
            # a check's evidence figure is the one showing samples, when it drew one, unless the policy
            # withholds patients' images (a grey box says nothing: another of its figures does)
            if report.patient_images == "withhold":
                return next((f for f in items if not f.shows_real_images), items[0])
            return next((f for f in items if f.shows_real_images), items[0])
    return None


def _evidence(doc: _Doc, report: Report, figures: dict[str, list[Figure]]) -> None:
    doc.pdf.add_page()
    doc.heading("2. Evidence, check by check")
    if report.gx_evidence:
        doc.para(f"Every rule was re-checked by Great Expectations over the per-sample tables "
                 f"({report.gx_evidence}, beside this file).", size=8)
    for c in report.checks:
        doc.status(f"check {c.id} ({c.validator}): {c.outcome.upper()}", c.outcome)
        if c.error:
            doc.para(f"Error: {one_line(c.error, 1500)}", size=8.5)
        if c.rules:
            rows = [[r.metric, "n/a" if r.value is None else f"{r.value:.4g}", r.condition, r.severity,
                     _rule_state(r), r.line or ""] for r in c.rules]
            doc.table(["metric", "value", "needs", "severity", "result", "policy line"], rows,
                      (46, 20, 26, 16, 56, 16))
        for fig in figures.get(c.id, []):
            if doc.room() < 60:
                doc.pdf.add_page()
            doc.figure(fig, max_height=min(doc.room() - 10, 120))
        shown = [(k, v) for k, v in c.metrics.items() if v is not None]
        if shown:
            doc.para("Metrics:", size=8, style="B")
            doc.mono("  " + ", ".join(f"{k}={v:.4g}" for k, v in shown[:60]))
        for spot in c.blind_spots:
            doc.para(f"Cannot see: {spot}", size=8)


def _rule_state(rule) -> str:
    if rule.passed:
        return "held"
    if rule.severity == "block":
        return "FAILED"
    return "not met (warning)" + (f": block rule downgraded, {rule.downgraded}" if rule.downgraded else "")


def _data(doc: _Doc, report: Report) -> None:
    p = report.provenance
    doc.heading("3. Data and independence")
    rows = []
    for d in p.data:
        if d.origin == "drawn" or not d.files:
            files = "none: drawn from the model" if d.origin == "drawn" else "0"
        elif d.n_image_files + d.n_label_files == len(d.files):
            files = f"{d.n_image_files} image + {d.n_label_files} label = {len(d.files)}"
        else:  # a report from before image and label files were counted apart
            files = str(len(d.files))
        rows.append([d.name, d.folder or ("(drawn)" if d.origin == "drawn" else ""), d.n_images,
                     "x".join(map(str, d.shape)), files, d.sha256[:16]])
    doc.table(["set", "folder", "images", "shape", "files", "manifest sha256"], rows, (18, 58, 14, 16, 48, 26))
    doc.para("Images are 2D samples: a volume contributes one image per slice kept, so images and files differ "
             "for volumes; a labelled set lists one label file per image file.", size=7.5)
    ind = report.independence
    if ind is not None:
        rows = [[f"{a} / {b}", o.shared_files, o.shared_images, o.shared_subjects, ", ".join(o.examples)]
                for o in ind.pairs for a, b in [o.sets]]
        doc.table(["sets", "same files", "same images", "same subjects", "examples"], rows, (32, 20, 22, 24, 82))
        counts = ", ".join(f"{k}: {v}" for k, v in ind.subjects.items())
        doc.para(f"Same files: equal content hashes (label maps left out); same images: equal pixels (blank images "
                 f"left out); subjects: ids in file names matching {ind.subject_pattern} ({counts} found). "
                 f"Any overlap between train and holdout voids the holdout's evidence.", size=7.5)


def _use(doc: _Doc, report: Report) -> None:
    s = report.statement
    doc.heading("4. Intended use, limitations and sampling plan")
    doc.line("intended use", s.intended_use or "not stated in the policy (metadata.intended_use)")
    for item in s.limitations:
        doc.para(f"- Limitation: {one_line(item, 1000)}", size=8.5)
    if not s.limitations:
        doc.para("- No limitations stated in the policy (metadata.limitations).", size=8.5)
    for c in report.checks:
        for spot in c.blind_spots:
            doc.para(f"- {c.id} cannot see: {spot}", size=8.5)
    doc.line("sampling", ", ".join(f"{k}={v}" for k, v in s.sampling.items() if v is not None))
    doc.line("seeds", ", ".join(f"{k}={v}" for k, v in report.provenance.seeds.items()))
    doc.line("isolation", report.provenance.isolation or "none (a folder of samples: no model ran)")


def _change(doc: _Doc, report: Report) -> None:
    c = report.comparison
    doc.heading("5. Change against the current champion" if c is None or "(@" in c.baseline else
                f"5. Change against {c.baseline}")
    if c is None:
        doc.para("No comparison: no alias holder with a passing validation to compare with (or the candidate "
                 "is a folder of samples).", size=8.5)
        return
    doc.para(f"Baseline: {one_line(c.baseline, 200)}, report sha256 {c.baseline_report_sha256 or 'n/a'}. "
             f"Regression: worse than the baseline by more than the rule's regression_tolerance.", size=8.5)
    rows = [[r.metric, _num(r.candidate), _num(r.baseline), _num(r.difference), r.better or "",
             "" if r.tolerance is None else f"{r.tolerance:g}", "REGRESSION" if r.regression else ""]
            for r in sorted(c.rows, key=lambda r: (not r.regression, r.better is None, r.metric))[:80]]
    doc.table(["metric", "candidate", "baseline", "difference", "better", "tolerance", ""], rows,
              (58, 20, 20, 20, 14, 16, 26))
    if len(c.rows) > 80:
        doc.para(f"{len(c.rows) - 80} more metrics in report.json (comparison.rows).", size=7.5)


def _policy_text(path: Path, sha256: str) -> str | None:
    """The policy's text when the file still holds what was validated: read once, hashed, then shown."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    return data.decode("utf-8", "replace")


def _when(ms: object) -> str:
    """A registry timestamp (ms since the epoch) as UTC time; anything else as it is."""
    import datetime

    try:
        return datetime.datetime.fromtimestamp(int(ms) / 1000, datetime.timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ms)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _waivers_and_signature(doc: _Doc, report: Report, attestation: str | None, signed: dict | None) -> None:
    doc.heading("6. Waivers")
    waived = [(c.id, r) for c in report.checks for r in c.rules if r.downgraded]
    for cid, r in waived:
        doc.para(f"  {cid}.{r.metric}: block rule reported as a warning because {r.downgraded}", size=8)
    if not waived:
        doc.para("None: every block rule was enforced as written.", size=8.5)

    doc.heading("7. Signature")
    if signed:
        doc.line("format", "in-toto Statement v1 in a DSSE envelope, Ed25519")
        doc.line("subject", f"{signed['name']} (artifacts sha256 {signed['artifacts']})")
        doc.line("signed report sha256", signed["report"])
        doc.line("key id", signed["keyid"])
        doc.line("issued", signed["issued"])
        doc.line("how to verify", f"gate verify {signed['name']} --public-key gate-signing.pub "
                                  "(or gate verify <this folder> --public-key gate-signing.pub)")
    elif attestation:
        doc.para("An attestation file names this report but is not in gate's format; run gate verify on it.",
                 size=8.5)
    else:
        doc.para("Not signed: run gate with --signing-key to attach a verifiable attestation.", size=8.5)


def _appendix(doc: _Doc, report: Report) -> None:
    p = report.provenance
    doc.pdf.add_page()
    doc.heading("Appendix A. Policy")
    doc.line("name", p.policy_name)
    doc.line("sha256", p.policy_sha256)
    doc.line("file", p.policy_path)
    text = _policy_text(Path(p.policy_path), p.policy_sha256)
    if text is not None:
        doc.mono(text)
    else:
        doc.para("The policy file has changed or moved since the run; its digest above is the one validated.")
    doc.heading("Appendix B. Software and weights")
    doc.line("gate", p.gate_version)
    for name, version in p.validators.items():
        doc.line(f"validator {name}", version)
    doc.line("libraries", ", ".join(f"{k} {v}" for k, v in sorted(p.libraries.items())))
    for c in report.checks:
        weights = {k: v for k, v in c.provenance.items() if "sha256" in k or k in ("extractor", "backend")}
        if weights:
            doc.line(f"{c.id} weights", json.dumps(weights, sort_keys=True, default=str))
    if p.mlflow_run_id:
        doc.line("validation run", f"{p.mlflow_run_id} on {p.tracking_uri}")
    doc.heading("Appendix C. Retention")
    doc.para(report.statement.retention or
             "Not stated in the policy (metadata.retention). The reports, this PDF and the per-sample tables are "
             "kept in the report folder and, for a registry version, as artifacts of its validation run in "
             "MLflow's experiment 'gate', for as long as that store keeps them.", size=8.5)
