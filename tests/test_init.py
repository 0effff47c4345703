"""``gate init``: a policy fitted to the data it finds, that loads as written."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from gate.policy import load_policy
from gate.validators import discover
from gate_plugins.mri.demo_data import write_slices

GATE = str(Path(sys.executable).with_name("gate"))


def _init(*args):
    """As a user runs it (plugin commands are added by the entry point's main)."""
    done = subprocess.run([GATE, "init", *map(str, args)], capture_output=True, text=True, timeout=300)
    done.exit_code, done.output = done.returncode, done.stdout + done.stderr
    return done


def test_unlabelled_data_gets_no_segmentation_check_and_a_policy_that_loads_from_anywhere(tmp_path, mri,
                                                                                         monkeypatch):
    out = tmp_path / "project" / "policy.yaml"
    res = _init("--train", mri["train"], "--holdout", mri["holdout"], "--out", out)
    assert res.exit_code == 0, res.output
    assert "segmentation check left out" in res.output and "estimated time" in res.output
    assert "the holdout has 48 images" in res.output  # judged against the 96 the power was measured with
    text = out.read_text()
    assert "# segmentation left out: train and holdout have no labels/ folder" in text
    assert text.count("#") > 40  # the shipped default's comments are kept
    monkeypatch.chdir(tmp_path)  # relative to the policy file, not to where it was written from
    spec = load_policy(out, discover()).model.spec
    assert [c.validator for c in spec.checks] == ["memorization", "quality"]
    assert spec.data.train.resolve() == mri["train"].resolve()
    assert spec.data.holdout.resolve() == mri["holdout"].resolve()

    again = _init("--train", mri["train"], "--out", out)
    assert again.exit_code == 2 and "exists" in again.output


def test_labelled_data_keeps_segmentation_and_non_square_images_keep_dihedral_matching(tmp_path, mri_labelled):
    tr_i, tr_l, te_i, te_l = mri_labelled
    write_slices(tmp_path / "train", tr_i, [f"s{i // 12}_{i:03d}" for i in range(len(tr_i))], tr_l)
    write_slices(tmp_path / "holdout", te_i, [f"h{i // 8}_{i:03d}" for i in range(len(te_i))], te_l)
    res = _init("--train", tmp_path / "train", "--holdout", tmp_path / "holdout", "--out", tmp_path / "p.yaml")
    assert res.exit_code == 0, res.output
    spec = load_policy(tmp_path / "p.yaml", discover()).model.spec
    assert [c.validator for c in spec.checks] == ["memorization", "quality", "segmentation"]
    assert spec.checks[0].params.invariance == "dihedral"

    write_slices(tmp_path / "wide", np.random.default_rng(0).random((6, 64, 96), dtype=np.float32),
                 [f"w{i}" for i in range(6)], None)
    res = _init("--train", tmp_path / "wide", "--out", tmp_path / "wide.yaml")
    assert res.exit_code == 0, res.output
    assert "runs on a square canvas" in res.output and "no holdout" in res.output
    spec = load_policy(tmp_path / "wide.yaml", discover()).model.spec
    assert spec.checks[0].params.invariance == "dihedral" and spec.data.holdout is None


def test_labels_can_be_required_or_left_out(tmp_path, mri_labelled):
    tr_i, tr_l, te_i, te_l = mri_labelled
    write_slices(tmp_path / "train", tr_i, [f"s{i // 12}_{i:03d}" for i in range(len(tr_i))], tr_l)
    write_slices(tmp_path / "holdout", te_i, [f"h{i // 8}_{i:03d}" for i in range(len(te_i))], None)
    res = _init("--train", tmp_path / "train", "--holdout", tmp_path / "holdout", "--out", tmp_path / "p.yaml",
                "--labels")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and lines == ["gate: error: --labels: holdout has no labels/ folder (a labelled set "
                                            "holds images/ and labels/ with the same file names)"], res.output
    assert not (tmp_path / "p.yaml").exists()
    write_slices(tmp_path / "holdout2", te_i, [f"h{i // 8}_{i:03d}" for i in range(len(te_i))], te_l)
    res = _init("--train", tmp_path / "train", "--holdout", tmp_path / "holdout2", "--out", tmp_path / "p.yaml",
                "--no-labels")
    assert res.exit_code == 0 and "segmentation check left out (--no-labels)" in res.output, res.output
    assert [c.validator for c in load_policy(tmp_path / "p.yaml", discover()).model.spec.checks] == \
        ["memorization", "quality"]
