"""spec.compute.device: auto takes a CUDA GPU when torch sees one and falls back to the CPU here, with the
same features as before; a CUDA device that is not there is refused before anything runs; the report says
where its numbers were computed."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate.cli import app
from gate.errors import ConfigError
from gate_plugins.toolkit.device import describe, resolve_device
from gate_plugins.toolkit.extractors import build_extractor

runner = CliRunner()


def test_auto_is_cuda_when_torch_sees_one_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") and describe(torch.device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="spec.compute.device: cuda:99 asked for, but torch sees"):
        resolve_device("cuda:99")
    with pytest.raises(ConfigError, match="is not auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_features_on_the_resolved_device_equal_the_cpu_features(mri):
    images = mri["train_images"][:6]
    before = build_extractor("efficientnet-lite0", prefilter_sigma=2.0).extract(images)
    here = build_extractor("efficientnet-lite0", prefilter_sigma=2.0, device=str(resolve_device("auto")))
    after = here.extract(images)
    tolerance = 0 if here.device.type == "cpu" else 1e-4  # another device's arithmetic differs in the last bits
    assert all(np.allclose(before[k], after[k], rtol=tolerance, atol=tolerance) for k in before)


def _policy(path, mri, device):
    policy = write_policy(path, mri["train"], mri["holdout"], params=CHEAP_MEMORIZATION)
    policy.write_text(policy.read_text().replace("spec:\n", f"spec:\n  compute: {{device: {device!r}}}\n"))
    return policy


def test_a_missing_cuda_device_is_refused_before_anything_runs(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["validate", "--policy", str(_policy(tmp_path / "p.yaml", mri, "cuda:99")),
                              "--samples", str(mri["copies"]), "--out", str(tmp_path / "out"), "--quiet"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "spec.compute.device: cuda:99 asked for" in lines[0]
    assert not (tmp_path / "out" / "report.json").exists()
    res = runner.invoke(app, ["validate", "--policy", str(_policy(tmp_path / "q.yaml", mri, "gpu")),
                              "--samples", str(mri["copies"]), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2 and "compute.device" in res.output


def test_the_report_records_the_device_auto_chose(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["validate", "--policy", str(_policy(tmp_path / "p.yaml", mri, "auto")),
                              "--samples", str(mri["copies"]), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1, res.output
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    assert check["provenance"]["device"] == describe(resolve_device("auto"))
