"""gate as an MLflow evaluator (``evaluators="gate"``), through MLflow's own ``mlflow.models.evaluate`` against
a real ``mlflow server`` on 127.0.0.1: the honest version passes with the gate metrics, tags and reports in the
evaluation run; the copier fails as a normal result and is not promoted; bad configs are one line."""

import hashlib
import json

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from conftest import CHEAP_MEMORIZATION, log_honest_and_copier, write_policy
from gate.generator import log_generator
from gate.mlflow_evaluator import GateEvaluator, ReportFileArtifact
from gate_plugins.mri.generators import NovelSubjectGenerator

NAME = "brain-gen"
DATA = pd.DataFrame({"x": [0.0]})  # MLflow requires data; gate samples the candidate itself


@pytest.fixture(scope="module")
def versions(server, mri, tmp_path_factory):
    return log_honest_and_copier(server, tmp_path_factory.mktemp("art"), NAME)


@pytest.fixture
def policy(tmp_path, mri):
    return write_policy(tmp_path / "policy.yaml", mri["train"], mri["holdout"], n_samples=16,
                        params=CHEAP_MEMORIZATION)


@pytest.fixture
def tracking(server, tmp_path, monkeypatch):
    """MLflow's process-wide tracking URI pointed at the server for one test, and put back after it."""
    monkeypatch.chdir(tmp_path)  # gate keeps its feature cache in ./.gate
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    try:
        yield mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    finally:
        mlflow.set_tracking_uri(before)


def test_the_honest_version_passes_with_metrics_tags_and_reports_in_the_run(tracking, versions, policy, tmp_path):
    honest = f"models:/{NAME}/{versions['honest']}"
    with mlflow.start_run() as run:  # the version is found from the model MLflow loaded (no "model" key)
        result = mlflow.models.evaluate(honest, DATA, model_type="image-generator", evaluators="gate",
                                        evaluator_config={"policy": str(policy)})
    assert result.metrics["gate.pass"] == 1.0
    assert result.metrics["memorization.fraction_flagged"] <= 0.05

    logged = tracking.get_run(run.info.run_id)
    assert logged.data.tags["gate.verdict"] == "pass"
    assert logged.data.tags["gate.model_version"] == honest
    assert logged.data.metrics["gate.pass"] == 1.0
    assert logged.data.metrics["memorization.fraction_flagged"] == result.metrics["memorization.fraction_flagged"]
    files = {a.path for a in tracking.list_artifacts(run.info.run_id, "gate")}
    assert {"gate/report.json", "gate/report.pdf", "gate/report.html"} <= files

    # the report logged in the evaluation run is the one the tag's hash names, and speaks of this version
    body = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="gate/report.json",
                                               tracking_uri=tracking.tracking_uri)
    raw = open(body, "rb").read()
    assert hashlib.sha256(raw).hexdigest() == logged.data.tags["gate.report_sha256"]
    assert json.loads(raw)["provenance"]["model"]["version"] == str(versions["honest"])
    assert result.artifacts["gate_report_json"].content["verdict"] == "pass"
    assert result.artifacts["gate_report_json"].uri.endswith("/gate/report.json")
    assert result.artifacts["gate_report_pdf"].content.startswith(b"%PDF")
    result.save(tmp_path / "saved")  # MLflow's own save/load round trip finds gate's artifact classes
    loaded = mlflow.models.EvaluationResult.load(tmp_path / "saved")
    assert isinstance(loaded.artifacts["gate_report_html"], ReportFileArtifact)
    assert loaded.artifacts["gate_report_json"].content == result.artifacts["gate_report_json"].content
    assert loaded.metrics == result.metrics
    # gate's own validation run and the version's tags are recorded as `gate validate` records them
    assert tracking.get_model_version(NAME, str(versions["honest"])).tags["gate.run_id"] == \
        logged.data.tags["gate.validation_run_id"]


def test_the_copier_fails_as_a_result_without_loading_it_and_is_not_promoted(tracking, versions, policy):
    copier = f"models:/{NAME}/{versions['copier']}"
    with mlflow.start_run() as run:  # model=None: MLflow never unpickles the candidate in this process
        result = mlflow.models.evaluate(model=None, data=DATA, model_type="image-generator", evaluators=["gate"],
                                        evaluator_config={"gate": {"policy": str(policy), "model": copier}})
    assert result.metrics["gate.pass"] == 0.0
    assert result.metrics["memorization.fraction_flagged"] > 0.05
    assert result.artifacts["gate_report_json"].content["verdict"] == "fail"
    logged = tracking.get_run(run.info.run_id)
    assert logged.data.tags["gate.verdict"] == "fail" and logged.data.tags["gate.model_version"] == copier
    assert tracking.get_model_version(NAME, str(versions["copier"])).tags["gate.verdict"] == "fail"
    assert tracking.get_registered_model(NAME).aliases == {}


def test_an_ambiguous_loaded_model_asks_for_the_version(tracking, versions, policy):
    """The same files registered twice: the loaded model cannot tell which version it is."""
    mv, run_id = log_generator(NovelSubjectGenerator(), "twice-gen", tracking_uri=tracking.tracking_uri)
    tracking.create_model_version("twice-gen", mv.source, run_id=run_id)
    with mlflow.start_run(), pytest.raises(MlflowException) as err:
        mlflow.models.evaluate("models:/twice-gen/1", DATA, model_type="image-generator", evaluators="gate",
                               evaluator_config={"policy": str(policy)})
    message = err.value.message
    assert "\n" not in message and "several registered versions (twice-gen/" in message
    assert '{"model": "models:/NAME/VERSION"}' in message


def test_only_image_generators():
    assert GateEvaluator.can_evaluate(model_type="image-generator", evaluator_config={})
    assert not GateEvaluator.can_evaluate(model_type="classifier", evaluator_config={"policy": "p.yaml"})


@pytest.mark.parametrize("config, expected", [
    ({"policy": "p.yaml", "polcy": "q.yaml"}, "unknown evaluator_config key(s) 'polcy'"),
    ({"model": "models:/brain-gen/1"}, 'needs "policy"'),
    ({"policy": 3}, "evaluator_config['policy'] must be a string or a path"),
])
def test_a_bad_config_is_one_line_before_any_work(config, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlflowException) as err:
        GateEvaluator().evaluate(model_type="image-generator", dataset=None, run_id="unused", evaluator_config=config)
    assert expected in err.value.message and "\n" not in err.value.message
    assert not (tmp_path / ".gate").exists()  # refused before gate touched anything


def test_gate_input_errors_become_one_mlflow_line(tracking, versions, policy, tmp_path):
    with mlflow.start_run(), pytest.raises(MlflowException) as err:
        mlflow.models.evaluate(model=None, data=DATA, model_type="image-generator", evaluators="gate",
                               evaluator_config={"policy": str(policy), "model": f"models:/{NAME}/999"})
    assert err.value.message.startswith("gate evaluator: models:/brain-gen/999: no such model version")
    assert "\n" not in err.value.message
    with pytest.raises(MlflowException) as err:
        mlflow.models.evaluate(model=None, data=DATA, model_type="image-generator", evaluators="gate",
                               evaluator_config={"policy": str(tmp_path / "missing.yaml"),
                                                 "model": f"models:/{NAME}/{versions['honest']}"})
    assert "missing.yaml" in err.value.message and "\n" not in err.value.message
