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


def sign_validation(tracking_uri: str, ref: ModelRef, report: Report, report_sha256: str, key_path: Path) -> str:
    """The compact DSSE envelope of a validation of ``ref``; writes no files.

    The subject is what the pipeline recorded in ``report.provenance.model``: the digest of the files
    that were actually sampled (never re-downloaded here, where a swapped copy could be hashed) and
    the version's identity. One registry read checks the version is still the one that was sampled
    (not deleted and re-created meanwhile). :class:`AttestationError` when anything is missing."""
    from gate import __version__

    model = report.provenance.model or {}
    if report.provenance.isolation != "bubblewrap":  # the pipeline refuses first; this holds for any caller
        raise A.AttestationError(f"the candidate was sampled at isolation level {report.provenance.isolation!r}, "
                                 "not 'bubblewrap': refusing to sign")
    digest = model.get("artifacts_sha256")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise A.AttestationError("the report does not record the digest of the sampled model files "
                                 "(provenance.model.artifacts_sha256): refusing to sign")
    if model.get("creation_timestamp") is None:
        raise A.AttestationError("the report does not record the version's creation timestamp "
                                 "(provenance.model.creation_timestamp): refusing to sign")
    identity = A.version_identity(model)
    if (identity["name"], identity["version"]) != (ref.name, ref.version):
        raise A.AttestationError(f"the report is about models:/{identity['name'][:80]}/{identity['version'][:20]}, "
                                 f"not {ref.version_uri}: refusing to sign")
    try:
        now_record = A.version_identity(client_for(tracking_uri).get_model_version(ref.name, ref.version))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types
        raise A.AttestationError(f"{ref.version_uri} cannot be read back from the registry "
                                 f"({type(exc).__name__}): refusing to sign") from None
    changed = [k for k in A.IDENTITY_KEYS if now_record[k] != identity[k]]
    if changed:
        raise A.AttestationError(f"{ref.version_uri} changed in the registry during validation ({changed[0]} "
                                 "differs): it is not the version that was sampled; refusing to sign")
    key = A.load_private_key(key_path)
    manifests = {m.name: m.sha256 for m in report.provenance.data}
    predicate = {"verdict": report.verdict, "report_sha256": report_sha256,
                 "policy_name": report.provenance.policy_name, "policy_sha256": report.provenance.policy_sha256,
                 "train_manifest_sha256": manifests.get("train"), "holdout_manifest_sha256": manifests.get("holdout"),
                 "data_overrides": dict(report.provenance.data_overrides), "isolation": report.provenance.isolation,
                 "mlflow_run_id": report.provenance.mlflow_run_id, "model_source": ref.source,
                 "gate_version": __version__,
                 "issued_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    statement = A.make_statement(ref.version_uri, digest, predicate, identity)
    return json.dumps(A.sign(statement, key), separators=(",", ":"))


def verify_model_version(ref: ModelRef, tracking_uri: str, trust: A.TrustPolicy) -> dict:
    """Check the version's ``gate.attestation`` tag against the trust configuration and the registry's
    record of the version (identity), re-hash its current artifacts, and check the report logged in the
    validation run it names."""
    import mlflow

    client = client_for(tracking_uri)
    record = client.get_model_version(ref.name, ref.version)
    envelope = (record.tags or {}).get("gate.attestation")
    if not envelope:
        raise A.AttestationError(f"{ref.version_uri} has no gate attestation (never validated with a signing key)")
    A.verify(envelope, trust, subject_uri=ref.version_uri, identity=A.version_identity(record))  # cheap first
    statement = A.verify(envelope, trust, subject_uri=ref.version_uri, identity=A.version_identity(record),
                         artifacts_sha256=model_artifacts_sha256(ref, tracking_uri))
    run_id = statement["predicate"].get("mlflow_run_id")
    if not isinstance(run_id, str) or not run_id.isalnum():
        raise A.AttestationError("the attestation names no validation run whose report could be checked")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate/report.json", dst_path=tmp,
                                                       tracking_uri=tracking_uri)
        except Exception as exc:  # noqa: BLE001
            raise A.AttestationError(f"the attested report of run {run_id[:40]} cannot be read "
                                     f"({type(exc).__name__})") from None
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    A.verify(envelope, trust, report_sha256=digest)
    return statement


def verify_report_folder(folder: Path, trust: A.TrustPolicy, subject_uri: str | None = None,
                         identity: dict | None = None) -> dict:
    env_path, report_path = folder / ENVELOPE_FILE, folder / "report.json"
    for p in (env_path, report_path):
        if not p.is_file():
            raise A.AttestationError(f"{p}: missing (a report folder of a signed validation holds both)")
    if env_path.stat().st_size > A.MAX_ENVELOPE_BYTES:
        raise A.AttestationError(f"{env_path}: larger than {A.MAX_ENVELOPE_BYTES} bytes, not an attestation")
    digest = hashlib.sha256(report_path.read_bytes()).hexdigest()
    return A.verify(env_path.read_text(encoding="utf-8"), trust, subject_uri=subject_uri, identity=identity,
                    report_sha256=digest)
