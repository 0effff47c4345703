"""Attesting a validation and verifying an attestation against the registry or a report folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from pathlib import Path

from gate import attestation as A
from gate.registry import ModelRef, client_for
from gate.report import Report

ENVELOPE_FILE = "attestation.dsse.json"


def model_artifacts_sha256(ref: ModelRef, tracking_uri: str) -> str:
    """sha256 over the files of the version's model artifacts, as the registry serves them now."""
    import mlflow

    uri = client_for(tracking_uri).get_model_version_download_uri(ref.name, ref.version)
    with tempfile.TemporaryDirectory(prefix="gate-artifacts-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
        return A.artifacts_digest(Path(local))


def attest_validation(ref: ModelRef, tracking_uri: str, report: Report, report_sha256: str, run_id: str | None,
                      out_dir: Path, key_path: Path) -> str:
    """Sign the result, write ``attestation.dsse.json`` beside the report, return the compact envelope."""
    from gate import __version__

    key = A.load_private_key(key_path)
    predicate = {"verdict": report.verdict, "report_sha256": report_sha256,
                 "policy_name": report.provenance.policy_name, "policy_sha256": report.provenance.policy_sha256,
                 "mlflow_run_id": run_id, "model_source": ref.source, "gate_version": __version__,
                 "issued_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    statement = A.make_statement(ref.version_uri, model_artifacts_sha256(ref, tracking_uri), predicate)
    compact = json.dumps(A.sign(statement, key), separators=(",", ":"))
    tmp = out_dir / f".{ENVELOPE_FILE}.tmp"
    tmp.write_text(compact + "\n", encoding="utf-8")
    tmp.replace(out_dir / ENVELOPE_FILE)
    from gate.render.pdf import write_pdf

    write_pdf(report, out_dir, compact)  # the compliance PDF gains its signature section
    return compact


def verify_model_version(ref: ModelRef, tracking_uri: str, public_key,
                         max_age: dt.timedelta | None = None) -> dict:
    """Check the version's ``gate.attestation`` tag: signature, subject, current artifacts, age, and the
    report logged in the validation run it names. ``public_key``: a key or the path of one."""
    import mlflow

    if isinstance(public_key, (str, Path)):
        public_key = A.load_public_key(public_key)
    client = client_for(tracking_uri)
    envelope = (client.get_model_version(ref.name, ref.version).tags or {}).get("gate.attestation")
    if not envelope:
        raise A.AttestationError(f"{ref.version_uri} has no gate attestation (never validated with a signing key)")
    statement = A.verify(envelope, public_key, subject_uri=ref.version_uri,
                         artifacts_sha256=model_artifacts_sha256(ref, tracking_uri), max_age=max_age)
    run_id = statement["predicate"].get("mlflow_run_id")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate/report.json", dst_path=tmp,
                                                       tracking_uri=tracking_uri)
        except Exception as exc:  # noqa: BLE001
            raise A.AttestationError(f"the attested report of run {run_id} cannot be read: {exc}") from None
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    A.verify(envelope, public_key, report_sha256=digest)
    return statement


def verify_report_folder(folder: Path, public_key_path: Path, subject_uri: str | None = None,
                         max_age: dt.timedelta | None = None) -> dict:
    public_key = A.load_public_key(public_key_path)
    env_path, report_path = folder / ENVELOPE_FILE, folder / "report.json"
    for p in (env_path, report_path):
        if not p.is_file():
            raise A.AttestationError(f"{p}: missing (a report folder of a signed validation holds both)")
    digest = hashlib.sha256(report_path.read_bytes()).hexdigest()
    return A.verify(env_path.read_text(encoding="utf-8"), public_key, subject_uri=subject_uri,
                    report_sha256=digest, max_age=max_age)
