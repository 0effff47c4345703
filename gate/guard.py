"""``mlflow server --app-name gate-guard``: an MLflow server that refuses unvalidated promotions.

A Flask ``before_request`` hook on MLflow's own app answers HTTP 403 to any request that would put a
protected alias on a model version (REST and the UI's ``ajax-api`` paths alike), or move it to the
legacy Staging/Production stage, unless the version carries a ``gate.attestation`` tag that is a DSSE
envelope signed by the configured key, about that very version, with verdict ``pass`` (and not older
than a maximum age, when one is set). With ``GATE_GUARD_PROTECT_DELETE=1`` it also refuses deleting a
protected alias. It holds only the public key; the artifacts' digest is checked by ``gate verify``
(downloading the model on every request would make the server slow).

Configuration, from the environment of ``mlflow server``:
``GATE_GUARD_PUBLIC_KEY`` (path, required), ``GATE_PROTECTED_ALIASES`` (comma-separated, default
``champion``), ``GATE_GUARD_PROTECT_DELETE`` (``1`` to guard deletion), ``GATE_GUARD_MAX_AGE_DAYS``.
"""

from __future__ import annotations

import datetime as dt
import os

from gate.attestation import AttestationError, load_public_key, verdict_problem, verify

GUARDED_STAGES = {"staging", "production"}


class GuardConfig:
    def __init__(self, environ=os.environ) -> None:
        path = environ.get("GATE_GUARD_PUBLIC_KEY")
        if not path:
            raise RuntimeError("gate-guard: set GATE_GUARD_PUBLIC_KEY to the path of the signer's Ed25519 public key")
        self.public_key = load_public_key(path)
        self.protected = {a.strip() for a in environ.get("GATE_PROTECTED_ALIASES", "champion").split(",") if a.strip()}
        self.protect_delete = environ.get("GATE_GUARD_PROTECT_DELETE", "") in ("1", "true", "yes")
        days = environ.get("GATE_GUARD_MAX_AGE_DAYS")
        self.max_age = dt.timedelta(days=float(days)) if days else None


def attestation_problem(config: GuardConfig, name: str, version: str, tags: dict[str, str]) -> str | None:
    """Why the version may not be promoted, or None when it carries a valid passing attestation."""
    envelope = tags.get("gate.attestation")
    if not envelope:
        return f"models:/{name}/{version} has no gate attestation: validate it with `gate promote --signing-key`"
    try:
        statement = verify(envelope, config.public_key, subject_uri=f"models:/{name}/{version}",
                           max_age=config.max_age)
    except AttestationError as exc:
        return f"models:/{name}/{version}: invalid gate attestation: {exc}"
    return verdict_problem(statement)


def _request_fields(request) -> dict:
    body = request.get_json(silent=True) if request.is_json else None
    fields = dict(request.args)
    fields.update(body or {})
    return fields


def make_guard(config: GuardConfig, get_tags):
    """The ``before_request`` hook; ``get_tags(name, version)`` reads the registry's own copy of the tags."""
    from flask import jsonify, request

    def deny(message: str):
        return jsonify(error_code="PERMISSION_DENIED", message=message), 403

    def guard():
        path = request.path
        if path.endswith("/mlflow/registered-models/alias"):
            f = _request_fields(request)
            alias = str(f.get("alias", ""))
            if alias not in config.protected:
                return None
            if request.method == "DELETE":
                return deny(f"alias '{alias}' is protected: deleting it is refused") if config.protect_delete else None
            if request.method in ("POST", "PATCH", "PUT"):
                name, version = str(f.get("name", "")), str(f.get("version", ""))
                problem = attestation_problem(config, name, version, _safe_tags(get_tags, name, version))
                return deny(f"alias '{alias}' is protected: {problem}") if problem else None
        if path.endswith("/mlflow/model-versions/transition-stage") and request.method == "POST":
            f = _request_fields(request)
            stage = str(f.get("stage", ""))
            if stage.lower() in GUARDED_STAGES:
                name, version = str(f.get("name", "")), str(f.get("version", ""))
                problem = attestation_problem(config, name, version, _safe_tags(get_tags, name, version))
                return deny(f"stage '{stage}' is protected: {problem}") if problem else None
        return None

    return guard


def _safe_tags(get_tags, name: str, version: str) -> dict[str, str]:
    try:
        return get_tags(name, version)
    except Exception:  # noqa: BLE001 - an unknown version has no attestation; MLflow reports the rest itself
        return {}


def _registry_tags(name: str, version: str) -> dict[str, str]:
    from mlflow.server.handlers import _get_model_registry_store  # private API: mlflow is pinned <4

    return dict(_get_model_registry_store().get_model_version(name, version).tags or {})


def create_app(app=None):
    """The ``mlflow.app`` entry point: MLflow's Flask app with the guard in front."""
    from mlflow.server import app as flask_app

    app = app or flask_app
    app.before_request(make_guard(GuardConfig(), _registry_tags))
    if os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn":  # MLflow 3 serves Flask inside FastAPI by default
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
