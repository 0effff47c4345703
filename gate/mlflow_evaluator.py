"""gate as an MLflow evaluator: ``mlflow.models.evaluate(..., model_type="image-generator", evaluators="gate")``.

Teams that already drive validation through MLflow's own API get gate's verdict there, beside their other
evaluations, without a second tool. The evaluator is a thin adapter over :func:`gate.workflow.validate`, the
same flow as ``gate validate``: gate samples the candidate itself, in its sandbox, from the registry version's
artifacts. The model object MLflow hands over is used only to find which registry version it is, never to
draw samples, and ``data`` is ignored (any data MLflow accepts will do: a one-row DataFrame).

Trust: with a model URI, MLflow itself loads (unpickles) the candidate in the caller's process before any
evaluator runs, outside gate's sandbox. For a candidate you do not trust, pass ``model=None`` and name the
version in the config::

    mlflow.models.evaluate(model=None, data=pd.DataFrame({"x": [0]}), model_type="image-generator",
                           evaluators="gate", evaluator_config={"policy": "policy.yaml",
                                                                "model": "models:/NAME/VERSION"})

(``evaluators=["gate"]`` needs the config nested as ``{"gate": {...}}``: MLflow's rule for lists.)

The evaluation run receives the gate metrics (``CHECK.METRIC``, plus ``gate.pass``), the tags
``gate.verdict``, ``gate.report_sha256``, ``gate.model_version`` and ``gate.validation_run_id``, and the
report folder under ``gate/``; gate's own validation run and the version's tags are recorded as
``gate validate`` records them. Nothing is ever promoted from here: promotion stays with ``gate promote``
and the guard. A failing or erroring verdict is a result (``gate.pass`` 0), not an exception; bad input
(a wrong config, a missing version, an unreadable policy) is one :class:`MlflowException` line.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation.base import EvaluationArtifact, EvaluationResult, ModelEvaluator
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

MODEL_TYPE = "image-generator"
CONFIG_KEYS = ("policy", "model", "out", "train", "holdout", "signing_key")
#: the report files returned as evaluation artifacts (all of the folder is logged under gate/)
REPORT_FILES = {"gate_report_json": "report.json", "gate_report_pdf": "report.pdf", "gate_report_html": "report.html"}
#: how many of the newest registry versions are compared with a loaded model that names no run or model id
MAX_VERSIONS_SCANNED = 200
ASK_FOR_MODEL = 'pass evaluator_config={"model": "models:/NAME/VERSION"}'


class ReportJsonArtifact(EvaluationArtifact):
    """report.json, as a dict. (MLflow's JsonEvaluationArtifact would import matplotlib, which the core of
    gate does not install.)"""

    def _load_content_from_file(self, local_artifact_path: str) -> dict[str, Any]:
        self._content = json.loads(Path(local_artifact_path).read_bytes())
        return self._content

    def _save(self, output_artifact_path: str) -> None:
        Path(output_artifact_path).write_text(json.dumps(self._content, indent=2), encoding="utf-8")


class ReportFileArtifact(EvaluationArtifact):
    """A rendered report (PDF, HTML) as its bytes: byte for byte the file logged in the run."""

    def _load_content_from_file(self, local_artifact_path: str) -> bytes:
        self._content = Path(local_artifact_path).read_bytes()
        return self._content

    def _save(self, output_artifact_path: str) -> None:
        Path(output_artifact_path).write_bytes(self._content)


class GateEvaluator(ModelEvaluator):
    """Registered as the ``gate`` entry point of ``mlflow.model_evaluator`` (see pyproject.toml)."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type == MODEL_TYPE

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs) -> EvaluationResult:
        from gate.errors import ExitCode, GateError
        from gate.textsafe import one_line

        cfg = _check_config(evaluator_config)
        tracking_uri = mlflow.get_tracking_uri()
        registry_uri = mlflow.get_registry_uri()
        if registry_uri != tracking_uri:  # gate resolves, downloads and tags versions at the tracking URI
            raise MlflowException(f"gate evaluator: the registry URI ({registry_uri}) differs from the tracking URI "
                                  f"({tracking_uri}); gate reads the registry at the tracking URI",
                                  INVALID_PARAMETER_VALUE)
        try:
            uri = cfg.get("model") or _version_of(model, tracking_uri, kwargs.get("model_id"))
            if cfg.get("out"):
                return _validate_and_log(cfg, uri, Path(cfg["out"]), tracking_uri, run_id)
            with tempfile.TemporaryDirectory(prefix="gate-evaluate-") as tmp:  # the run keeps the reports
                return _validate_and_log(cfg, uri, Path(tmp) / "reports", tracking_uri, run_id)
        except GateError as exc:
            code = INVALID_PARAMETER_VALUE if exc.exit_code == ExitCode.BAD_INPUT else INTERNAL_ERROR
            raise MlflowException(f"gate evaluator: {one_line(exc, 1000)}", code) from None


def _check_config(config: Any) -> dict[str, str]:
    """The config with every value a string; any unknown key is refused (a misspelt ``polcy`` must not fall
    back to something silently)."""
    config = config or {}
    if not isinstance(config, dict):
        raise MlflowException(f"gate evaluator: evaluator_config must be a dict, not {type(config).__name__}",
                              INVALID_PARAMETER_VALUE)
    unknown = sorted(map(str, set(config) - set(CONFIG_KEYS)))
    if unknown:
        raise MlflowException(f"gate evaluator: unknown evaluator_config key(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(CONFIG_KEYS)})", INVALID_PARAMETER_VALUE)
    if not config.get("policy"):
        raise MlflowException('gate evaluator: evaluator_config needs "policy": the path of a gate policy file',
                              INVALID_PARAMETER_VALUE)
    for key, value in config.items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise MlflowException(f"gate evaluator: evaluator_config[{key!r}] must be a string or a path, not "
                                  f"{type(value).__name__}", INVALID_PARAMETER_VALUE)
    return {k: os.fspath(v) for k, v in config.items() if v is not None and os.fspath(v) != ""}


def _version_of(model: Any, tracking_uri: str, model_id: str | None) -> str:
    """``models:/NAME/VERSION`` of the registered version that ``model`` (the PyFuncModel MLflow loaded) was
    loaded from: the one version whose model id, or run and MLmodel ``model_uuid``, it carries."""
    meta = getattr(model, "metadata", None)
    if meta is None:
        raise MlflowException(f"gate evaluator: no model version to validate: {ASK_FOR_MODEL}", INVALID_PARAMETER_VALUE)
    from gate.registry import client_for

    client = client_for(tracking_uri)
    model_id = getattr(meta, "model_id", None) or model_id
    run_id, uuid = getattr(meta, "run_id", None), getattr(meta, "model_uuid", None)
    # the registry indexes versions by run; without a run, only the newest versions are compared. The run id
    # comes from the model's own MLmodel file, so it goes into the filter only when it is a plain id
    if run_id and re.fullmatch(r"[0-9A-Za-z_-]{1,64}", str(run_id)):
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    else:
        versions = client.search_model_versions(max_results=MAX_VERSIONS_SCANNED, order_by=["creation_timestamp DESC"])
    if model_id:  # an MLflow 3 logged model: its id is on the version
        found = [v for v in versions if getattr(v, "model_id", None) == model_id]
    else:  # a model saved and logged as files (gate.generator.log_generator): only its MLmodel's uuid names it
        found = []
        for v in versions if uuid else ():
            if _model_uuid(client, v, tracking_uri) == uuid:
                found.append(v)
                if len(found) > 1:  # ambiguous already: no need to read every other MLmodel
                    break
    if len(found) != 1:
        which = "no registered version" if not found else \
            f"several registered versions ({', '.join(f'{v.name}/{v.version}' for v in found)})"
        raise MlflowException(f"gate evaluator: {which} matches the model MLflow loaded: {ASK_FOR_MODEL}",
                              INVALID_PARAMETER_VALUE)
    return f"models:/{found[0].name}/{found[0].version}"


def _model_uuid(client, version, tracking_uri: str) -> str | None:
    """The ``model_uuid`` in a version's MLmodel file (None when it cannot be read: it matches nothing)."""
    import yaml

    try:
        uri = client.get_model_version_download_uri(version.name, version.version).rstrip("/") + "/MLmodel"
        with tempfile.TemporaryDirectory(prefix="gate-mlmodel-") as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                       tracking_uri=tracking_uri)
            meta = yaml.safe_load(Path(path).read_bytes()[:1_000_000])
        return str(meta.get("model_uuid")) if isinstance(meta, dict) and meta.get("model_uuid") else None
    except Exception:  # noqa: BLE001 - a version whose files are gone or odd is simply not this model
        return None


def _validate_and_log(cfg: dict[str, str], model_uri: str, out: Path, tracking_uri: str,
                      run_id: str) -> EvaluationResult:
    from mlflow.entities import Metric, RunTag

    from gate.registry import client_for
    from gate.workflow import Request, validate

    optional = {k: Path(cfg[k]) for k in ("train", "holdout", "signing_key") if k in cfg}
    result = validate(Request(policy=Path(cfg["policy"]), out=out, model=model_uri, tracking_uri=tracking_uri,
                              **optional))
    report = result.report
    metrics = {f"{c.id}.{k}": float(v) for c in report.checks for k, v in c.metrics.items()
               if v is not None and math.isfinite(v)}  # MLflow stores no NaN/inf meaningfully
    metrics["gate.pass"] = 1.0 if report.verdict == "pass" else 0.0
    tags = {"gate.verdict": report.verdict, "gate.report_sha256": result.report_sha256,
            "gate.model_version": result.model.version_uri if result.model else model_uri}
    if report.provenance.mlflow_run_id:
        tags["gate.validation_run_id"] = report.provenance.mlflow_run_id
    client = client_for(tracking_uri)
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_artifacts(run_id, str(out), artifact_path="gate")
    root = client.get_run(run_id).info.artifact_uri.rstrip("/")
    # contents read now: a temporary report folder is gone once this returns, the run's copy stays
    artifacts: dict[str, EvaluationArtifact] = {}
    for name, file in REPORT_FILES.items():
        if (out / file).is_file():
            cls = ReportJsonArtifact if file.endswith(".json") else ReportFileArtifact
            artifact = cls(uri=f"{root}/gate/{file}")
            artifact._load(str(out / file))
            artifacts[name] = artifact
    return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)
