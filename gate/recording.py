"""Recording a validation in MLflow: a run in experiment ``gate`` holding the reports, and tags on the
model version. Promotion (setting an alias) lives here too and happens only on a pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gate.registry import ModelRef, client_for, default_artifact_root
from gate.report import Report, verdict_words

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


#: run status by verdict: a refused validation must not look like a passed one in MLflow's run list
#: (filter with ``attributes.status = 'FAILED'`` or ``tags."gate.verdict" = 'fail'``)
RUN_STATUS = {"pass": "FINISHED", "fail": "FAILED", "error": "FAILED"}
#: gate's paragraph in a version's description sits between these, so that the owner's own text is kept
DESCRIPTION_START, DESCRIPTION_END = "<!-- gate:start -->", "<!-- gate:end -->"
MAX_DESCRIPTION = 20_000


def finish_validation_run(ref: ModelRef, tracking_uri: str, run_id: str, report: Report, report_sha256: str,
                          out_dir: Path, attestation: str | None = None) -> None:
    """Log the run and tag the version. ``attestation`` (a compact DSSE envelope) becomes the version's
    ``gate.attestation`` tag; without one, an older attestation is removed, so that the tag always
    speaks of the latest validation. The version's description opens with the verdict and a summary
    linking the run and its report (what MLflow's version page shows first); the run is named, described
    and ended by the verdict, and linked to the version's logged model where it has one."""
    from mlflow.entities import Metric, RunTag

    client = client_for(tracking_uri)
    import time

    ts = int(time.time() * 1000)
    metrics = [Metric(f"{c.id}.{k}", float(v), ts, 0) for c in report.checks for k, v in c.metrics.items()
               if v is not None]
    run = client.get_run(run_id)
    link = f"#/experiments/{run.info.experiment_id}/runs/{run_id}"
    tags = [RunTag("gate.verdict", report.verdict), RunTag("gate.report_sha256", report_sha256),
            RunTag("mlflow.runName", f"{run.info.run_name or 'validate'} [{report.verdict.upper()}]"),
            RunTag("mlflow.note.content", run_note(report, ref, report_sha256, link))]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_artifacts(run_id, str(out_dir), artifact_path="gate")
    client.set_terminated(run_id, RUN_STATUS[report.verdict])
    policy = f"{report.provenance.policy_name}@sha256:{report.provenance.policy_sha256[:12]}"
    for key, value in (("gate.verdict", report.verdict), ("gate.report_sha256", report_sha256),
                       ("gate.run_id", run_id), ("gate.policy", policy)):
        client.set_model_version_tag(ref.name, ref.version, key, value)
    held = client.get_model_version(ref.name, ref.version)
    client.update_model_version(ref.name, ref.version, description=with_summary(
        held.description or "", version_summary(report, report_sha256, link)))
    if attestation is not None:
        client.set_model_version_tag(ref.name, ref.version, "gate.attestation", attestation)
    elif "gate.attestation" in (held.tags or {}):
        client.delete_model_version_tag(ref.name, ref.version, "gate.attestation")
    _link_model(client, run_id, ref)


def version_summary(report: Report, report_sha256: str, run_link: str) -> str:
    """One paragraph for the version's description: the verdict first, why in words, and where the
    evidence is. MLflow renders the description as markdown: names from input (the policy's, a model's)
    are escaped by :func:`gate.render.markdown.md_text`; rule names are check ids (a policy's pattern,
    ``[a-z0-9_.-]``) and metric names, bounds are numbers, so they stay readable."""
    from gate.render.markdown import md_text
    from gate.textsafe import one_line

    words = verdict_words(report)
    why = "; ".join(f"{one_line(f.rule, 80)} = {'n/a' if f.value is None else format(f.value, '.4g')} "
                    f"(needs {one_line(f.condition, 40)})" for f in report.findings[:5]) or "every blocking rule held"
    c = report.comparison
    if c is not None and c.regressions:
        why += (f"; against {md_text(c.baseline)}: " + "; ".join(one_line(r, 160) for r in c.regressions[:3])
                + (" (allowed by --allow-regression)" if c.allowed else " (a regression)"))
    p = report.provenance
    return (f"**gate: {words}.** {why}. Policy {md_text(p.policy_name)} (sha256 {p.policy_sha256[:12]}), "
            f"report sha256 {report_sha256[:12]}, {p.finished_at}. [Validation run and reports]({run_link}) "
            f"(artifacts gate/report.pdf, gate/report.html).")


def with_summary(description: str, summary: str) -> str:
    """The owner's description with gate's paragraph first, replacing the paragraph of an earlier validation."""
    kept = description
    start, end = kept.find(DESCRIPTION_START), kept.find(DESCRIPTION_END)
    if start != -1 and end > start:
        kept = kept[:start] + kept[end + len(DESCRIPTION_END):]
    kept = kept.strip()[:MAX_DESCRIPTION]
    return f"{DESCRIPTION_START}\n{summary}\n{DESCRIPTION_END}" + (f"\n\n{kept}" if kept else "")


def run_note(report: Report, ref: ModelRef, report_sha256: str, run_link: str) -> str:
    """The run's description (MLflow shows it at the top of the run page): which version, the verdict and
    a link to the version's page."""
    from urllib.parse import quote

    from gate.render.markdown import md_text

    link = f"#/models/{quote(ref.name, safe='')}/versions/{ref.version}"
    return f"Validation of [{md_text(ref.name)} version {ref.version}]({link}): " + \
        version_summary(report, report_sha256, run_link)


def _link_model(client, run_id: str, ref: ModelRef) -> None:
    """MLflow 3 links a run to a model through the version's logged model (``model_id``): logged as the
    run's input, the run page lists the model and the model's page lists the run. Versions registered
    from a plain artifact path have no logged model; the tags and the description link them instead."""
    from mlflow.entities import LoggedModelInput

    try:  # a convenience of the UI: the verdict, tags and description are already recorded
        model_id = getattr(client.get_model_version(ref.name, ref.version), "model_id", None)
        if model_id:
            client.log_inputs(run_id, datasets=None, models=[LoggedModelInput(model_id)])
    except Exception:  # noqa: BLE001 - a deleted logged model must not undo a recorded validation
        pass


def abandon_validation_run(ref: ModelRef, tracking_uri: str, run_id: str) -> None:
    """Best effort after a crash: the run is FAILED and the version tagged ``error``."""
    client = client_for(tracking_uri)
    try:
        client.set_tag(run_id, "gate.verdict", "error")
        client.set_terminated(run_id, "FAILED")
        client.set_model_version_tag(ref.name, ref.version, "gate.verdict", "error")
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The version a candidate is compared with, and its last passing validation as MLflow recorded it."""

    version: str
    label: str                  # e.g. "models:/brain-gen/1 (@champion)"
    metrics: dict[str, float]   # CHECK.METRIC -> value, from the validation run
    report_sha256: str | None


def baseline_record(ref: ModelRef, tracking_uri: str, against: str) -> Baseline | None:
    """The version named by ``against`` (an alias, with or without ``@``, or a version number) and the
    metrics of its last validation, when that validation passed (None: the alias is free, or its holder
    has no passing validation to defend)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    alias = against[1:] if against.startswith("@") else against
    try:
        held = client.get_model_version(ref.name, alias) if alias.isdigit() else \
            client.get_model_version_by_alias(ref.name, alias)
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
    label = f"models:/{ref.name}/{held.version}" + ("" if alias.isdigit() else f" (@{alias})")
    sha = tags.get("gate.report_sha256")
    return Baseline(str(held.version), label, {str(k): float(v) for k, v in metrics.items()},
                    str(sha)[:64] if sha else None)


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
