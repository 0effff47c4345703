"""``mlflow server --app-name gate-guard``: an MLflow server that refuses unvalidated promotions.

A Flask ``before_request`` hook on MLflow's own app judges every request that Flask routes to one of
the six registry handlers that can move a protected alias or a stage: set alias, delete alias, delete
version, delete model, rename model, stage transition. It is keyed on the handler Flask will call (not
on the path's text, so no spelling of the route gets past it) and it reads the request with MLflow's
own parser (``_get_request_message``), so a body of any content type is judged on exactly the fields
the handler will act on.

- Setting a protected alias, or moving a version to Staging/Production, needs a ``gate.attestation``
  tag on the version that verifies under the trust configuration (a trusted key, an allowed policy,
  not expired, not dated in the future), has verdict ``pass``, and whose subject names the registry's
  own record of the version (name, version, creation timestamp, run id, source, workspace): one extra
  read per promotion, so a tag replayed onto a renamed-in or re-created version is refused.
- Deleting a protected alias, or deleting or renaming a model or version that holds one, is refused
  (``GATE_GUARD_PROTECT_DELETE=0`` turns that off), except a delete-alias request signed by the gate
  service (:mod:`gate.service_auth`), which is how ``gate serve`` takes an alias off a version that lost
  its attestation.

The guard holds only public keys and the service key; the artifacts' digest is re-hashed by
``gate verify`` and by ``gate serve``'s alias watch (downloading the model on every request would make
the server slow).

Configuration, from the environment of ``mlflow server`` (read once, at start):
``GATE_GUARD_PUBLIC_KEY`` (path, required; several separated by commas), ``GATE_PROTECTED_ALIASES``
(comma-separated, default ``champion``; compared case-insensitively), ``GATE_GUARD_PROTECT_DELETE``
(default ``1``), ``GATE_GUARD_MAX_AGE_DAYS`` (default 30), ``GATE_GUARD_ALLOWED_POLICIES``
(comma-separated policy sha256; empty: any policy), ``GATE_GUARD_CLOCK_SKEW_S`` (default 300),
``GATE_GUARD_SERVICE_KEY_FILE`` (the key shared with ``gate serve --guard-key-file``; unset: no service).
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Any, Callable, Mapping

from gate.attestation import AttestationError, TrustPolicy, verdict_problem, verify, version_identity
from gate.errors import ConfigError

GUARDED_STAGES = frozenset({"staging", "production"})
#: MLflow handler name -> (its request message in mlflow.protos.model_registry_pb2, what it does)
GUARDED_HANDLERS = {
    "_set_registered_model_alias": ("SetRegisteredModelAlias", "set_alias"),
    "_delete_registered_model_alias": ("DeleteRegisteredModelAlias", "delete_alias"),
    "_delete_model_version": ("DeleteModelVersion", "delete_version"),
    "_delete_registered_model": ("DeleteRegisteredModel", "delete_model"),
    "_rename_registered_model": ("RenameRegisteredModel", "rename_model"),
    "_transition_stage": ("TransitionModelVersionStage", "transition_stage"),
}
_OFF = ("0", "false", "no", "off")


def _fold(alias: str) -> str:
    """What an alias looks like to a person or a lenient store: case-insensitive collations (MySQL's
    default) store "Champion" over "champion", and MLflow's own name check lets a trailing newline
    through ("champion\\n"); control, format and space characters are dropped, compatibility forms folded."""
    kept = "".join(c for c in unicodedata.normalize("NFKC", str(alias)) if unicodedata.category(c)[0] not in "CZ")
    return kept.casefold()


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    trust: TrustPolicy
    protected: frozenset[str] = frozenset({"champion"})  # folded
    protect_delete: bool = True
    service_key: bytes | None = None

    def is_protected(self, alias: str) -> bool:
        return _fold(alias) in self.protected

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "GuardConfig":
        from gate.service_auth import load_service_key

        paths = [p.strip() for p in environ.get("GATE_GUARD_PUBLIC_KEY", "").split(",") if p.strip()]
        if not paths:
            raise ConfigError("gate-guard: set GATE_GUARD_PUBLIC_KEY to the path of the signer's Ed25519 public key")
        trust = TrustPolicy.from_files(paths, environ.get("GATE_GUARD_ALLOWED_POLICIES", "").split(","),
                                       _number(environ, "GATE_GUARD_MAX_AGE_DAYS"),
                                       _number(environ, "GATE_GUARD_CLOCK_SKEW_S"))
        protected = frozenset(_fold(a.strip()) for a in environ.get("GATE_PROTECTED_ALIASES", "champion").split(",")
                              if a.strip())
        key_file = environ.get("GATE_GUARD_SERVICE_KEY_FILE")
        return cls(trust, protected, environ.get("GATE_GUARD_PROTECT_DELETE", "1").strip().lower() not in _OFF,
                   load_service_key(key_file) if key_file else None)


def _number(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"gate-guard: {name}={raw[:40]!r} is not a number") from None


def attestation_problem(config: GuardConfig, record: Any) -> str | None:
    """Why the registry's ``record`` (a ModelVersion) may not be promoted, or None when it carries a
    valid passing attestation about that very version."""
    uri = f"models:/{record.name}/{record.version}"
    envelope = (record.tags or {}).get("gate.attestation")
    if not envelope:
        return f"{uri} has no gate attestation: validate it with `gate promote --signing-key`"
    try:
        statement = verify(envelope, config.trust, subject_uri=uri, identity=version_identity(record))
    except AttestationError as exc:
        return f"{uri}: invalid gate attestation: {exc}"
    return verdict_problem(statement)


@dataclasses.dataclass(frozen=True)
class Registry:
    """The registry reads the guard needs, from the server's own store (inside the request's workspace)."""

    get_version: Callable[[str, str], Any]
    get_model: Callable[[str], Any]

    def aliases(self, name: str) -> dict[str, str]:
        try:
            return {str(a): str(v) for a, v in (self.get_model(name).aliases or {}).items()}
        except Exception:  # noqa: BLE001 - an unknown model holds no alias; MLflow reports the rest itself
            return {}


def judge(kind: str, msg: Any, config: GuardConfig, registry: Registry, by_service: bool) -> str | None:
    """Why the operation is refused, or None. ``msg``: the request message as MLflow parsed it."""
    if kind == "set_alias" and config.is_protected(msg.alias):
        return _promotion_problem(f"alias '{msg.alias}' is protected", msg.name, msg.version, config, registry)
    if kind == "transition_stage" and msg.stage.strip().lower() in GUARDED_STAGES:
        return _promotion_problem(f"stage '{msg.stage}' is protected", msg.name, msg.version, config, registry)
    if not config.protect_delete:
        return None
    if kind == "delete_alias" and config.is_protected(msg.alias) and not by_service:
        return f"alias '{msg.alias}' is protected: deleting it is refused (only the gate service may)"
    if kind in ("delete_version", "delete_model", "rename_model"):
        held = {a: v for a, v in registry.aliases(msg.name).items() if config.is_protected(a)}
        if kind == "delete_version":
            held = {a: v for a, v in held.items() if _same_version(v, msg.version)}
        if held:
            what = {"delete_version": f"deleting version {msg.version} of", "delete_model": "deleting",
                    "rename_model": "renaming"}[kind]
            return (f"{what} '{msg.name}' is refused: it holds the protected alias "
                    f"{', '.join(sorted(held))} (move the alias first, or set GATE_GUARD_PROTECT_DELETE=0)")
    return None


def _same_version(held: str, requested: str) -> bool:
    try:  # MLflow reads the version as an integer ("03" is 3); what it cannot read counts as held
        return int(held) == int(requested)
    except ValueError:
        return True


def _promotion_problem(what: str, name: str, version: str, config: GuardConfig, registry: Registry) -> str | None:
    try:
        record = registry.get_version(name, version)
    except Exception:  # noqa: BLE001 - no such version: nothing to promote; MLflow answers the details
        return f"{what}: models:/{name}/{version} is not a version in this registry"
    problem = attestation_problem(config, record)
    return f"{what}: {problem}" if problem else None


def _safe(text: str) -> str:
    """Request fields go back in messages: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:600]


def make_guard(config: GuardConfig, registry: Registry):
    """The ``before_request`` hook."""
    from flask import current_app, jsonify, request
    from mlflow.exceptions import MlflowException
    from mlflow.protos import model_registry_pb2
    from mlflow.server import handlers  # private API: mlflow is pinned <4

    from gate import service_auth

    watched = {getattr(handlers, fn): (getattr(model_registry_pb2, msg), kind)
               for fn, (msg, kind) in GUARDED_HANDLERS.items()}
    memory = service_auth.NonceMemory()

    def deny(message: str):
        return jsonify(error_code="PERMISSION_DENIED", message=_safe(message)), 403

    def guard():
        view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
        if view not in watched:
            return None
        message_class, kind = watched[view]
        try:  # exactly what the handler will read: same parser, same content-type rules
            msg = handlers._get_request_message(message_class(), flask_request=request)
        except MlflowException as exc:  # the handler would refuse it too; refuse it here, fail closed
            return jsonify(error_code=exc.error_code, message=_safe(exc.message)), exc.get_http_status_code()
        by_service = False
        header = request.headers.get(service_auth.HEADER)
        if header is not None:
            if config.service_key is None:
                return deny("a gate service signature was sent, but this guard has no service key configured")
            problem = service_auth.check_request(config.service_key, header, request.method, request.path,
                                                 request.query_string, request.get_data(cache=True), memory)
            if problem:
                return deny(problem)
            by_service = True
        problem = judge(kind, msg, config, registry, by_service)
        return deny(problem) if problem else None

    return guard


def _store_registry() -> Registry:
    from mlflow.server.handlers import _get_model_registry_store  # private API: mlflow is pinned <4

    return Registry(lambda n, v: _get_model_registry_store().get_model_version(n, v),
                    lambda n: _get_model_registry_store().get_registered_model(n))


def create_app(app=None):
    """The ``mlflow.app`` entry point: MLflow's Flask app with the guard in front."""
    from mlflow.server import app as flask_app

    app = app or flask_app
    app.before_request(make_guard(GuardConfig.from_environ(os.environ), _store_registry()))
    if os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn":  # MLflow 3 serves Flask inside FastAPI by default
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
