"""The quality validator end to end: measures, distribution metrics and the sensitivity self-test."""

import json

from typer.testing import CliRunner

from gate.cli import app


def test_quality_check_reports_its_sensitivity_and_downgrades_blind_metrics(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {{name: quality, owner: tests}}
spec:
  data: {{train: {mri['train']}, holdout: {mri['holdout']}}}
  checks:
    - id: quality
      validator: quality
      params: {{self_test_slices: 8}}
      rules:
        - {{metric: fber_mean, gt: 1000.0}}
        - {{metric: fber_mean, gt: 1000.0, pin: true, severity: warn}}
        - {{metric: fid_ratio, lte: 1000.0}}
""")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    check = report["checks"][0]
    assert check["status"] == "ok", check["error"]
    rho = check["diagnostics"]["sensitivity_rho"]
    # noise, blur and bias field are each seen by at least one measure with |rho| >= 0.9
    for pert in ("gaussian_noise", "blur", "bias_field"):
        assert max(abs(rho[m][pert]) for m in rho) >= 0.9, pert
    # FBER is undefined (-1) on skull-stripped slices: blind to everything, so its block rule only warns
    assert "fber_mean" in check["diagnostics"]["insensitive_metrics"]
    blind, pinned, ratio = check["rules"]
    assert blind["severity"] == "warn" and blind["downgraded"] and not blind["passed"]
    assert pinned["downgraded"] is None
    assert ratio["passed"] and check["metrics"]["fid_ratio"] is not None
    assert res.exit_code == 0, res.output  # the failed rule was downgraded, nothing else blocks
    assert "Sensitivity of each metric" in (tmp_path / "out" / "report.html").read_text()


def test_bench_iqa_prints_the_sensitivity_matrix(tmp_path, mri):
    import subprocess
    import sys
    from pathlib import Path

    gate_bin = str(Path(sys.executable).with_name("gate"))
    res = subprocess.run([gate_bin, "bench", "iqa", "--data", str(mri["holdout"]), "--slices", "4"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ")}
    assert {"snr", "niqe", "fid", "coverage"} <= set(rows)
    header = [c.strip() for c in res.stdout.splitlines()[0].split("|")[2:-1]]
    assert {"gaussian_noise", "blur", "bias_field", "memorisation", "mode_collapse"} <= set(header)
    assert "insensitive to every perturbation" in res.stdout
