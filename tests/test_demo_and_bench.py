"""The README's main job (``gate demo``) and the benchmark command, run as a user would."""

import subprocess
import sys
from pathlib import Path

import mlflow

from conftest import REPO

GATE = str(Path(sys.executable).with_name("gate"))


def test_demo_promotes_the_honest_generator_and_refuses_the_copier(tmp_path):
    res = subprocess.run([GATE, "demo", "--quiet", "--policy", str(REPO / "policies" / "default.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "no (refused)" in res.stdout
    uri = f"sqlite:///{tmp_path / '.gate' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = client.get_registered_model("brain-slice-generator").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1"}  # sqlite stores give ints
    assert client.get_model_version("brain-slice-generator", "2").tags["gate.verdict"] == "fail"
    for v in ("v1", "v2"):
        assert (tmp_path / ".gate" / "demo" / "reports" / v / "report.html").is_file()


def test_bench_memorization_prints_the_tables(tmp_path, mri):
    res = subprocess.run([GATE, "bench", "memorization", "--train", str(mri["train"]), "--test",
                          str(mri["holdout"]), "--holdout", str(mri["novel"]), "--paper-conditions-only"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ")}
    # copies are ranked above every novel slice at every duplication level, flipped ones only with
    # dihedral matching (first column: efficientnet-lite0, dihedral; second: the paper's plain matching)
    for cond in ("clean", "noise_0.01", "intensity", "hflip", "vflip"):
        assert rows[cond].split("|")[3].strip().startswith("1.000 / 1.000"), rows[cond]
    assert not rows["vflip"].split("|")[4].strip().startswith("1.000 / 1.000")
    assert "img/s" in res.stdout and "45%" in res.stdout
