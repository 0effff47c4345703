"""Recording a validation in MLflow: a run in experiment ``gate`` holding the reports, and tags on the
model version. Promotion (setting an alias) lives here too and happens only on a pass."""

from __future__ import annotations

from pathlib import Path

from gate.registry import ModelRef, client_for, default_artifact_root
from gate.report import Report

EXPERIMENT = "gate"


def start_validation_run(ref: ModelRef, tracking_uri: str, policy_name: str) -> str:
    client = client_for(tracking_uri)
    run = client.create_run(validation_experiment_id(client, tracking_uri), run_name=f"validate-{ref.name}-v{ref.version}",
                            tags={"gate.model": ref.name, "gate.version": ref.version, "gate.policy": policy_name})
    return run.info.run_id


def validation_experiment_id(client, tracking_uri: str, name: str = EXPERIMENT) -> str:
    """The ``gate`` experiment's id, creating it once even when validations start at the same moment
    (``gate serve`` runs several): the loser of the race reads the winner's."""
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    root = default_artifact_root(tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=root and root + "/" + name)
    except Exception:  # noqa: BLE001 - RESOURCE_ALREADY_EXISTS, or a unique-constraint error from the store
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def finish_validation_run(ref: ModelRef, tracking_uri: str, run_id: str, report: Report, report_sha256: str,
                          out_dir: Path, attestation: str | None = None) -> None:
    """Log the run and tag the version. ``attestation`` (a compact DSSE envelope) becomes the version's
    ``gate.attestation`` tag; without one, an older attestation is removed, so that the tag always
    speaks of the latest validation."""
    from mlflow.entities import Metric, RunTag

    client = client_for(tracking_uri)
    import time

    ts = int(time.time() * 1000)
    metrics = [Metric(f"{c.id}.{k}", float(v), ts, 0) for c in report.checks for k, v in c.metrics.items()
               if v is not None]
    tags = [RunTag("gate.verdict", report.verdict), RunTag("gate.report_sha256", report_sha256)]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_artifacts(run_id, str(out_dir), artifact_path="gate")
    client.set_terminated(run_id, "FINISHED" if report.verdict != "error" else "FAILED")
    policy = f"{report.provenance.policy_name}@sha256:{report.provenance.policy_sha256[:12]}"
    for key, value in (("gate.verdict", report.verdict), ("gate.report_sha256", report_sha256),
                       ("gate.run_id", run_id), ("gate.policy", policy)):
        client.set_model_version_tag(ref.name, ref.version, key, value)
    if attestation is not None:
        client.set_model_version_tag(ref.name, ref.version, "gate.attestation", attestation)
    elif "gate.attestation" in (client.get_model_version(ref.name, ref.version).tags or {}):
        client.delete_model_version_tag(ref.name, ref.version, "gate.attestation")


def abandon_validation_run(ref: ModelRef, tracking_uri: str, run_id: str) -> None:
    """Best effort after a crash: the run is FAILED and the version tagged ``error``."""
    client = client_for(tracking_uri)
    try:
        client.set_tag(run_id, "gate.verdict", "error")
        client.set_terminated(run_id, "FAILED")
        client.set_model_version_tag(ref.name, ref.version, "gate.verdict", "error")
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def champion_record(ref: ModelRef, tracking_uri: str, alias: str) -> tuple[str, dict[str, float]] | None:
    """The version that holds ``alias`` and the metrics of its last validation, when that validation passed
    (None: the alias is free, or its holder has no passing validation to defend)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    try:
        held = client.get_model_version_by_alias(ref.name, alias)
    except MlflowException:
        return None
    tags = held.tags or {}
    run_id = tags.get("gate.run_id")
    if tags.get("gate.verdict") != "pass" or not run_id:
        return None
    try:
        metrics = client.get_run(str(run_id)).data.metrics
    except MlflowException:
        return None
    return str(held.version), {str(k): float(v) for k, v in metrics.items()}


def promote(ref: ModelRef, tracking_uri: str, alias: str) -> str | None:
    """Point ``alias`` at this version; returns the version that held it before (None: it was free)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    try:
        previous = str(client.get_model_version_by_alias(ref.name, alias).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(ref.name, alias, ref.version)
    return previous
