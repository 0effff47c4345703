"""The composite action and the example workflow pass actionlint (an offline wheel), a wrong input is
caught by it, and the action's step script talks to the runner through its files."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import CHEAP_MEMORIZATION, REPO, write_policy

ACTIONLINT = str(Path(sys.executable).with_name("actionlint"))


def test_actionlint_passes_on_the_action_and_the_workflows():
    res = subprocess.run([ACTIONLINT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (REPO / ".github" / "actions" / "gate" / "action.yml").is_file()


def test_actionlint_checks_the_inputs_of_the_local_action(tmp_path):
    shutil.copytree(REPO / ".github" / "actions", tmp_path / ".github" / "actions")
    (tmp_path / ".github" / "workflows").mkdir()
    workflow = (REPO / ".github" / "workflows" / "validate-model.yml").read_text()
    (tmp_path / ".github" / "workflows" / "w.yml").write_text(workflow.replace("policy: ", "polcy: "))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    res = subprocess.run([ACTIONLINT], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and 'input "polcy" is not defined' in res.stdout


def _step(tmp_path, samples, policy):
    out, summary = tmp_path / "GITHUB_OUTPUT", tmp_path / "GITHUB_STEP_SUMMARY"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "GITHUB_OUTPUT": str(out),
           "GITHUB_STEP_SUMMARY": str(summary), "GATE_POLICY": str(policy), "GATE_SAMPLES": str(samples),
           "GATE_OUT": str(tmp_path / "report"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run([sys.executable, "-m", "gate.github_step"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines()) if out.exists() else {}
    return res, outputs, summary.read_text() if summary.exists() else ""


def test_step_script_writes_outputs_summary_and_one_annotation_per_failed_block_rule(tmp_path, mri):
    policy = write_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], params=CHEAP_MEMORIZATION)
    (tmp_path / "pass").mkdir()
    res, outputs, summary = _step(tmp_path / "pass", mri["novel"], policy)
    assert res.returncode == 0, res.stdout + res.stderr
    assert outputs["verdict"] == "pass" and outputs["report-path"].endswith("report.html")
    assert "pass" in summary.lower() and "::error" not in res.stdout

    (tmp_path / "fail").mkdir()
    res, outputs, summary = _step(tmp_path / "fail", mri["copies"], policy)
    assert res.returncode == 1
    assert outputs["verdict"] == "fail" and "fraction_flagged" in summary
    errors = [line for line in res.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and f"file={policy}".replace(":", "%3A") in errors[0] and ",line=" in errors[0]
    assert "memorization.fraction_flagged" in errors[0]

    (tmp_path / "bad").mkdir()
    res, outputs, summary = _step(tmp_path / "bad", tmp_path / "no-such-folder", policy)
    assert res.returncode == 2 and outputs["verdict"] == "error"
    assert any(line.startswith("::error title=gate::") and "no-such-folder" in line for line in res.stdout.splitlines())
