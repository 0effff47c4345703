"""A real ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifacts) for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webhook_delivery_env(cache_ttl_s: int = 1) -> dict[str, str]:
    """What ``mlflow server`` needs to deliver signed webhooks to a receiver on 127.0.0.1: http and private
    addresses allowed (dev-only settings), a fixed Fernet key for the secrets, a short webhook-list cache."""
    from cryptography.fernet import Fernet

    return {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MLFLOW_WEBHOOK_CACHE_TTL": str(cache_ttl_s)}


@contextlib.contextmanager
def local_mlflow_server(root: Path, app_name: str | None = None, env: dict[str, str] | None = None,
                        timeout_s: float = 120) -> Iterator[str]:
    """Start the server, yield its URI, stop it. RuntimeError with the log's tail if it does not start."""
    root = Path(root)
    port = free_port()
    full_env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                    **(env or {}))
    args = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"), "--host",
            "127.0.0.1", "--port", str(port), "--workers", "1"] + (["--app-name", app_name] if app_name else [])
    log = root / "server.log"
    proc = subprocess.Popen(args, env=full_env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    try:
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server did not start: " + log.read_text(encoding="utf-8", errors="replace")[-2000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class LocalGateService:
    """``gate serve`` as its own process on a free 127.0.0.1 port, as an operator would run it."""

    def __init__(self, root: Path, tracking_uri: str, policy: Path, signing_key: Path, secret: str, *,
                 workers: int = 2, model_names: tuple[str, ...] = (), protected_aliases: tuple[str, ...] = ("champion",)):
        from gate.serve.audit import AuditLog

        self.root, self.port = Path(root), free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "secret").write_text(secret + "\n")
        self.args = [str(Path(sys.executable).with_name("gate")), "serve", "--policy", str(policy),
                     "--tracking-uri", tracking_uri, "--signing-key", str(signing_key),
                     "--secret-file", str(self.root / "secret"), "--state-dir", str(self.root / "state"),
                     "--port", str(self.port), "--workers", str(workers)]
        self.args += [a for m in model_names for a in ("--model-name", m)]
        self.args += [a for m in protected_aliases for a in ("--protected-alias", m)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = self.url + "/mlflow/webhook"
        self.audit = AuditLog(self.root / "state" / "audit.jsonl")
        self.proc: subprocess.Popen | None = None

    @property
    def log_tail(self) -> str:
        return (self.root / "serve.log").read_text(encoding="utf-8", errors="replace")[-3000:]

    def start(self, timeout_s: float = 120) -> None:
        self.proc = subprocess.Popen(self.args, cwd=self.root, stdout=open(self.root / "serve.log", "a"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while self.health() is None:
            if time.time() > deadline:
                raise RuntimeError("gate serve did not start: " + self.log_tail)
            time.sleep(0.3)

    def health(self) -> dict | None:
        """The /healthz answer, None while not listening; RuntimeError once the process has exited."""
        import json

        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("gate serve is not running: " + self.log_tail)
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def events(self, kind: str, **match) -> list[dict]:
        return [e for e in self.audit.entries() if e["event"] == kind
                and all(e["data"].get(k) == v for k, v in match.items())]

    def post(self, headers: dict[str, str], body: bytes) -> int:
        import urllib.error

        req = urllib.request.Request(self.webhook_url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
