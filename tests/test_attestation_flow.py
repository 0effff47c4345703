"""Signing after validation and `gate verify` against a real (sqlite) MLflow registry."""

import json

import numpy as np
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate.cli import app
from gate.generator import ImageGenerator, log_generator

runner = CliRunner()


class TrainLikeGenerator(ImageGenerator):
    def load_context(self, context):
        self.pool = np.load(context.artifacts["pool"])

    def generate(self, n, seed):
        rng = np.random.default_rng(seed)
        return self.pool[rng.choice(len(self.pool), n)]


def test_signed_validation_verifies_and_every_tampering_is_refused(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pool = tmp_path / "pool.npy"
    from gate.imageio import read_image_folder

    np.save(pool, read_image_folder(mri["novel"], "novel").images)
    mv, _ = log_generator(TrainLikeGenerator(), "gen", tracking_uri=uri, artifacts={"pool": str(pool)})
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], rules=" []", params=CHEAP_MEMORIZATION)
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")]).exit_code == 0
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")]).exit_code == 2  # never overwrites
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "other")]).exit_code == 0
    key, pub, other = tmp_path / "k" / "gate-signing.key", tmp_path / "k" / "gate-signing.pub", \
        tmp_path / "other" / "gate-signing.pub"
    res = runner.invoke(app, ["validate", "--model", "models:/gen/1", "--tracking-uri", uri, "--policy", str(policy),
                              "--out", str(tmp_path / "out"), "--quiet", "--signing-key", str(key)])
    assert res.exit_code == 0, res.output
    envelope = json.loads((tmp_path / "out" / "attestation.dsse.json").read_text())
    # the compliance PDF, read back as text: what, against which policy, by what, results, signature
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() for page in PdfReader(tmp_path / "out" / "report.pdf").pages)
    text = " ".join(text.split())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for needle in ("PASSED: this version may be promoted", "model version models:/gen/1",
                   f"artifacts sha256 {report['provenance']['model']['artifacts_sha256']}", "signature signed (Ed25519",
                   report["provenance"]["policy_sha256"], "name: test-policy", "extractor_weights_sha256",
                   "Waivers", "in-toto Statement v1 in a DSSE envelope", envelope["signatures"][0]["keyid"][:32],
                   "gate verify models:/gen/1 --public-key"):
        assert needle in text, needle
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert json.loads(client.get_model_version("gen", mv.version).tags["gate.attestation"]) == envelope

    def verify(*args):
        r = runner.invoke(app, ["verify", *map(str, args)])
        return r.exit_code, r.output

    code, output = verify("models:/gen/1", "--public-key", pub, "--tracking-uri", uri)
    assert code == 0 and "valid: models:/gen/1 verdict pass" in output
    assert verify(tmp_path / "out", "--public-key", pub)[0] == 0
    aged = tmp_path / "aged.yaml"
    aged.write_text(policy.read_text().replace("spec:\n", "spec:\n  attestation: {max_age_days: 0.000001}\n", 1))
    code, output = verify(tmp_path / "out", "--public-key", pub, "--policy", aged)
    assert code == 1 and "expired" in output, output
    for args, reason in (
        (("models:/gen/1", "--public-key", other, "--tracking-uri", uri), "wrong key"),
        (("models:/gen/1", "--public-key", pub, "--tracking-uri", uri, "--max-age-days", "0.000001"), "expired"),
        (("models:/gen/1", "--public-key", pub, "--tracking-uri", uri, "--max-age-days", "0"), "must be positive"),
        ((tmp_path / "out", "--public-key", pub, "--model", "models:/gen/2", "--tracking-uri", uri), None),
    ):
        code, output = verify(*args)
        assert code in (1, 2) and (reason is None or reason in output), output

    # a second version, and the first's attestation shown for it: refused
    mv2, _ = log_generator(TrainLikeGenerator(), "gen", tracking_uri=uri, artifacts={"pool": str(pool)})
    client.set_model_version_tag("gen", mv2.version, "gate.attestation", json.dumps(envelope))
    code, output = verify("models:/gen/2", "--public-key", pub, "--tracking-uri", uri)
    assert code == 1 and "is for models:/gen/1, not models:/gen/2" in output

    # the report changed after signing
    report = tmp_path / "out" / "report.json"
    report.write_text(report.read_text().replace('"pass"', '"pass" '))
    code, output = verify(tmp_path / "out", "--public-key", pub)
    assert code == 1 and "report.json was changed" in output

    # a truncated tag
    client.set_model_version_tag("gen", mv2.version, "gate.attestation", json.dumps(envelope)[:80])
    code, output = verify("models:/gen/2", "--public-key", pub, "--tracking-uri", uri)
    assert code == 1 and "truncated" in output

    # the model's artifacts changed after validation
    mv1 = client.get_model_version("gen", "1")  # source: models:/m-... (MLflow 3 logged model) or runs:/RUN/...
    owners = {mv1.run_id} | ({mv1.source.rsplit("/", 1)[-1]} if mv1.source.startswith("models:/") else set())
    model_files = [p for p in tmp_path.rglob("python_model.pkl") if owners & set(p.parts)]
    assert len(model_files) == 1, (owners, list(tmp_path.rglob("python_model.pkl")))
    with open(model_files[0], "ab") as f:
        f.write(b"\0")
    code, output = verify("models:/gen/1", "--public-key", pub, "--tracking-uri", uri)
    assert code == 1 and "artifacts changed" in output, output

    # validating again without a key removes the stale attestation
    res = runner.invoke(app, ["validate", "--model", "models:/gen/1", "--tracking-uri", uri, "--policy", str(policy),
                              "--out", str(tmp_path / "out2"), "--quiet"])
    assert res.exit_code == 0, res.output
    code, output = verify("models:/gen/1", "--public-key", pub, "--tracking-uri", uri)
    assert code == 1 and "has no gate attestation" in output
