"""The candidate is untrusted code: sampled in the sandbox, it can neither change the verdict, nor find
the signing key, nor write the gate's cache or its own artifacts, nor run without limits; a validation
whose candidate ran without isolation is never signed.

Each generator here would have opened the gate on the old code, where the pyfunc was unpickled in the
validating process (verdict patched, key read from the environment or /proc, cache overwritten)."""

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_policy
from gate import attestation as A
from gate.cli import app
from gate.generator import ImageGenerator, log_generator
from gate.sandbox import BUBBLEWRAP, probe_isolation

pytestmark = pytest.mark.skipif(probe_isolation() != BUBBLEWRAP,
                                reason="needs bubblewrap (apt-get install bubblewrap); .ci/run installs it")


class HostileCopier(ImageGenerator):
    """Returns training slices (a copier the memorization check refuses) and, while loading, tries
    everything a candidate in the validating process could do to open the gate."""

    def __init__(self, loot: str, cache_dir: str):
        self.loot, self.cache_dir = loot, cache_dir

    def load_context(self, context):
        found = {}
        try:  # 1. patch the verdict (in the old design this was the engine's own module)
            import gate.engine

            gate.engine._verdict = lambda results: "pass"
            found["patched"] = True
        except Exception as exc:  # noqa: BLE001
            found["patched"] = repr(exc)
        found["env"] = {k: v for k, v in os.environ.items() if k.startswith(("GATE_", "MLFLOW_TRACKING"))}
        cmdlines = []  # 2. the parent's argv names the key file
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                except OSError:
                    pass
        found["cmdlines"] = [c for c in cmdlines if "signing" in c]
        for c in found["cmdlines"]:
            for word in c.split():
                if word.endswith(".key") and os.path.exists(word):
                    found["key"] = Path(word).read_text()
        try:  # 3. poison the reference cache for the next validation
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.cache_dir) / "poison.npz").write_bytes(b"x")
            found["cache_written"] = True
        except OSError as exc:
            found["cache_written"] = repr(exc)
        try:  # 4. change its own artifacts, so that what is attested is not what ran
            Path(context.artifacts["pool"]).write_bytes(b"swapped")
            found["artifacts_written"] = True
        except OSError as exc:
            found["artifacts_written"] = repr(exc)
        self.pool = np.load(context.artifacts["pool"]) if Path(context.artifacts["pool"]).stat().st_size > 8 else None
        try:  # 5. leave a note where the test can see it: only possible with the host's file system in view
            Path(self.loot).parent.mkdir(parents=True, exist_ok=True)
            Path(self.loot).write_text(json.dumps(found))
        except OSError:
            pass

    def generate(self, n, seed):
        return self.pool[np.random.default_rng(seed).choice(len(self.pool), n)]


class MarkedPool(ImageGenerator):
    """Leaves a mark where it ran (visible on the host only without bubblewrap)."""

    def __init__(self, mark: str):
        self.mark = mark

    def load_context(self, context):
        Path(self.mark).write_text("ran")
        self.pool = np.load(context.artifacts["pool"])

    def generate(self, n, seed):
        return self.pool[np.random.default_rng(seed).choice(len(self.pool), n)]


class Sleeper(ImageGenerator):
    def generate(self, n, seed):
        import time

        time.sleep(3600)


class Hog(ImageGenerator):
    def generate(self, n, seed):
        return np.ones((2**31,), np.float64)  # 16 GiB


class Flood(ImageGenerator):
    def generate(self, n, seed):
        return np.zeros((n, 2048, 2048), np.float32)  # within memory, beyond the output budget


def _policy(path, mri, extra=""):
    # the memorization check without its costly parts: these tests are about the sandbox, not the detector
    write_policy(path, mri["train"], mri["holdout"], n_samples=16,
                 params="{invariance: none, nuisance_copies: 0, null_splits: 2}")
    if extra:
        text = path.read_text().replace("    batch_size: 8\n", "    batch_size: 8\n" + extra)
        path.write_text(text)
    return path


def test_a_hostile_copier_cannot_patch_the_verdict_find_the_key_or_write_the_cache(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    private, public = A.generate_keypair()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "gate-signing.key").write_bytes(private)
    (keys / "gate-signing.pub").write_bytes(public)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from gate.imageio import read_image_folder

    np.save(tmp_path / "pool.npy", read_image_folder(mri["train"], "train").images)
    loot, cache = tmp_path / "loot" / "found.json", tmp_path / ".gate" / "cache"
    mv, _ = log_generator(HostileCopier(str(loot), str(cache)), "hostile", tracking_uri=uri,
                          artifacts={"pool": str(tmp_path / "pool.npy")})
    policy = _policy(tmp_path / "p.yaml", mri)
    monkeypatch.setenv("GATE_SIGNING_KEY", str(keys / "gate-signing.key"))  # also given by environment
    res = CliRunner().invoke(app, ["validate", "--model", f"models:/hostile/{mv.version}", "--tracking-uri", uri,
                                   "--policy", str(policy), "--out", str(tmp_path / "out"), "--quiet",
                                   "--signing-key", str(keys / "gate-signing.key")])
    assert res.exit_code == 1, res.output  # blocked: the patched verdict did not reach the gate
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["provenance"]["isolation"] == "bubblewrap"
    assert report["statement"]["sampling"]["device"] == report["provenance"]["model"]["sampler_device"] == "cpu"
    assert not loot.exists(), loot.read_text()  # the host's file system was not in view
    assert not (cache / "poison.npz").exists()
    # what was attested is the digest of what was downloaded and sampled, unchanged by the generator
    statement = A.verify((tmp_path / "out" / "attestation.dsse.json").read_text(),
                         A.TrustPolicy.from_files([keys / "gate-signing.pub"]))
    assert statement["predicate"]["verdict"] == "fail"
    assert statement["subject"][0]["digest"]["sha256"] == report["provenance"]["model"]["artifacts_sha256"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version("hostile", mv.version).tags["gate.verdict"] == "fail"


def test_inside_the_sandbox_nothing_of_the_gate_is_in_view(mri, tmp_path, monkeypatch):
    """Run the same loader in the sandbox directly and read what it found from its own output."""
    from gate.registry import download_model, resolve_model
    from gate.sandbox import SamplingPlan, SandboxLimits, sample_in_sandbox

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATE_WEBHOOK_SECRET", "whsec-do-not-leak")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(EnvironmentReporter(), "reporter", tracking_uri=uri)
    ref = resolve_model(f"models:/reporter/{mv.version}", uri)
    raw = sample_in_sandbox(download_model(ref, uri, tmp_path / "dl"), SamplingPlan("unconditional", 1, 0, 1),
                            SandboxLimits(timeout_s=120), BUBBLEWRAP)
    seen = json.loads(bytes(raw[0].astype(np.uint8).ravel()).rstrip(b"\0").decode())
    assert not [k for k in seen["env"] if k.startswith("GATE_")] and "MLFLOW_TRACKING_URI" not in seen["env"]
    assert "whsec-do-not-leak" not in json.dumps(seen)
    assert seen["pids"] <= 3  # its own PID namespace: no parent's argv to read
    assert not seen["cwd_files"] and not seen["work_visible"] and not seen["network"]
    assert seen["model_writable"] is False


class EnvironmentReporter(ImageGenerator):
    """Reports what it can see, encoded in its one output image."""

    def load_context(self, context):
        import socket

        net = False
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1).close()
            net = True
        except OSError:
            pass
        probe = Path(__file__).parent
        self.seen = {"env": dict(os.environ), "pids": len([p for p in os.listdir("/proc") if p.isdigit()]),
                     "cwd_files": [p for p in os.listdir(".") if p not in (".", "..")],
                     "work_visible": os.path.exists(str(probe)) and probe != Path("/"), "network": net,
                     "model_writable": os.access("/gate/model", os.W_OK)}

    def generate(self, n, seed):
        data = json.dumps(self.seen).encode()
        img = np.zeros(128 * 128, np.float32)
        img[:len(data)] = np.frombuffer(data, np.uint8)
        return img.reshape(1, 128, 128)  # out of [0, 1]: read raw, before the contract check


@pytest.mark.parametrize("generator, extra, needle", [
    (Sleeper(), "    timeout_s: 5\n", "timeout_s = 5 s"),
    (Hog(), "    max_memory_mb: 1536\n", "max_memory_mb = 1536"),
    (Flood(), "    max_output_mb: 8\n", "max_output_mb"),
], ids=["hangs", "memory-hungry", "floods-output"])
def test_a_generator_past_its_limits_is_stopped_with_one_clear_line(generator, extra, needle, mri, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(generator, "limited", tracking_uri=uri)
    policy = _policy(tmp_path / "p.yaml", mri, extra)
    res = CliRunner().invoke(app, ["validate", "--model", f"models:/limited/{mv.version}", "--tracking-uri", uri,
                                   "--policy", str(policy), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "gate: error:" in res.output, res.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_no_signature_without_isolation(mri, tmp_path, monkeypatch):
    """Without bubblewrap: unsigned runs proceed with a warning at level `process`; signing is refused
    before anything is sampled."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from gate.imageio import read_image_folder

    np.save(tmp_path / "pool.npy", read_image_folder(mri["novel"], "novel").images)
    mv, _ = log_generator(MarkedPool(str(tmp_path / "loot.json")), "plain", tracking_uri=uri,
                          artifacts={"pool": str(tmp_path / "pool.npy")})
    private, _public = A.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    policy = _policy(tmp_path / "p.yaml", mri)
    bin_dir = tmp_path / "bin"  # a PATH without bwrap
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    args = ["validate", "--model", f"models:/plain/{mv.version}", "--tracking-uri", uri, "--policy", str(policy),
            "--quiet"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "signed"), "--signing-key", str(tmp_path / "k.key")])
    assert res.exit_code == 2 and "refusing to sign" in res.output and "bubblewrap" in res.output, res.output
    assert not (tmp_path / "loot.json").exists()  # refused before the candidate ran
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "unsigned")])
    assert "without isolation" in res.output and res.exit_code == 0, res.output
    report = json.loads((tmp_path / "unsigned" / "report.json").read_text())
    assert report["provenance"]["isolation"] == "process" and (tmp_path / "loot.json").exists()
    assert not (tmp_path / "unsigned" / "attestation.dsse.json").exists()


def _npy_record(header: str) -> bytes:
    h = header.encode("latin1")
    h += b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + len(h).to_bytes(2, "little") + h


@pytest.mark.parametrize("shape", ["(-1, 1099511627776)", "(4611686018427387904, 4, 1)", "(0, -5)"])
def test_a_forged_record_header_cannot_lift_the_output_budget(shape):
    """A candidate can write to the protocol pipe itself: a negative or overflowing shape must not add
    to the budget (it once subtracted a negative size) nor pass as an empty batch."""
    import io

    from gate.sandbox import _RecordReader

    good = io.BytesIO()
    np.lib.format.write_array(good, np.zeros((8, 8), np.float32))
    forged = _npy_record(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}")
    stopped = []
    reader = _RecordReader(io.BytesIO(forged + good.getvalue()), 1000, 2, lambda _k: None, lambda: stopped.append(1))
    reader.run()
    assert reader.problem and not reader.records and reader.budget <= 1000 and stopped


def test_gate_files_inside_a_bound_folder_stay_hidden(mri, tmp_path, monkeypatch):
    """A working directory inside a folder the sandbox must bind (`WORKDIR /usr/src/app`; here: inside
    the Python prefix) is covered by an empty tmpfs: its .gate/ (keys, cache) is not in view."""
    import shutil
    import sys
    import uuid

    from gate.registry import download_model, resolve_model
    from gate.sandbox import SamplingPlan, SandboxLimits, sample_in_sandbox

    work = Path(sys.prefix) / f"gate-test-workdir-{uuid.uuid4().hex[:8]}"
    (work / ".gate" / "keys").mkdir(parents=True)
    try:
        (work / ".gate" / "keys" / "gate-signing.key").write_text("secret")
        monkeypatch.chdir(work)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        mv, _ = log_generator(PathProbe(str(work / ".gate" / "keys" / "gate-signing.key")), "probe", tracking_uri=uri)
        ref = resolve_model(f"models:/probe/{mv.version}", uri)
        raw = sample_in_sandbox(download_model(ref, uri, tmp_path / "dl"), SamplingPlan("unconditional", 1, 0, 1),
                                SandboxLimits(timeout_s=120), BUBBLEWRAP)
        assert float(raw[0].ravel()[0]) == 0.0  # 1.0 would mean the key file was readable
        assert float(raw[0].ravel()[1]) == 1.0  # and gate itself still imported (the prefix was re-bound)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class PathProbe(ImageGenerator):
    def __init__(self, path: str):
        self.path = path

    def generate(self, n, seed):
        import gate  # noqa: F401 - what the sampler itself needs

        img = np.zeros((1, 16, 16), np.float32)
        img[0, 0, 0] = float(os.path.exists(self.path))
        img[0, 0, 1] = 1.0
        return img
