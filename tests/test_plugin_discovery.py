"""Validators are found through the ``gate.validators`` entry points of installed distributions; a
third-party one that fails to import stops gate with exit 2 and its import error, never skipped."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import write_policy


def _fake_distribution(site: Path, name: str, entry: str) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gate.validators]\n{entry}\n")


def _gate(site: Path, *args, cwd: Path):
    env = dict(os.environ, PYTHONPATH=str(site))
    gate_bin = Path(sys.executable).with_name("gate")
    return subprocess.run([str(gate_bin), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True)


def test_broken_third_party_validator_is_an_error(tmp_path, mri):
    site = tmp_path / "site"
    _fake_distribution(site, "gate_broken_plugin", "broken = gate_broken_plugin_missing.module:Validator")
    policy = write_policy(tmp_path / "p.yaml", mri["train"])
    policy.write_text(policy.read_text().replace("validator: memorization", "validator: broken"))
    res = _gate(site, "validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "o", "-q",
                cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "validator 'broken' failed to load" in res.stderr
    assert "ModuleNotFoundError" in res.stderr and "gate_broken_plugin" in res.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    version = _gate(site, "--version", cwd=tmp_path)
    assert "validator broken: FAILED TO LOAD" in version.stdout
    assert "validator memorization: gate-mri" in version.stdout


def test_third_party_validator_registers_like_the_builtin(tmp_path, mri):
    site = tmp_path / "site"
    pkg = site / "gate_extra_check"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('''
import pandas as pd
from pydantic import BaseModel, ConfigDict
from gate.validators import CheckOutput, MetricDef

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = 1.0

class MeanIntensity:
    name = "mean_intensity"
    Params = Params
    columns = ("sample_id", "mean")
    metrics = (MetricDef("mean_max", "mean", "max", "largest mean intensity"),)

    def run(self, context, params):
        c = context.candidate
        return CheckOutput(pd.DataFrame({"sample_id": list(c.ids), "mean": c.images.mean((1, 2)) * params.scale}))
''')
    _fake_distribution(site, "gate_extra_check", "mean_intensity = gate_extra_check:MeanIntensity")
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {{name: extra, owner: tests}}
spec:
  data: {{train: {mri['train']}}}
  checks:
    - id: intensity
      validator: mean_intensity
      params: {{scale: 2.0}}
      rules:
        - {{metric: mean_max, lte: 0.01}}
""")
    res = _gate(site, "validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "o", "-q",
                cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr  # the third-party rule blocks
    assert "intensity.mean_max" in res.stdout
    schema = _gate(site, "schema", cwd=tmp_path)
    assert "Check_mean_intensity" in schema.stdout and "Check_memorization" in schema.stdout
