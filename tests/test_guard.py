"""`mlflow server --app-name gate-guard` on 127.0.0.1: setting a protected alias (or a legacy stage) by
hand is refused with 403 unless the version carries a valid passing attestation from gate."""

import datetime as dt
import json

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, mlflow_server, write_policy
from gate import attestation as A
from gate.cli import app
from gate.generator import ImageGenerator, log_generator

NAME = "guarded-gen"


class PoolGenerator(ImageGenerator):
    def load_context(self, context):
        self.pool = np.load(context.artifacts["pool"])

    def generate(self, n, seed):
        return self.pool[np.random.default_rng(seed).choice(len(self.pool), n)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded")
    keys = {}
    for name in ("signer", "forger"):
        private, public = A.generate_keypair()
        (root / f"{name}.key").write_bytes(private)
        (root / f"{name}.pub").write_bytes(public)
        keys[name] = root / f"{name}.key"
    env = {"GATE_GUARD_PUBLIC_KEY": str(root / "signer.pub"), "GATE_PROTECTED_ALIASES": "champion,prod",
           "GATE_GUARD_PROTECT_DELETE": "1"}
    with mlflow_server(root, app_name="gate-guard", env=env) as uri:
        yield uri, keys, root


def _attest(client, key_path, version, verdict="pass", subject_version=None):
    predicate = {"verdict": verdict, "report_sha256": "0" * 64, "policy_name": "p", "policy_sha256": "1" * 64,
                 "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    identity = A.version_identity(client.get_model_version(NAME, subject_version or version))
    st = A.make_statement(f"models:/{NAME}/{subject_version or version}", "2" * 64, predicate, identity)
    return json.dumps(A.sign(st, A.load_private_key(key_path)))


def test_the_guard_refuses_unattested_promotions_and_allows_validated_ones(guarded, mri, tmp_path, monkeypatch):
    uri, keys, root = guarded
    monkeypatch.chdir(tmp_path)
    from gate.imageio import read_image_folder

    np.save(tmp_path / "pool.npy", read_image_folder(mri["novel"], "novel").images)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = [log_generator(PoolGenerator(), NAME, tracking_uri=uri,
                              artifacts={"pool": str(tmp_path / "pool.npy")})[0].version for _ in range(5)]
    v_none, v_fail, v_forged, v_other, v_valid = map(str, versions)

    def refused(call, needle):
        with pytest.raises(MlflowException) as e:
            call()
        assert "PERMISSION_DENIED" in str(e.value) or "403" in str(e.value), str(e.value)
        assert needle in str(e.value), str(e.value)

    refused(lambda: client.set_registered_model_alias(NAME, "champion", v_none), "has no gate attestation")
    client.set_model_version_tag(NAME, v_fail, "gate.attestation", _attest(client, keys["signer"], v_fail, verdict="fail"))
    refused(lambda: client.set_registered_model_alias(NAME, "champion", v_fail), "verdict fail")
    client.set_model_version_tag(NAME, v_forged, "gate.attestation", _attest(client, keys["forger"], v_forged))
    refused(lambda: client.set_registered_model_alias(NAME, "champion", v_forged), "wrong key")
    client.set_model_version_tag(NAME, v_other, "gate.attestation", _attest(client, keys["signer"], v_other,
                                                                            subject_version=v_valid))
    refused(lambda: client.set_registered_model_alias(NAME, "prod", v_other), f"not models:/{NAME}/{v_other}")
    refused(lambda: client.transition_model_version_stage(NAME, v_none, "Production"), "stage 'Production'")
    client.set_registered_model_alias(NAME, "candidate", v_none)  # unprotected aliases pass through
    assert client.get_registered_model(NAME).aliases.get("champion") is None

    # the real path: gate validates with the signing key and then the alias may be set by hand
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], rules=" []", params=CHEAP_MEMORIZATION)
    res = CliRunner().invoke(app, ["validate", "--model", f"models:/{NAME}/{v_valid}", "--tracking-uri", uri,
                                   "--policy", str(policy), "--out", str(tmp_path / "out"), "--quiet",
                                   "--signing-key", str(keys["signer"])])
    assert res.exit_code == 0, res.output
    client.set_registered_model_alias(NAME, "champion", v_valid)
    assert str(client.get_registered_model(NAME).aliases["champion"]) == v_valid
    refused(lambda: client.delete_registered_model_alias(NAME, "champion"), "deleting it is refused")
    # and `gate verify` agrees, against the server, artifacts included
    res = CliRunner().invoke(app, ["verify", f"models:/{NAME}/{v_valid}", "--public-key", str(root / "signer.pub"),
                                   "--tracking-uri", uri])
    assert res.exit_code == 0 and "verdict pass" in res.output, res.output
