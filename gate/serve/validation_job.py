"""One validation job of the webhook service: ``gate validate --signing-key`` in a child process.

A child process, not a thread: a validator that crashes, leaks memory or hangs takes only its own
job down (it is killed at the time limit), and MLflow's process-wide URI state is never shared between
concurrent validations. The registry's tags, written by the child, are the record of the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from gate.registry import client_for


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    policy: Path
    tracking_uri: str
    signing_key: Path
    reports_dir: Path
    timeout_s: float
    workdir: Path  # the child's working directory (its .gate/cache is shared by all jobs)
    threads: int = 1  # CPU threads per validation: cores / workers, so that parallel jobs do not thrash
    extra_env: tuple[str, ...] = ()  # further variable names passed through (``gate serve --child-env``)


@dataclasses.dataclass(frozen=True)
class ValidationOutcome:
    status: str  # done | skipped | error | interrupted
    verdict: str | None  # pass | fail | error (the report's), None when nothing ran
    detail: str
    exit_code: int | None = None
    report_sha256: str | None = None
    run_id: str | None = None
    attested: bool = False
    seconds: float = 0.0
    reports: str | None = None


PARENT_PID_ENV = "GATE_SERVE_PARENT_PID"

# What a validation child is given of the service's environment: what a process needs to run (paths,
# locale, temporary folder), thread counts, and the MLflow client's and artifact stores' own settings
# (it reads the version and writes its tags, like any MLflow client). Nothing else: the service's
# environment holds its secrets (GATE_WEBHOOK_SECRET; GATE_SIGNING_KEY, which the child gets by path in
# its argv instead), and anything not named here stays with the service.
CHILD_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
    "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME",
})
CHILD_ENV_PREFIXES = ("LC_", "MLFLOW_", "AWS_", "AZURE_", "GOOGLE_", "nnUNet_")
# never passed, whatever the operator names: gate's own variables are its keys and secrets
CHILD_ENV_DENIED_PREFIX = "GATE_"
# an MLflow server's own secrets, should the service share its host's environment
CHILD_ENV_DENIED = frozenset({"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY"})


def check_child_env_names(names: tuple[str, ...]) -> None:
    """``gate serve --child-env``: :class:`ConfigError` for a name the children must never get."""
    from gate.errors import ConfigError

    for name in names:
        if (name.upper().startswith(CHILD_ENV_DENIED_PREFIX) or name in CHILD_ENV_DENIED
                or not name.replace("_", "").isalnum()):
            raise ConfigError(f"--child-env {name[:64]!r}: not passed to validations (gate's own variables hold "
                              f"its secrets; names are letters, digits and _)")


def die_with_parent() -> None:
    """In a validation child: ask Linux to kill this process when the service dies, so that a crashed
    service leaves no orphan validation behind to race the re-run of its job after the restart."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the service died before the request took effect
        os._exit(3)


def report_folder(reports_dir: Path, name: str, version: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    return reports_dir / f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}" / str(version)


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("gate: error:")]
    return (errors[:1] or lines[-1:] or ["(no output)"])[0][:500]  # a message's first line says what failed


def child_env(threads: int, extra: tuple[str, ...] = (), environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """An allow-listed copy of the service's environment (:data:`CHILD_ENV`, plus ``extra`` names), with
    thread pools sized for one job (an operator's own settings win) and the parent-death marker."""
    env = {k: v for k, v in environ.items()
           if (k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES) or k in extra)
           and not k.upper().startswith(CHILD_ENV_DENIED_PREFIX) and k not in CHILD_ENV_DENIED}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(key, str(threads))
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


def run_validation(s: ValidationSettings, name: str, version: str, is_stopping: Callable[[], bool],
                   started: Callable[[subprocess.Popen], None] = lambda _p: None) -> ValidationOutcome:
    """Validate ``models:/name/version``; never raises for a failed validation (the outcome says why)."""
    from mlflow.exceptions import MlflowException

    client = client_for(s.tracking_uri)
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):  # e.g. MLflow's test delivery (example_model)
            return ValidationOutcome("skipped", None, f"models:/{name}/{version} is not in the registry")
        raise
    out = report_folder(s.reports_dir, name, version)
    if out.exists():  # a run interrupted by a crash: its files must not mix with this one's
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gate.cli", "validate", "--model", f"models:/{name}/{version}",
           "--policy", str(s.policy), "--tracking-uri", s.tracking_uri, "--out", str(out), "--quiet",
           "--signing-key", str(s.signing_key)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=s.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=child_env(s.threads, s.extra_env))
    started(proc)
    try:
        _stdout, stderr = proc.communicate(timeout=s.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        _mark_error(client, name, version)
        return ValidationOutcome("error", "error", f"validation exceeded {s.timeout_s:.0f} s and was killed",
                                 seconds=time.time() - t0)
    seconds = time.time() - t0
    if is_stopping() and proc.returncode < 0:
        return ValidationOutcome("interrupted", None, "the service stopped during the validation", seconds=seconds)
    tags = client.get_model_version(name, version).tags or {}
    report = out / "report.json"
    sha = hashlib.sha256(report.read_bytes()).hexdigest() if report.is_file() else None
    if proc.returncode in (0, 1, 3) and sha and tags.get("gate.report_sha256") == sha:
        verdict = tags.get("gate.verdict")
        return ValidationOutcome("done", verdict, f"exit {proc.returncode}", proc.returncode, sha,
                                 tags.get("gate.run_id"), "gate.attestation" in tags, seconds, str(out))
    # bad input, an unrecorded result, or a child that died: the version must read as not validated
    _mark_error(client, name, version)
    return ValidationOutcome("error", "error", _error_line(stderr), proc.returncode, sha,
                             tags.get("gate.run_id"), False, seconds, str(out) if sha else None)


def _mark_error(client, name: str, version: str) -> None:
    try:
        client.set_model_version_tag(name, version, "gate.verdict", "error")
    except Exception:  # noqa: BLE001 - the audit log records the error either way
        pass
