"""pyiqa through the optional extra. The tests that need pyiqa run in its own environment
(`.venv-pyiqa`, built by `.ci/run`: torch 2.14.1 + torchvision, which the main environment must not
get); the main environment checks the clear errors a user without the extra meets."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_check_policy
from gate.cli import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would spend ~47 s retrying before failing
HAS_PYIQA = importlib.util.find_spec("pyiqa") is not None
needs_pyiqa = pytest.mark.skipif(not HAS_PYIQA, reason="needs the pyiqa extra: .ci/run runs this file in .venv-pyiqa")


def _policy(tmp_path, mri, params: str, rules: str = "[]") -> Path:
    return write_check_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], "quality", params=params,
                              rules=rules)


def _run(tmp_path, mri, policy):
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    report = tmp_path / "out" / "report.json"
    return res, (json.loads(report.read_text()) if report.exists() else None)


def test_niqe_or_brisque_without_local_weights_is_a_policy_error(tmp_path, mri):
    for metric in ("niqe", "brisque"):
        res, report = _run(tmp_path, mri, _policy(tmp_path, mri, f"{{pyiqa: [{metric}]}}"))
        assert res.exit_code == 2 and report is None
        assert f"params.pyiqa_weights.{metric}" in res.output and "never downloads" in res.output
        assert "p.yaml:" in res.output  # names the policy line


@pytest.mark.skipif(HAS_PYIQA, reason="checks the message a user without the extra gets")
def test_without_the_extra_a_pyiqa_metric_blocks_with_the_install_hint(tmp_path, mri):
    res, report = _run(tmp_path, mri, _policy(tmp_path, mri, "{pyiqa: [piqe], self_test: false}"))
    assert res.exit_code != 0
    check = report["checks"][0]
    assert check["status"] == "error" and "gate-mri[pyiqa]" in check["error"] and "PolyForm" in check["error"]
    assert report["verdict"] != "pass"


@needs_pyiqa
def test_piqe_entropy_and_a_locally_fitted_niqe_run_offline_and_prove_their_sensitivity(tmp_path, mri):
    gate_bin = str(Path(sys.executable).with_name("gate"))
    mat = tmp_path / "niqe_mri.mat"
    fit = subprocess.run([gate_bin, "fit-niqe", "--data", str(mri["train"]), "--out", str(mat)],
                         capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0 and mat.is_file(), fit.stderr[-2000:]
    params = f"{{pyiqa: [piqe, entropy, niqe], pyiqa_weights: {{niqe: {mat}}}, self_test_slices: 8}}"
    res, report = _run(tmp_path, mri, _policy(tmp_path, mri, params, "[{metric: pyiqa_niqe_mean, lte: 1000.0}]"))
    check = report["checks"][0]
    assert check["status"] == "ok", check["error"]
    for m in ("piqe", "entropy", "niqe"):
        assert 0 < check["metrics"][f"pyiqa_{m}_mean"] < 1000
    assert check["provenance"]["pyiqa_version"] == "0.1.16"
    assert len(check["provenance"]["pyiqa_weights_sha256"]["niqe"]) == 64
    rho = check["diagnostics"]["sensitivity_rho"]
    assert abs(rho["pyiqa_niqe"]["gaussian_noise"]) >= 0.9  # it must earn its place like every other metric
    samples = (tmp_path / "out" / "samples" / "quality.csv").read_text().splitlines()[0]
    assert "pyiqa_piqe" in samples and "pyiqa_niqe" in samples
    assert res.exit_code == 0, res.output


@needs_pyiqa
def test_a_weights_file_that_is_missing_or_wrong_is_named(tmp_path, mri):
    bad = tmp_path / "not-a-mat.mat"
    bad.write_text("garbage")
    for path, message in ((tmp_path / "absent.mat", "is not a file"), (bad, "could not be created from")):
        params = f"{{pyiqa: [niqe], pyiqa_weights: {{niqe: {path}}}, self_test: false}}"
        res, report = _run(tmp_path, mri, _policy(tmp_path, mri, params))
        check = report["checks"][0]
        assert check["status"] == "error" and message in check["error"] and str(path) in check["error"]
        assert res.exit_code != 0
