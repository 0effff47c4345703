"""Policy loading: every problem is one line naming the file and the line."""

import json

import pytest

from conftest import REPO
from gate.errors import ConfigError
from gate.policy import load_policy, policy_json_schema
from gate.validators import ValidatorRegistry, discover


@pytest.fixture(scope="module")
def registry():
    return discover()


def test_default_policy_loads(registry):
    p = load_policy(REPO / "policies" / "default.yaml", registry)
    spec = p.model.spec
    assert spec.mode == "enforce"
    assert [c.validator for c in spec.checks] == ["memorization", "quality", "segmentation"]
    assert spec.checks[0].params.extractor == "efficientnet-lite0"
    assert len(p.sha256) == 64


def test_committed_schema_is_current(registry):
    committed = json.loads((REPO / "policies" / "policy.schema.json").read_text())
    assert committed == json.loads(json.dumps(policy_json_schema(registry)))


def _error(tmp_path, registry, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path, registry)
    return str(info.value), path


BASE = """apiVersion: gate/v1
kind: ValidationPolicy
metadata:
  name: t
  owner: o
spec:
  data:
    train: somewhere
  checks:
    - id: mem
      validator: memorization
      params:
        mi_threshold: 3.0
      rules:
        - metric: fraction_flagged
          lte: 0.1
"""


def test_base_policy_is_valid(tmp_path, registry):
    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    p = load_policy(path, registry)
    assert p.model.spec.checks[0].rules[0].lte == 0.1
    assert p.rule_lines[(0, 0)] == 15


def test_unknown_key_names_file_and_line(tmp_path, registry):
    msg, path = _error(tmp_path, registry, BASE.replace("        mi_threshold: 3.0", "        mi_treshold: 3.0"))
    assert f"{path}:13:" in msg and "mi_treshold" in msg and "Extra inputs" in msg


def test_unknown_validator_names_file_and_line(tmp_path, registry):
    msg, path = _error(tmp_path, registry, BASE.replace("validator: memorization", "validator: memorisation"))
    assert msg.startswith(f"{path}:11:") and "'memorisation' is not installed" in msg and "memorization" in msg


def test_validator_that_failed_to_import_is_an_error(tmp_path):
    reg = discover()
    broken = ValidatorRegistry(dict(reg.validators), {"fancy": "fancy_pkg:V (from fancy): ImportError: no torch"})
    msg, _ = _error(tmp_path, broken, BASE.replace("validator: memorization", "validator: fancy"))
    assert "failed to load" in msg and "ImportError: no torch" in msg


def test_unknown_metric_names_the_line(tmp_path, registry):
    msg, path = _error(tmp_path, registry, BASE.replace("metric: fraction_flagged", "metric: is_score"))
    assert f"{path}:15:" in msg and "fraction_flagged" in msg  # lists what is allowed


def test_wrong_type_names_the_line(tmp_path, registry):
    text = BASE.replace("spec:\n", "spec:\n  candidate:\n    n_samples: many\n")
    msg, path = _error(tmp_path, registry, text)
    assert f"{path}:8:" in msg and "spec.candidate.n_samples" in msg


def test_rule_needs_a_bound(tmp_path, registry):
    msg, _ = _error(tmp_path, registry, BASE.replace("          lte: 0.1\n", "          severity: warn\n"))
    assert "at least one of lt/lte/gt/gte" in msg


def test_duplicate_check_ids(tmp_path, registry):
    check = BASE.split("  checks:\n")[1]
    msg, _ = _error(tmp_path, registry, BASE + check)
    assert "duplicate check ids: mem" in msg


def test_wrong_api_version_and_bad_yaml(tmp_path, registry):
    msg, path = _error(tmp_path, registry, BASE.replace("gate/v1", "gate/v2"))
    assert f"{path}:1: apiVersion" in msg
    msg, path = _error(tmp_path, registry, BASE + "  oops: [unclosed\n")
    assert "not valid YAML" in msg and str(path) in msg


def test_yaml_1_2_numbers(tmp_path, registry):
    p = tmp_path / "p.yaml"
    p.write_text(BASE.replace("lte: 0.1", "lte: 1e-3"))
    assert load_policy(p, registry).model.spec.checks[0].rules[0].lte == pytest.approx(0.001)


def test_nan_bounds_are_refused(tmp_path, registry):
    msg, _ = _error(tmp_path, registry, BASE.replace("lte: 0.1", "lte: .nan"))
    assert "spec.checks.0.rules.0.lte" in msg


def test_missing_policy_file(tmp_path, registry):
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "nope.yaml", registry)


def test_rule_semantics():
    from gate.policy import RuleBase

    r = RuleBase(gt=0.0, lte=1.0)
    assert r.holds(0.5) and r.holds(1.0) and not r.holds(0.0) and not r.holds(float("nan"))
    assert r.describe() == "> 0 and <= 1"


def test_every_key_of_the_default_policy_is_commented():
    import re

    for n, line in enumerate((REPO / "policies" / "default.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s*(- )?[A-Za-z_]+:", line):
            assert "#" in line, f"default.yaml:{n} has no comment: {line.strip()}"


def test_insensitive_metrics_downgrade_block_rules_unless_pinned():
    import pandas as pd

    from gate.policy import RuleBase
    from gate.rules import evaluate_rule
    from gate.validators import MetricDef

    class Rule(RuleBase):
        metric: str

    metric = MetricDef("m", "x", "mean", "test metric")
    table = pd.DataFrame({"x": [1.0, 3.0]})
    why = {"m": "|rho| 0.3 < 0.8 for noise"}
    plain = evaluate_rule("c", Rule(metric="m", lte=1.0), metric, table, 3, None, why)
    assert not plain.passed and plain.severity == "warn" and plain.downgraded == why["m"]
    pinned = evaluate_rule("c", Rule(metric="m", lte=1.0, pin=True), metric, table, 3, None, why)
    assert pinned.severity == "block" and pinned.downgraded is None
    other = evaluate_rule("c", Rule(metric="m", lte=1.0), metric, table, 3, None, {})
    assert other.severity == "block"


def test_relative_paths_resolve_against_the_policy_files_folder(tmp_path, registry, monkeypatch):
    """A policy means the same from any working directory: its data folders and validators' files
    (here the memorization check's checkpoint and the quality check's weights) are anchored at its folder."""
    folder = tmp_path / "project" / "policies"
    folder.mkdir(parents=True)
    (folder / "p.yaml").write_text("""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {name: p, owner: me}
spec:
  data: {train: ../data/train, holdout: /abs/holdout}
  checks:
    - {id: memorization, validator: memorization, params: {checkpoint: w/mri-core.pt}}
    - {id: quality, validator: quality, params: {pyiqa: [niqe], pyiqa_weights: {niqe: niqe.mat}}}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_policy(folder / "p.yaml", registry).model.spec
    assert spec.data.train == folder / "../data/train"
    assert str(spec.data.holdout) == "/abs/holdout"
    assert spec.checks[0].params.checkpoint == folder / "w" / "mri-core.pt"
    assert spec.checks[1].params.pyiqa_weights["niqe"] == folder / "niqe.mat"
    assert list(spec.checks[1].params.pyiqa) == ["niqe"]  # strings stay strings
