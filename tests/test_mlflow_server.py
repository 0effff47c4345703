"""End to end against a real ``mlflow server`` (sqlite backend) on 127.0.0.1: an honest generator is
promoted, a copying one is refused, and bad references fail with one line and exit code 2."""

import hashlib
import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, free_port, log_honest_and_copier, write_policy
from gate.cli import app
from gate.generator import ImageGenerator, log_generator

runner = CliRunner()
NAME = "brain-gen"


class WrongShapeGenerator(ImageGenerator):
    def generate(self, n, seed):
        return np.zeros((n, 3, 128, 128), np.float32)


@pytest.fixture(scope="module")
def versions(server, mri, tmp_path_factory):
    logged = log_honest_and_copier(server, tmp_path_factory.mktemp("art"), NAME)
    assert np.array_equal(logged["train_images"], mri["train_images"])  # the copier copies the fixture's train
    broken, _ = log_generator(WrongShapeGenerator(), "broken-gen", tracking_uri=server)
    return {**logged, "broken": broken.version}


@pytest.fixture
def policy(tmp_path, mri):
    return write_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], n_samples=16,
                        params=CHEAP_MEMORIZATION)


def gate(*args):
    return runner.invoke(app, list(map(str, args)))


def test_honest_generator_is_promoted_and_copier_refused(server, versions, policy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)

    res = gate("promote", "--model", f"models:/{NAME}/{versions['honest']}", "--tracking-uri", server,
               "--policy", policy, "--out", tmp_path / "honest", "--quiet")
    assert res.exit_code == 0, res.output
    assert "promoted" in res.output
    assert client.get_registered_model(NAME).aliases == {"champion": str(versions["honest"])}
    tags = client.get_model_version(NAME, str(versions["honest"])).tags
    assert tags["gate.verdict"] == "pass"
    assert tags["gate.report_sha256"] == hashlib.sha256((tmp_path / "honest" / "report.json").read_bytes()).hexdigest()
    assert tags["gate.policy"].startswith("test-policy@sha256:")
    run = client.get_run(tags["gate.run_id"])
    assert run.data.tags["gate.verdict"] == "pass" and "memorization.fraction_flagged" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "gate"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "gate")}
    assert {"gate/report.json", "gate/report.html", "gate/junit.xml", "gate/summary.md", "gate/samples"} <= logged
    report = json.loads((tmp_path / "honest" / "report.json").read_text())
    assert report["provenance"]["model"]["version"] == str(versions["honest"])
    assert report["provenance"]["model"]["source"].endswith("/artifacts/generator")  # the run's artifacts
    assert len(report["provenance"]["model"]["artifacts_sha256"]) == 64  # of the files that were sampled
    assert report["provenance"]["isolation"] == "bubblewrap"
    assert report["provenance"]["mlflow_run_id"] == run.info.run_id

    res = gate("promote", "--model", f"models:/{NAME}/{versions['copier']}", "--tracking-uri", server,
               "--policy", policy, "--out", tmp_path / "copier", "--quiet")
    assert res.exit_code == 1, res.output
    assert "refused" in res.output
    assert client.get_registered_model(NAME).aliases == {"champion": str(versions["honest"])}
    refused = client.get_model_version(NAME, str(versions["copier"]))
    assert refused.tags["gate.verdict"] == "fail"
    # MLflow's own pages say it first: the version's description opens with the verdict and why, linked to the
    # run; the run is named, described and ended by the verdict, so a refusal is not a green "Finished"
    first = refused.description.split("\n")[1]
    assert first.startswith("**gate: REFUSED: this version must not be promoted.** memorization.fraction_flagged")
    failed_run = client.get_run(refused.tags["gate.run_id"])
    assert f"#/experiments/{failed_run.info.experiment_id}/runs/{failed_run.info.run_id}" in first
    assert failed_run.info.status == "FAILED" and failed_run.info.run_name.endswith("[FAIL]")
    assert f"#/models/{NAME}/versions/{versions['copier']}" in failed_run.data.tags["mlflow.note.content"]
    assert client.get_run(tags["gate.run_id"]).info.status == "FINISHED"
    passed = client.get_model_version(NAME, str(versions["honest"])).description
    assert passed.split("\n")[1].startswith("**gate: PASSED")
    # the owner's own description is kept below gate's paragraph, which a new validation replaces
    client.update_model_version(NAME, str(versions["copier"]), description=refused.description + "\n\nOwner notes.")
    # gate compare: the two versions' last validations side by side; the copier is worse on the block rule
    res = gate("compare", f"models:/{NAME}@champion", f"models:/{NAME}/{versions['copier']}", "--tracking-uri",
               server, "--json")
    comparison = json.loads(res.stdout)
    assert comparison["baseline"] == f"models:/{NAME}/{versions['honest']} (champion)"
    row = next(r for r in comparison["rows"] if r["metric"] == "memorization.fraction_flagged")
    assert row["better"] == "lower" and row["difference"] > 0.5 and row["regression"] is False  # no tolerance set
    assert res.exit_code == 0

    # an alias resolves to its version
    res = gate("validate", "--model", f"models:/{NAME}@champion", "--tracking-uri", server, "--policy", policy,
               "--out", tmp_path / "alias", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "alias" / "report.json").read_text())["provenance"]["model"]["version"] == \
        str(versions["honest"])


def test_promote_refuses_to_replace_a_champion_that_scores_better_unless_allowed(server, versions, mri, tmp_path,
                                                                               monkeypatch):
    """A lenient policy passes the copier too (fraction_flagged <= 1 always holds), but the honest champion
    scores better on that block rule by far more than its regression_tolerance: the copier does not take @champion
    without --allow-regression, and the refusal names the version, the rule and both values."""
    monkeypatch.chdir(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    lenient = write_policy(tmp_path / "lenient.yaml", mri["train"], mri["holdout"], n_samples=16,
                           params=CHEAP_MEMORIZATION, rules="""
        - metric: fraction_flagged
          lte: 1.0
          severity: block
          regression_tolerance: 0.05""")
    honest, copier = f"models:/{NAME}/{versions['honest']}", f"models:/{NAME}/{versions['copier']}"
    res = gate("promote", "--model", honest, "--tracking-uri", server, "--policy", lenient, "--out",
               tmp_path / "h", "--quiet", "--allow-regression")
    assert res.exit_code == 0, res.output
    res = gate("promote", "--model", copier, "--tracking-uri", server, "--policy", lenient, "--out",
               tmp_path / "c", "--quiet", "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)  # stdout is the document alone, even against a server (no "View run" line)
    assert doc["verdict"] == "pass" and doc["promotion"]["promoted"] is False
    assert doc["promotion"]["champion_version"] == str(versions["honest"])
    [worse] = doc["promotion"]["regressions"]
    assert worse["rule"] == "memorization.fraction_flagged" and worse["direction"] == "lower"
    assert worse["candidate"] - worse["champion"] > 0.5
    assert client.get_registered_model(NAME).aliases == {"champion": str(versions["honest"])}

    # one gate paragraph (this validation's, with the regression) above the owner's own notes
    description = client.get_model_version(NAME, str(versions["copier"])).description
    assert description.count("<!-- gate:start -->") == 1 and description.endswith("Owner notes.")
    assert "(a regression)" in description and "PASSED, but worse than models" in description
    # the comparison is in the report itself, and on the PDF's page 1 and its change section
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["comparison"]["baseline"] == f"models:/{NAME}/{versions['honest']} (@champion)"
    assert report["comparison"]["regressions"][0].startswith("memorization.fraction_flagged")
    assert report["comparison"]["baseline_report_sha256"] == hashlib.sha256((tmp_path / "h" / "report.json")
                                                                            .read_bytes()).hexdigest()
    from pypdf import PdfReader

    pdf = " ".join(" ".join(p.extract_text() for p in PdfReader(tmp_path / "c" / "report.pdf").pages).split())
    assert "5. Change against the current champion" in pdf and "REGRESSION" in pdf
    # gate compare on the two report folders agrees, and exits 1 on the regression
    res = gate("compare", tmp_path / "h", tmp_path / "c")
    assert res.exit_code == 1 and "regression" in res.output and "memorization.fraction_flagged" in res.output
    res = gate("compare", tmp_path / "h", tmp_path / "nowhere")
    assert res.exit_code == 2 and "neither a report folder" in res.output

    res = gate("promote", "--model", copier, "--tracking-uri", server, "--policy", lenient, "--out",
               tmp_path / "c2", "--quiet")
    assert res.exit_code == 1 and f"version {versions['honest']}, which holds it, scores better: " \
        "memorization.fraction_flagged" in res.output and "--allow-regression" in res.output, res.output
    res = gate("promote", "--model", copier, "--tracking-uri", server, "--policy", lenient, "--out",
               tmp_path / "c3", "--quiet", "--allow-regression")
    assert res.exit_code == 0 and f"(it held version {versions['honest']})" in res.output, res.output
    assert client.get_registered_model(NAME).aliases == {"champion": str(versions["copier"])}
    # put the honest one back for the tests after this one
    client.set_registered_model_alias(NAME, "champion", str(versions["honest"]))


def _one_error_line(res):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("gate: error:"), res.output
    return lines[0]


def test_missing_version_is_one_line(server, versions, policy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(gate("validate", "--model", f"models:/{NAME}/999", "--tracking-uri", server,
                                "--policy", policy, "--out", tmp_path / "o", "--quiet"))
    assert f"models:/{NAME}/999" in line
    assert not (tmp_path / "o" / "report.json").exists()


def test_unreachable_server_is_one_line(policy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    line = _one_error_line(gate("validate", "--model", f"models:/{NAME}/1", "--tracking-uri", uri,
                                "--policy", policy, "--out", tmp_path / "o", "--quiet"))
    assert uri in line and "unreachable" in line


def test_generator_breaking_the_contract_is_refused(server, versions, policy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(gate("promote", "--model", f"models:/broken-gen/{versions['broken']}",
                                "--tracking-uri", server, "--policy", policy, "--out", tmp_path / "o", "--quiet"))
    assert "generator batch 0" in line and "(8, 3, 128, 128)" in line
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    assert client.get_registered_model("broken-gen").aliases == {}
