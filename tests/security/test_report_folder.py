"""``gate report DIR`` reads a folder that anyone may have handed over: links to secrets are never
followed, sizes are bounded, malformed parts are one error line, and an attestation is shown only for
the report.json it signs."""

import base64
import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory, mri):
    import gate

    root = tmp_path_factory.mktemp("report")
    policy = write_policy(root / "p.yaml", mri["train"], mri["holdout"], params=CHEAP_MEMORIZATION)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        gate.validate(policy, samples=mri["copies"], out=root / "out")
    finally:
        os.chdir(cwd)
    return root / "out"


def _copy(report_folder, tmp_path):
    folder = tmp_path / "handed-over"
    shutil.copytree(report_folder, folder)
    return folder


def _render(folder, *extra):
    return runner.invoke(app, ["report", str(folder), *map(str, extra)])


def test_a_figure_linked_to_a_secret_is_never_embedded(report_folder, tmp_path):
    folder = _copy(report_folder, tmp_path)
    secret = tmp_path / "gate-signing.key"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n-----PRIVATE KEY-----")
    index = json.loads((folder / "figures" / "index.json").read_text())
    assert index, "the validation wrote no figure"
    target = folder / "figures" / index[0]["file"]
    target.unlink()
    target.symlink_to(secret)
    res = _render(folder, "--out", tmp_path / "again")
    assert res.exit_code == 2 and ("cannot read" in res.output or "not a plain file" in res.output), res.output
    assert not (tmp_path / "again" / "report.html").exists()  # nothing rendered, so nothing of the key


def test_an_endless_or_malformed_part_is_one_error_line(report_folder, tmp_path):
    folder = _copy(report_folder, tmp_path)
    (folder / "report.json").unlink()
    (folder / "report.json").symlink_to("/dev/zero")  # its size says 0; reading it never ends
    res = _render(folder)
    assert res.exit_code == 2 and res.output.startswith("gate: error:") and len(res.output.splitlines()) == 1

    folder = _copy(report_folder, tmp_path / "b")
    (folder / "figures" / "index.json").write_text('{"not": "a list"}')
    res = _render(folder)
    assert res.exit_code == 2 and "not a figure index" in res.output, res.output

    folder = _copy(report_folder, tmp_path / "c")
    (folder / "figures" / "index.json").write_text(json.dumps(
        [{"check": "memorization", "file": "../../report.json", "title": "x"}]))  # out of the folder: name only
    res = _render(folder)
    assert res.exit_code == 2, res.output


def test_an_attestation_is_shown_only_for_the_report_it_signs(report_folder, tmp_path):
    from pypdf import PdfReader

    folder = _copy(report_folder, tmp_path)
    statement = {"subject": [{"name": "models:/x/1", "digest": {"sha256": "0" * 64}}],
                 "predicate": {"report_sha256": "f" * 64, "issued_at": "2026-12-01T00:00:00+00:00"}}
    envelope = {"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                "payloadType": "application/vnd.in-toto+json", "signatures": [{"keyid": "k", "sig": "AA=="}]}
    (folder / "attestation.dsse.json").write_text(json.dumps(envelope))
    res = _render(folder)
    assert res.exit_code == 0, res.output
    text = " ".join(page.extract_text() for page in PdfReader(folder / "report.pdf").pages)
    assert "Not signed" in " ".join(text.split()) and "f" * 64 not in text
