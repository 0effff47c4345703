"""Talking to an MLflow registry with explicit URIs: resolving candidates, tagging, promoting."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from gate.errors import InputError

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))$")


def resolve_tracking_uri(explicit: str | None, workdir: Path | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else an embedded sqlite store under ``.gate/``."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (workdir or Path.cwd()) / ".gate"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def is_embedded_default(tracking_uri: str) -> bool:
    """Whether this URI is the store gate falls back to when no tracking URI was given (the usual
    cause of a "no such model version": a forgotten --tracking-uri)."""
    return not os.environ.get("MLFLOW_TRACKING_URI") and \
        tracking_uri == f"sqlite:///{(Path.cwd() / '.gate' / 'mlflow.db').resolve()}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Keep artifacts of the embedded store beside its database rather than in ./mlruns."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


@dataclasses.dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    source: str
    run_id: str | None
    uri: str  # as the user gave it
    generator_mode: str | None = None  # the version's gate.generator_mode tag (set by log_generator)
    #: the registry's record of the version, which a re-created or renamed-in version does not share
    creation_timestamp: int | None = None
    workspace: str | None = None

    @property
    def version_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client_for(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_model(uri: str, tracking_uri: str) -> ModelRef:
    m = MODEL_URI.match(uri)
    if not m:
        raise InputError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    client = client_for(tracking_uri)
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
        else:
            mv = client.get_model_version(m["name"], m["version"])
    except Exception as exc:  # noqa: BLE001 - mlflow raises several types for these
        raise InputError(f"{uri}: {_mlflow_reason(exc, tracking_uri)}") from None
    return ModelRef(name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id, uri=uri,
                    generator_mode=(mv.tags or {}).get("gate.generator_mode"),
                    creation_timestamp=mv.creation_timestamp, workspace=getattr(mv, "workspace", None))


def download_model(ref: ModelRef, tracking_uri: str, dst: Path) -> Path:
    """Download the version's model artifacts once, into ``dst``; that copy is what gets hashed and
    sampled, so that files swapped on the server later are not what the attestation covers."""
    import mlflow

    try:
        uri = client_for(tracking_uri).get_model_version_download_uri(ref.name, ref.version)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{ref.uri}: cannot download the model's artifacts: {_mlflow_reason(exc, tracking_uri)}") \
            from None


def make_read_only(folder: Path) -> None:
    """Drop write permission on a downloaded model (the sandbox also mounts it read-only)."""
    for p in sorted(Path(folder).rglob("*"), reverse=True) + [Path(folder)]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o222)


def _mlflow_reason(exc: Exception, tracking_uri: str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
        hint = ("; no --tracking-uri was given and MLFLOW_TRACKING_URI is not set, so this is gate's embedded "
                "store in the working directory: give the server your model is registered in"
                if is_embedded_default(tracking_uri) else "")
        return f"no such model version in {tracking_uri} ({text}){hint}"
    if any(s in str(exc) for s in ("Connection", "Max retries", "refused", "API request")):
        return f"MLflow server at {tracking_uri} is unreachable ({text[:200]})"
    return f"{type(exc).__name__}: {text[:300]}"


def check_reachable(tracking_uri: str) -> None:
    """Fail fast (one line, exit 2) when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=10) as resp:
            resp.read()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{tracking_uri}: MLflow server is unreachable ({type(exc).__name__}: {exc})") from None
