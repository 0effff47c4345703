"""Cache entries cannot be forged; the artifacts attested are the ones sampled; one error boundary.

- A poisoned reference cache (features of another train set written under this train set's key, as an
  "honest" generator could do when it ran in the validating process) is recomputed, and the check
  says so, instead of letting a later copier score as novel.
- The model files swapped on the server *while* the candidate is sampled are not what the attestation
  covers: it names the digest of the copy that was sampled, and `gate verify` then refuses the version.
- An unexpected exception is exit 3 with its traceback in a crash log (it was exit 1, "blocked",
  traceback lost); ^C is 130.
"""

import hashlib
import json
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate import attestation as A
from gate.cli import app
from gate.featurecache import FeatureCache
from gate.generator import ImageGenerator, log_generator
from gate.sandbox import BUBBLEWRAP, probe_isolation

#: the memorization check without its costly parts (these tests are about the gate, not the detector)
CHEAP = CHEAP_MEMORIZATION


def test_a_forged_cache_entry_is_not_trusted(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.store("k", {"ref_0": np.ones((4, 3))})
    assert cache.load("k").status == "hit"
    # a writer without the key: other arrays under the same key, with or without a MAC of its own
    forged = tmp_path / "forged.npz"
    np.savez(forged, ref_0=np.zeros((4, 3)))
    (tmp_path / "k.npz").write_bytes(forged.read_bytes())
    assert cache.load("k").status == "tampered" and cache.load("k").arrays is None
    (tmp_path / "k.mac").write_text(hashlib.sha256(forged.read_bytes()).hexdigest())
    assert cache.load("k").status == "tampered"
    assert oct((tmp_path / ".hmac-key").stat().st_mode & 0o777) == "0o600"


def test_a_poisoned_reference_cache_is_recomputed_and_reported(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], n_samples=16, params=CHEAP)

    def validate(out):
        res = CliRunner().invoke(app, ["validate", "--samples", str(mri["copies"]), "--policy", str(policy),
                                       "--out", str(out), "--quiet"])
        return res, json.loads((out / "report.json").read_text())

    res, first = validate(tmp_path / "first")
    assert res.exit_code == 1, res.output  # the copies are caught
    entries = sorted((tmp_path / ".gate" / "cache").glob("*.npz"))
    assert entries
    # poison: replace the reference features by features of random noise (no copy is near them)
    for e in entries:
        with np.load(e) as z:
            np.savez(e, **{k: np.random.default_rng(0).normal(size=z[k].shape) for k in z.files})
    res, second = validate(tmp_path / "second")
    mem = {c["id"]: c for c in second["checks"]}["memorization"]
    assert mem["provenance"]["reference_cache"] == "tampered"  # recomputed, and said
    assert res.exit_code == 1 and second["verdict"] == "fail"
    assert mem["metrics"] == {c["id"]: c for c in first["checks"]}["memorization"]["metrics"]


class SlowPool(ImageGenerator):
    def load_context(self, context):
        time.sleep(6)  # the window in which the server's files are swapped
        self.pool = np.load(context.artifacts["pool"])

    def generate(self, n, seed):
        return self.pool[np.random.default_rng(seed).choice(len(self.pool), n)]


@pytest.mark.skipif(probe_isolation() != BUBBLEWRAP, reason="signing needs bubblewrap; .ci/run installs it")
def test_files_swapped_during_sampling_are_not_what_is_attested(mri, tmp_path, monkeypatch):
    from gate.imageio import read_image_folder

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    np.save(tmp_path / "pool.npy", read_image_folder(mri["novel"], "novel").images)
    mv, run_id = log_generator(SlowPool(), "swapped", tracking_uri=uri, artifacts={"pool": str(tmp_path / "pool.npy")})
    stored = next((tmp_path / ".gate").rglob("pool.npy")) if (tmp_path / ".gate").exists() else \
        next(p for p in tmp_path.rglob("pool.npy") if run_id in str(p))
    model_dir = next(p for p in stored.parents if (p / "MLmodel").exists())
    before = A.artifacts_digest(model_dir)
    private, public = A.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    (tmp_path / "k.pub").write_bytes(public)
    copies = read_image_folder(mri["train"], "train").images

    def swap():
        time.sleep(3)  # after the download, during the sampler's load
        np.save(stored, copies)

    t = threading.Thread(target=swap)
    t.start()
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], n_samples=16, rules=" []", params=CHEAP)
    res = CliRunner().invoke(app, ["validate", "--model", f"models:/swapped/{mv.version}", "--tracking-uri", uri,
                                   "--policy", str(policy), "--out", str(tmp_path / "out"), "--quiet",
                                   "--signing-key", str(tmp_path / "k.key")])
    t.join()
    assert res.exit_code == 0, res.output
    assert A.artifacts_digest(model_dir) != before  # the swap happened on the server
    statement = A.verify((tmp_path / "out" / "attestation.dsse.json").read_text(),
                         A.TrustPolicy.from_files([tmp_path / "k.pub"]))
    assert statement["subject"][0]["digest"]["sha256"] == before  # what was sampled, not what is there now
    res = CliRunner().invoke(app, ["verify", f"models:/swapped/{mv.version}", "--public-key", str(tmp_path / "k.pub"),
                                   "--tracking-uri", uri])
    assert res.exit_code == 1 and "artifacts changed" in res.output, res.output
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert "gate.attestation" in client.get_model_version("swapped", mv.version).tags


def test_an_unexpected_crash_is_exit_3_with_its_traceback_kept(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], None, n_samples=4, params=CHEAP)

    def broken(*_a, **_k):  # a bug in gate itself, after the checks ran
        raise RuntimeError("report writer bug")

    monkeypatch.setattr("gate.workflow.write_reports", broken)
    res = CliRunner().invoke(app, ["validate", "--samples", str(mri["novel"]), "--policy", str(policy),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 3, res.output
    assert "gate: crash: RuntimeError: report writer bug" in res.output
    logs = list((tmp_path / "out").glob("gate-crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and "broken" in logs[0].read_text()
    assert not (tmp_path / "out" / "report.json").exists()


def test_interrupt_is_exit_130(mri, tmp_path, monkeypatch):
    policy = write_policy(tmp_path / "p.yaml", mri["train"], None, n_samples=4)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("gate.workflow.run", interrupted)
    res = CliRunner().invoke(app, ["validate", "--samples", str(mri["novel"]), "--policy", str(policy),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 130 and "interrupted" in res.output, res.output


def test_a_signed_validation_refuses_data_overrides_unless_the_policy_allows_them(mri, tmp_path, monkeypatch):
    """A pass earned against another train folder must not be signed as the policy's."""
    monkeypatch.chdir(tmp_path)
    private, _ = A.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], n_samples=4, params=CHEAP)
    args = ["promote", "--model", "models:/anything/1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
            "--policy", str(policy), "--out", str(tmp_path / "out"), "--quiet", "--signing-key", str(tmp_path / "k.key"),
            "--train", str(mri["novel"])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "allow_overrides" in res.output, res.output
    assert not (tmp_path / "out").exists()
    # allowed by the policy: the check passes on to the model (which does not exist here: exit 2 naming it)
    policy.write_text(policy.read_text().replace("  data:\n", "  data:\n    allow_overrides: true\n"))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "allow_overrides" not in res.output and "models:/anything/1" in res.output, res.output
