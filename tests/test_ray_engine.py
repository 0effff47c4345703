"""The Ray engine on a simulated two-node cluster (ray.cluster_utils.Cluster, started and stopped here): the
memorization check's per-sample table equals the local engine's, joined through RAY_ADDRESS, and a worker
killed mid-job changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, write_policy

ray = pytest.importorskip("ray", reason="the Ray engine is the gate-mri[ray] extra; CI installs it")
from ray.cluster_utils import Cluster  # noqa: E402

#: dihedral matching on the query side (views of every query, sharded search of the train rows), verification
#: against a holdout, nuisance whitening: every path the engine takes
PARAMS = ("{match_side: query, nuisance_copies: 1, nuisance_images: 16, null_splits: 2, verify_k: 1, "
          "self_check: false, power: null}")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _validate(policy: Path, samples: Path, out: Path, engine: str, ray_address: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address  # Ray's own convention: the child joins this cluster
    gate = Path(sys.executable).with_name("gate")
    return subprocess.run([str(gate), "validate", "--policy", str(policy), "--samples", str(samples), "--out", str(out),
                           "--engine", engine, "--quiet", "--json"], capture_output=True, text=True, env=env,
                          cwd=out.parent, timeout=900)


def test_ray_engine_gives_the_local_table_on_two_nodes(cluster, mri, tmp_path):
    policy = write_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], params=PARAMS)
    local = _validate(policy, mri["copies"], tmp_path / "local", "local")
    assert local.returncode == 1, local.stderr  # the copies are refused
    remote = _validate(policy, mri["copies"], tmp_path / "ray", "ray", cluster.address)
    assert remote.returncode == 1, remote.stderr
    a = pd.read_csv(tmp_path / "local" / "samples" / "memorization.csv")
    b = pd.read_csv(tmp_path / "ray" / "samples" / "memorization.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 24
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(b[col], a[col], rtol=1e-4, atol=1e-5, err_msg=col)
        else:
            assert a[col].tolist() == b[col].tolist(), col
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    check = next(c for c in report["checks"] if c["id"] == "memorization")
    engine = check["provenance"]["engine"]
    assert engine["engine"] == "ray" and engine["nodes"] == 2 and engine["workers"] == 2
    assert check["provenance"]["search"]["kind"] == "sharded" and check["provenance"]["search"]["shards"] == 2
    assert check["provenance"]["match_side"] == "query"


def _extractor_actor_pids() -> list[int]:
    """Processes of Ray Data's extractor actors, by the title Ray gives an actor's worker process."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"_ExtractBatches" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def test_a_worker_killed_mid_job_does_not_change_the_features(cluster, mri):
    """An extractor actor's process is killed (SIGKILL) after the first batch comes back: Ray Data restarts
    it and retries the batches it held, and every feature equals the local engine's."""
    from gate_plugins.toolkit.engines import ExtractorSpec, build_engine
    from gate_plugins.toolkit.extractors import build_extractor

    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        images = np.concatenate([mri["train_images"]] * 2)  # 192 images: 48 batches of 4
        ext = build_extractor("efficientnet-lite0", None, 2.0)
        engine = build_engine("ray", ext, ExtractorSpec("efficientnet-lite0", None, 2.0, "cpu"), 2)
        killed: list[int] = []

        def kill_one(_n: int) -> None:
            if not killed:
                pids = _extractor_actor_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])

        got = engine.extract(images, 4, kill_one)
        assert killed, "no extractor actor was found to kill"
        want = ext.extract(images, 16, lambda _n: None)
        for layer in ext.layers:
            np.testing.assert_allclose(got[layer], want[layer], rtol=1e-4, atol=1e-5)
    finally:
        ray.shutdown()
