"""Sparse and misaligned copying through the real memorization check: one copy in 25 is refused,
an obvious copier fails on its evidence even when the detector cannot vouch for a pass, and a power
requirement the sizes cannot meet is an error that says what it takes."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from conftest import save_slices, write_policy
from gate.cli import app

RULES = """
        - metric: copying_detected
          lte: 0
          severity: block
        - metric: fraction_flagged
          lte: 0.05
          severity: block
        - metric: copied_fraction
          lte: 0.15
          severity: block"""


def validate(policy, samples, out):
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(samples), "--out", str(out),
                                   "--quiet"])
    return res, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("sparse")  # one reference cache for the module's runs


def moved_copy(img, rng):
    """A training slice as a generator might return it: flipped, rotated 4 degrees, shifted 8 px,
    rescaled in intensity and noised."""
    out = ndi.rotate(img[:, ::-1], 4.0, reshape=False, order=1)
    out = ndi.shift(out, (5.0, -6.0), order=1) * 1.05 + rng.normal(0, 0.01, img.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def test_one_moved_copy_in_25_is_refused_where_the_old_rules_passed_it(work, mri, monkeypatch):
    monkeypatch.chdir(work)
    novel = np.stack([np.load(p) for p in sorted(mri["novel"].glob("*.npy"))])
    src = 17
    copy = moved_copy(mri["train_images"][src], np.random.default_rng(0))
    samples = save_slices(work / "one-copy", np.concatenate([novel, copy[None]]),
                          [f"novel_{i:02d}" for i in range(len(novel))] + ["the_copy"])
    policy = write_policy(work / "p.yaml", mri["train"], mri["holdout"], rules=RULES)
    res, report = validate(policy, samples, work / "out1")
    assert res.exit_code == 1, res.output
    check = report["checks"][0]
    rules = {r["metric"]: r["passed"] for r in check["rules"]}
    # the old default's two rules pass this set; the set test refuses it
    assert rules == {"copying_detected": False, "fraction_flagged": True, "copied_fraction": True}
    assert check["metrics"]["copy_test_p"] <= 0.01
    flagged = check["diagnostics"]["flagged_samples"]
    assert [f["sample_id"] for f in flagged] == ["the_copy.npy"]
    train_ids = sorted(p.name for p in mri["train"].glob("*.npy"))
    assert flagged[0]["verified_nn_train_id"] == train_ids[src]
    table = pd.read_csv(work / "out1" / "samples" / "memorization.csv").set_index("sample_id")
    # aligned, the copy is far more alike its source than any novel sample is to its best train match
    assert table.loc["the_copy.npy", "verified_similarity"] > 2 * table["verified_similarity"].drop("the_copy.npy").max()
    power = check["diagnostics"]["power"]
    assert power["n_samples"] == 25 and 0 < power["refusal_probability"]["0.05"] <= 1
    assert check["diagnostics"]["tail_model"]["n_null"] == 48


def test_a_plain_copier_fails_on_its_evidence_when_the_holdout_is_too_small_to_vouch(work, mri, monkeypatch):
    monkeypatch.chdir(work)
    small = work / "small-holdout"
    small.mkdir(exist_ok=True)
    for p in sorted(mri["holdout"].glob("*.npy"))[::4]:  # 12 images: no tail, the self-check cannot pass
        shutil.copy(p, small / p.name)
    policy = write_policy(work / "small.yaml", mri["train"], small, rules=RULES)
    res, report = validate(policy, mri["copies"], work / "out2")
    assert res.exit_code == 1 and report["verdict"] == "fail", res.output
    check = report["checks"][0]
    assert check["status"] == "ok" and "self-check failed" in check["diagnostics"]["cannot_vouch_for_a_pass"]
    res, report = validate(policy, mri["novel"], work / "out3")
    assert report["verdict"] == "error" and "self-check failed" in report["checks"][0]["error"], res.output
    assert "holdout images" in report["checks"][0]["error"]


def test_a_power_requirement_the_sizes_cannot_meet_says_how_many_samples_it_takes(work, mri, monkeypatch):
    monkeypatch.chdir(work)
    policy = write_policy(work / "power.yaml", mri["train"], mri["holdout"], rules=RULES,
                          params="{power: {copy_rate: 0.02, at_least: 0.9}}")
    res, report = validate(policy, mri["novel"], work / "out4")
    check = report["checks"][0]
    assert report["verdict"] == "error", res.output
    caught = check["diagnostics"]["power"]["caught_alone"]
    need = int(np.ceil(np.log(0.1) / np.log(1 - 0.02 * caught)))
    assert f"draw at least {need} samples" in check["error"] and "24 samples" in check["error"]
