"""``gate compare A B``: two validations side by side, each a report folder or a registry version (its last
validation's report.json, from the run its ``gate.run_id`` tag names). The comparison itself is
:func:`gate.regression.compare`, the one ``gate promote`` records in the report."""

from __future__ import annotations

import tempfile
from pathlib import Path

from gate.errors import InputError
from gate.registry import MODEL_URI, client_for, resolve_model, resolve_tracking_uri
from gate.render.writer import read_report
from gate.report import Comparison, Report
from gate.regression import compare


def load_validation(source: str, tracking_uri: str | None) -> tuple[str, Report, str]:
    """(label, report, report sha256) of a report folder or of ``models:/NAME/VERSION`` (or ``@ALIAS``)."""
    if not MODEL_URI.match(source):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"{source}: neither a report folder nor models:/NAME/VERSION (or models:/NAME@ALIAS)")
        report, sha = read_report(folder)
        return str(folder), report, sha
    uri = resolve_tracking_uri(tracking_uri)
    ref = resolve_model(source, uri)
    tags = client_for(uri).get_model_version(ref.name, ref.version).tags or {}
    run_id = str(tags.get("gate.run_id", ""))
    if not run_id:
        raise InputError(f"{source}: version {ref.version} has never been validated by gate (no gate.run_id tag)")
    import mlflow

    with tempfile.TemporaryDirectory(prefix="gate-compare-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate/report.json",
                                                        dst_path=tmp, tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 - the run or its artifacts are gone
            raise InputError(f"{source}: cannot read the report of its validation run {run_id[:40]} "
                             f"({type(exc).__name__})") from None
        report, sha = read_report(Path(local).parent)
    if tags.get("gate.report_sha256") and tags["gate.report_sha256"] != sha:
        raise InputError(f"{source}: the report in run {run_id[:40]} is not the one the version's "
                         "gate.report_sha256 tag names (changed since the validation)")
    label = f"models:/{ref.name}/{ref.version}" + (f" ({source.split('@', 1)[1]})" if "@" in source else "")
    return label, report, sha


def compare_validations(baseline: str, candidate: str, tracking_uri: str | None) -> Comparison:
    """The candidate's metrics beside the baseline's, with the candidate's rules deciding what is better
    and what is a regression; a metric missing on one side (another policy's checks) shows as n/a."""
    label, base, base_sha = load_validation(baseline, tracking_uri)
    _, cand, _ = load_validation(candidate, tracking_uri)
    metrics = {f"{c.id}.{k}": v for c in base.checks for k, v in c.metrics.items() if v is not None}
    return compare(cand, metrics, label, base_sha)

