"""A validation child of ``gate serve`` is given an allow-listed environment: none of the service's
secrets (the webhook secret, a signing key given by environment, the audit key, a guard's key), whatever
else the operator's environment holds; the signing key reaches it by path in its argv, as before."""

import json
import os
import subprocess
import sys

import pytest

from gate.errors import ConfigError
from gate.serve.validation_job import PARENT_PID_ENV, check_child_env_names, child_env

SECRETS = {"GATE_WEBHOOK_SECRET": "whsec-123", "GATE_SIGNING_KEY": "/keys/gate-signing.key",
           "GATE_AUDIT_KEY_FILE": "/keys/audit.key", "GATE_GUARD_SERVICE_KEY": "/keys/service.key",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "fernet", "SOME_OTHER_TOKEN": "tok", "DATABASE_URL": "pg://u:p@h"}


@pytest.fixture
def service_env(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "registry-token")  # the child is an MLflow client
    monkeypatch.setenv("LC_ALL", "C.UTF-8")


def test_the_child_environment_holds_no_secret(service_env):
    env = child_env(3)
    leaked = {k for k in env if k in SECRETS} | {k for k, v in env.items() if v in SECRETS.values()}
    assert not leaked, leaked
    assert env["PATH"] == os.environ["PATH"] and env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "3")
    assert env["MLFLOW_TRACKING_TOKEN"] == "registry-token" and env["LC_ALL"] == "C.UTF-8"
    assert env[PARENT_PID_ENV] == str(os.getpid())
    assert all(not k.startswith("GATE_") or k == PARENT_PID_ENV for k in env)


def test_a_real_child_started_with_it_sees_no_secret(service_env):
    out = subprocess.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                         env=child_env(1), capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert not set(seen) & set(SECRETS) and not set(seen.values()) & set(SECRETS.values())


def test_operator_names_pass_but_never_gate_secrets(service_env):
    assert child_env(1, ("SOME_OTHER_TOKEN",))["SOME_OTHER_TOKEN"] == "tok"
    assert "GATE_WEBHOOK_SECRET" not in child_env(1, ("GATE_WEBHOOK_SECRET",))
    for name in ("GATE_WEBHOOK_SECRET", "gate_signing_key", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "A=B"):
        with pytest.raises(ConfigError, match="--child-env"):
            check_child_env_names((name,))
