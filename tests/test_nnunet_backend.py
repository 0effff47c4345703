"""The nnU-Net v2 back end through gate's CLI (optional extra; `.ci/run` installs it lean, without
torchvision). Short training: 2 epochs of 10 iterations per model."""

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_check_policy
from gate.cli import app
from gate_plugins.mri.demo_data import write_slices

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None


@pytest.mark.skipif(not HAS_NNUNET, reason="needs the nnunet extra, which .ci/run installs (README)")
def test_nnunet_backend_trains_tests_and_reports(mri_labelled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tr_i, tr_l, te_i, te_l = mri_labelled
    write_slices(tmp_path / "train", tr_i, [f"t{i}" for i in range(len(tr_i))], tr_l)
    write_slices(tmp_path / "holdout", te_i, [f"h{i}" for i in range(len(te_i))], te_l)
    write_slices(tmp_path / "cand", tr_i[1::2], [f"c{i}" for i in range(len(tr_i[1::2]))], tr_l[1::2])
    policy = write_check_policy(tmp_path / "p.yaml", tmp_path / "train", tmp_path / "holdout", "segmentation",
                                params="{backend: nnunet, epochs: 2, nnunet_iterations: 10, bootstrap: 200}",
                                rules="[{metric: dice_mean, gt: 0.0}]")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(tmp_path / "cand"),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    assert check["status"] == "ok", check["error"]
    assert check["provenance"]["backend"] == "nnunet" and check["provenance"]["nnunetv2"] == "2.8.1"
    m = check["metrics"]
    assert 0 < m["dice_mean"] <= 1 and np.isfinite(m["baseline_dice_mean"]) and np.isfinite(m["dice_drop_upper"])
    assert res.exit_code == 0, res.output


def test_nnunet_budget_or_absence_is_a_clear_error(mri_labelled, tmp_path):
    """Without the extra: the install hint. With it: a budget too small to train ends in error."""
    from gate.errors import InputError
    from gate.imageset import ImageSet
    from gate.validators import CheckContext
    from gate_plugins.segmentation.monai_backend import TimeBudgetExceeded
    from gate_plugins.segmentation.validator import SegmentationParams, SegmentationValidator

    tr_i, tr_l, te_i, te_l = mri_labelled
    train = ImageSet("train", tuple(f"t{i}" for i in range(len(tr_i))), tr_i, labels=tr_l.astype(np.int64))
    hold = ImageSet("holdout", tuple(f"h{i}" for i in range(len(te_i))), te_i, labels=te_l.astype(np.int64))
    ctx = CheckContext(candidate=train, train=train, holdout=hold, seed=0, batch_size=8, cache_dir=tmp_path)
    params = SegmentationParams(backend="nnunet", epochs=50, time_budget_s=3)
    expected = (TimeBudgetExceeded, "ran out") if HAS_NNUNET else (InputError, "optional extra")
    with pytest.raises(expected[0], match=expected[1]):
        SegmentationValidator().run(ctx, params)
