"""The README's main job (``gate demo``) and the benchmark command, run as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import REPO

GATE = str(Path(sys.executable).with_name("gate"))


def test_demo_promotes_honest_generators_and_refuses_the_copier_and_the_broken_anatomy(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") or k == "MLFLOW_DISABLE_TELEMETRY"}
    res = subprocess.run([GATE, "demo", "--quiet", "--policy", str(REPO / "policies" / "default.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=1500, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "refused" in res.stdout and "promoted" in res.stdout
    uri = f"sqlite:///{tmp_path / '.gate' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    verdicts = {v: client.get_model_version("brain-slice-generator", v).tags["gate.verdict"] for v in "1234"}
    assert verdicts == {"1": "pass", "2": "fail", "3": "pass", "4": "fail"}
    modes = {v: client.get_model_version("brain-slice-generator", v).tags["gate.generator_mode"] for v in "1234"}
    assert modes == {"1": "paired", "2": "paired", "3": "conditional", "4": "conditional"}
    aliases = client.get_registered_model("brain-slice-generator").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "3"}  # sqlite stores give ints

    def checks(v):
        report = json.loads((tmp_path / ".gate" / "demo" / "reports" / f"v{v}" / "report.json").read_text())
        return {c["id"]: c for c in report["checks"]}

    def blocked(check):
        assert check["status"] == "ok", check["error"]
        return [r["metric"] for r in check["rules"] if r["severity"] == "block" and not r["passed"]]

    copier, faithful, broken = checks(2), checks(3), checks(4)
    assert blocked(copier["memorization"]) and not blocked(copier["segmentation"])
    assert not any(blocked(c) for c in faithful.values())
    # the study's central finding: images as clean as the faithful renderer's, anatomy off its labels
    assert not blocked(broken["quality"]) and not blocked(broken["memorization"])
    assert blocked(broken["segmentation"]) == ["dice_drop_upper"]
    assert broken["segmentation"]["metrics"]["dice_drop"] > 0.1 > faithful["segmentation"]["metrics"]["dice_drop"]
    assert faithful["segmentation"]["diagnostics"]["baseline_cache_hit"]  # the real-only baseline ran once
    assert faithful["quality"]["metrics"]["fid_ratio"] == pytest.approx(broken["quality"]["metrics"]["fid_ratio"],
                                                                        rel=0.5)


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
