"""report.pdf: the compliance report a governance board reads (fpdf2, pure Python, offline).

What was validated, against which policy (its full text and digest), by which gate, validators,
libraries and extractor weights, the results with their evidence, the signature and how to check it,
and the waivers (block rules that only warned, with the reason).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from gate.report import Report
from gate.textsafe import one_line

_PLAIN = {"≤": "<=", "≥": ">=", "—": "-", "–": "-", "…": "...", "×": "x", "±": "+/-", "→": "->", "ρ": "rho",
          "√": "sqrt", "‘": "'", "’": "'", "“": '"', "”": '"', "✅": "[ok]", "❌": "[X]", "⚠": "[!]"}


def _text(s: object) -> str:
    """Core PDF fonts are Latin-1: map the usual symbols, replace the rest."""
    out = str(s)
    for a, b in _PLAIN.items():
        out = out.replace(a, b)
    return out.encode("latin-1", "replace").decode("latin-1")


def render_pdf(report: Report, attestation: str | None = None) -> bytes:
    from fpdf import FPDF

    p = report.provenance
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(title: str) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 12)
        pdf.multi_cell(width, 7, _text(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def line(label: str, value: object) -> None:
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(45, 5, _text(label))
        pdf.set_font("Helvetica", "", 9)
        # a field is one line: a folder or model name with newlines must not forge lines of the report
        pdf.multi_cell(width - 45, 5, _text(one_line(value, 4000)), new_x="LMARGIN", new_y="NEXT")

    def mono(text: str) -> None:
        pdf.set_font("Courier", "", 7)
        pdf.multi_cell(width, 3.4, _text(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(width, 9, _text(f"gate compliance report: {report.verdict.upper()}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(width, 5, _text(one_line(report.summary, 4000)), new_x="LMARGIN", new_y="NEXT")

    heading("1. What was validated")
    if p.model:
        for key in ("name", "version", "source", "run_id", "generator_mode"):
            if p.model.get(key) is not None:
                line(f"model {key}", p.model[key])
    else:
        line("samples folder", p.samples_dir)
    if p.mlflow_run_id:
        line("validation run", f"{p.mlflow_run_id} on {p.tracking_uri}")
    line("started / finished", f"{p.started_at} / {p.finished_at}")
    line("mode", f"{report.mode} (blocking: {report.blocking})")

    heading("2. Policy")
    line("name", p.policy_name)
    line("sha256", p.policy_sha256)
    line("file", p.policy_path)
    policy_file = Path(p.policy_path)
    if policy_file.is_file() and hashlib.sha256(policy_file.read_bytes()).hexdigest() == p.policy_sha256:
        mono(policy_file.read_text(encoding="utf-8"))
    else:
        pdf.multi_cell(width, 5, "The policy file has changed or moved since the run; its digest above is the "
                                 "one validated.", new_x="LMARGIN", new_y="NEXT")

    heading("3. Data, software and weights")
    for d in p.data:
        line(f"data: {d.name}", f"{d.n_images} images {'x'.join(map(str, d.shape))}, manifest sha256 {d.sha256}"
                                f" ({len(d.files)} files{', ' + d.folder if d.folder else ''})")
    line("gate", p.gate_version)
    for name, version in p.validators.items():
        line(f"validator {name}", version)
    line("libraries", ", ".join(f"{k} {v}" for k, v in sorted(p.libraries.items())))
    line("seeds", ", ".join(f"{k}={v}" for k, v in p.seeds.items()))
    for c in report.checks:
        weights = {k: v for k, v in c.provenance.items() if "sha256" in k or k in ("extractor", "backend")}
        if weights:
            line(f"{c.id} evidence", json.dumps(weights, sort_keys=True, default=str))

    heading("4. Results")
    for c in report.checks:
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(width, 6, _text(f"check {c.id} ({c.validator}): {c.status}"
                                       + (f" - {c.error}" if c.error else "")), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 8)
        for r in c.rules:
            value = "n/a" if r.value is None else f"{r.value:.4g}"
            state = "held" if r.passed else ("FAILED" if r.severity == "block" else "not met (warn)")
            where = f" (policy line {r.line})" if r.line else ""
            pdf.multi_cell(width, 4.5, _text(f"  {c.id}.{r.metric} = {value}, needs {r.condition} "
                                             f"[{r.severity}]: {state}{where}"), new_x="LMARGIN", new_y="NEXT")
        shown = {k: v for k, v in c.metrics.items() if v is not None}
        if shown:
            mono("  " + ", ".join(f"{k}={v:.4g}" for k, v in list(shown.items())[:40]))
    if report.gx_evidence:
        line("re-checked by", f"Great Expectations ({report.gx_evidence}, beside this file)")

    heading("5. Waivers")
    waived = [(c.id, r) for c in report.checks for r in c.rules if r.downgraded]
    if waived:
        for cid, r in waived:
            pdf.multi_cell(width, 4.5, _text(f"  {cid}.{r.metric}: block rule reported as a warning because "
                                             f"{r.downgraded}"), new_x="LMARGIN", new_y="NEXT")
    else:
        pdf.multi_cell(width, 5, "None: every block rule was enforced as written.", new_x="LMARGIN", new_y="NEXT")

    heading("6. Signature")
    if attestation:
        env = json.loads(attestation)
        statement = json.loads(base64.b64decode(env["payload"]))
        line("format", "in-toto Statement v1 in a DSSE envelope, Ed25519")
        line("subject", f"{statement['subject'][0]['name']} (artifacts sha256 "
                        f"{statement['subject'][0]['digest']['sha256']})")
        line("signed report sha256", statement["predicate"]["report_sha256"])
        line("key id", env["signatures"][0]["keyid"])
        line("issued", statement["predicate"]["issued_at"])
        line("how to verify", f"gate verify {statement['subject'][0]['name']} --public-key gate-signing.pub "
                              "(or gate verify <this folder> --public-key gate-signing.pub)")
    else:
        pdf.multi_cell(width, 5, "Not signed: run gate with --signing-key to attach a verifiable attestation.",
                       new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def write_pdf(report: Report, out_dir: Path, attestation: str | None = None) -> None:
    tmp = Path(out_dir) / ".report.pdf.tmp"
    tmp.write_bytes(render_pdf(report, attestation))
    tmp.replace(Path(out_dir) / "report.pdf")
