"""``gate validate --samples``: verdicts, exit codes and every report file, on real-template MRI."""

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import REPO, write_policy
from gate.cli import app

runner = CliRunner()


def gate(*args):
    return runner.invoke(app, list(map(str, args)))


@pytest.fixture
def policy(tmp_path, mri):
    return write_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"])


def test_copies_are_blocked_and_every_report_is_written(tmp_path, mri, policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", out, "--json")
    assert res.exit_code == 1, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail" and report["blocking"] is True
    check = report["checks"][0]
    # --json: stdout is the document alone, and it says what report.json says
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "fail" and doc["exit_code"] == 1 and doc["promotion"] is None
    assert doc["checks"][0]["metrics"] == check["metrics"]
    assert [(r["metric"], r["passed"]) for r in doc["checks"][0]["rules"]] == [("fraction_flagged", False)]
    assert doc["reports"]["report.json"] == str(out / "report.json")
    assert check["metrics"]["fraction_flagged"] > 0.5
    flagged = check["diagnostics"]["flagged_samples"]
    assert len(flagged) == check["metrics"]["n_flagged"]
    assert all(f["sample_id"] == f"copy_of_{f['nn_train_id']}" and f["transform"] == "rot0" for f in flagged)
    assert check["rules"][0]["passed"] is False and check["rules"][0]["gx_success"] is False
    prov = report["provenance"]
    assert prov["policy_sha256"] and prov["libraries"]["mlflow"] and prov["seeds"]["candidate"] == 0
    assert {d["name"] for d in prov["data"]} == {"train", "holdout", "candidate"}
    assert all(len(f["sha256"]) == 64 for d in prov["data"] for f in d["files"])
    assert len(check["provenance"]["extractor_weights_sha256"]) == 64
    table = pd.read_csv(out / "samples" / "memorization.csv")
    assert list(table.columns[:6]) == ["sample_id", "similarity", "mi", "oni", "nn_train_id", "consensus"]
    # each copy's nearest train image is its source
    assert (table["nn_train_id"] == table["sample_id"].str.replace("copy_of_", "")).mean() > 0.9
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("failures") == "1"
    html = (out / "report.html").read_text()
    assert "FAIL" in html and "data:image/png;base64," in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    assert "❌" in (out / "summary.md").read_text()
    from pypdf import PdfReader

    pages = PdfReader(out / "report.pdf").pages
    first = " ".join(pages[0].extract_text().split())
    pdf = " ".join(" ".join(pg.extract_text() for pg in pages).split())
    # page 1 says why in words and shows the evidence: the flagged samples beside their nearest train images
    assert "REFUSED" in first and "must not be promoted" in first and prov["policy_sha256"] in first
    assert "memorization.fraction_flagged" in first and "What this means" in first and "What to do" in first
    assert "not signed" in first and len(pages[0].images) == 1
    # every check's status comes from its rules: the check whose block rule failed is headed FAIL, never ok
    assert "check memorization (memorization): FAIL" in pdf and "(memorization): OK" not in pdf
    assert "Not signed" in pdf and "Appendix A. Policy" in pdf
    gx = json.loads((out / "gx_validation.json").read_text())
    assert gx["suites"]["memorization.samples"]["success"] is False
    # gate report renders the same HTML again from the folder alone (figures included)
    res = gate("report", out, "--out", tmp_path / "again")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "report.html").read_text() == html
    assert (tmp_path / "again" / "summary.md").read_text() == (out / "summary.md").read_text()
    again = " ".join(" ".join(pg.extract_text() for pg in PdfReader(tmp_path / "again" / "report.pdf").pages).split())
    assert "REFUSED" in again and not (tmp_path / "again" / "report.json").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text('{"verdict": "pass"}')
    res = gate("report", tmp_path / "bad")
    assert res.exit_code == 2 and "not a gate report" in res.output
    assert not list(out.glob(".staging-*"))


def test_novel_samples_pass(tmp_path, mri, policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = gate("validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert report["checks"][0]["metrics"]["fraction_flagged"] <= 0.05


def test_audit_mode_records_but_does_not_block(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mode="audit")
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["blocking"] is False


def test_validator_error_fails_closed_with_exit_3(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], params="{extractor: mri-core}")
    res = gate("validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 3, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "error" and report["blocking"] is True
    assert "MRI-CORE checkpoint not found" in report["checks"][0]["error"]
    assert ET.parse(tmp_path / "out" / "junit.xml").getroot().find("testsuite").get("errors") == "1"


def test_no_rules_only_records(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], rules="")
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["checks"][0]["rules"] == [] and report["checks"][0]["metrics"]["mi_max"] > 3


@pytest.mark.parametrize("case", ["nan", "size", "empty", "policy_key"])
def test_bad_input_is_one_line_exit_2_and_no_report(tmp_path, mri, policy, monkeypatch, case):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    samples = tmp_path / "samples"
    samples.mkdir()
    if case == "nan":
        img = np.load(next(mri["novel"].glob("*.npy")))
        img[5, 5] = np.nan
        np.save(samples / "broken.npy", img)
        expect = "broken.npy: 1 non-finite"
    elif case == "size":
        np.save(samples / "small.npy", np.zeros((64, 64), np.float32))
        expect = "candidate images are 64x64 but train images are 128x128"
    elif case == "empty":
        expect = "holds no images"
    else:
        policy.write_text(policy.read_text().replace("    seed: 0", "    sed: 0"))
        np.save(samples / "x.npy", np.zeros((128, 128), np.float32))
        expect = f"{policy}:10: spec.candidate.sed: Extra inputs are not permitted"
    res = gate("validate", "--policy", policy, "--samples", samples, "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gate: error:") and expect in lines[0], res.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_schema_command_prints_the_committed_schema():
    res = gate("schema")
    assert res.exit_code == 0
    assert json.loads(res.output) == json.loads((REPO / "policies" / "policy.schema.json").read_text())


def test_needs_exactly_one_candidate(tmp_path, policy):
    res = gate("validate", "--policy", policy, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "exactly one candidate" in res.output


def test_rules_on_set_level_baselines_are_checked_by_gate_and_gx(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = """
        - metric: ct
          gt: -2.0
          severity: block
        - metric: fid
          gte: 0.0
          severity: warn"""
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], rules=rules)
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ct, fid = report["checks"][0]["rules"]
    assert ct["metric"] == "ct" and ct["value"] < -2 and not ct["passed"] and ct["gx_success"] is False
    assert fid["passed"] and fid["gx_success"] is True
    gx = json.loads((tmp_path / "out" / "gx_validation.json").read_text())
    assert gx["suites"]["memorization.scalars"]["success"] is False


def test_a_rule_on_a_metric_that_cannot_be_computed_fails_closed(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = """
        - metric: ct
          lte: 100.0
          severity: block"""
    policy = write_policy(tmp_path / "p.yaml", mri["train"], rules=rules)  # no holdout: C_T is undefined
    res = gate("validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 3, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rule = report["checks"][0]["rules"][0]
    assert rule["value"] is None and rule["passed"] is False
    assert report["verdict"] == "error" and "metric ct could not be computed" in report["checks"][0]["error"]


def test_self_check_runs_on_every_validation(tmp_path, mri, policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = gate("validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    sc = check["diagnostics"]["self_check"]
    assert sc["passed"] and sc["n_planted"] == 48 and sc["planted_flagged"] == 48 and sc["n_novel"] == 48
    assert check["diagnostics"]["calibration"] == "holdout"


def test_failed_self_check_blocks_but_keeps_the_metrics(tmp_path, mri, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    small = tmp_path / "small_holdout"
    small.mkdir()
    for f in sorted(mri["holdout"].glob("*.npy"))[:10]:
        shutil.copy(f, small / f.name)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], small)
    res = gate("validate", "--policy", policy, "--samples", mri["novel"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 3, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    check = report["checks"][0]
    assert report["verdict"] == "error" and check["status"] == "error"
    assert "self-check failed" in check["error"] and "too coarse" in check["error"]
    assert check["metrics"]["mi_mean"] is not None and check["rules"][0]["value"] is not None


def test_without_a_holdout_the_self_check_uses_planted_copies_only(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = write_policy(tmp_path / "p.yaml", mri["train"])
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 1, res.output
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    assert check["diagnostics"]["calibration"] == "train_halves"
    assert check["diagnostics"]["self_check"]["n_novel"] == 0 and check["diagnostics"]["self_check"]["passed"]


def test_a_missing_version_in_the_embedded_store_says_no_tracking_uri_was_given(tmp_path, mri, policy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = gate("validate", "--policy", policy, "--model", "models:/brain-gen/7", "--quiet")
    assert res.exit_code == 2, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("gate: error:"))
    assert "no such model version" in line and "no --tracking-uri was given" in line, res.output


def test_the_python_api_returns_the_report_it_wrote(tmp_path, mri, monkeypatch):
    import gate as gate_api

    monkeypatch.chdir(tmp_path)
    # the detector's cheapest honest settings: the API is under test here, not the detector
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"],
                          params="{self_check: false, verify_k: 0, null_splits: 2, power: null}")
    result = gate_api.validate(policy, samples=mri["copies"], out=tmp_path / "api")
    assert result.report.verdict == "fail" and int(result.exit_code) == 1 and not result.promoted
    written = json.loads((tmp_path / "api" / "report.json").read_text())
    assert written["verdict"] == "fail" and written["checks"][0]["metrics"] == result.report.checks[0].metrics
    with pytest.raises(Exception) as info:  # bad input is a GateError with the CLI's exit code
        gate_api.validate(tmp_path / "missing.yaml", samples=mri["copies"], out=tmp_path / "x")
    assert int(info.value.exit_code) == 2 and "missing.yaml" in str(info.value)
