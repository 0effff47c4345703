"""Per-volume scores: the pure rule on ids, and an end-to-end run on NIfTI volumes."""

import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from conftest import write_check_policy
from gate.cli import app
from gate_plugins.memorization.volumes import copied_volumes
from gate_plugins.mri.subjects import axial_slices, make_subject


def test_copied_volume_needs_flags_one_source_and_slice_order():
    ids = [f"cand.nii#{z}" for z in range(6)] + [f"other.nii#{z}" for z in range(6)]
    nn = [f"t1.nii#{z + 3}" for z in range(6)] + [f"t{z % 3}.nii#{z}" for z in range(6)]
    flags = [True] * 12
    res = {v.volume: v for v in copied_volumes(ids, nn, flags)}
    assert res["cand.nii"].copied and res["cand.nii"].train_volume == "t1.nii" and res["cand.nii"].order_rho == 1.0
    assert not res["other.nii"].copied  # matches scattered over three train volumes
    reversed_nn = [f"t1.nii#{10 - z}" for z in range(6)]
    assert copied_volumes(ids[:6], reversed_nn, [True] * 6)[0].copied  # a flipped volume is still a copy
    shuffled = [f"t1.nii#{z}" for z in (5, 0, 3, 1, 4, 2)]
    assert not copied_volumes(ids[:6], shuffled, [True] * 6)[0].copied
    assert not copied_volumes(ids[:6], nn[:6], [True, True, False, False, False, False])[0].copied
    assert copied_volumes(["a.png", "b.png"], ["x.png", "y.png"], [True, True]) == []


def _volume(seed, n=12):
    return np.moveaxis(axial_slices(make_subject(seed), n), 0, -1)  # [128, 128, n]


def test_a_copied_nifti_volume_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder, seeds in (("train", (1, 2, 3, 4)), ("holdout", (201, 202, 203, 204))):
        (tmp_path / folder).mkdir()
        for s in seeds:
            nib.save(nib.Nifti1Image(_volume(s), np.eye(4)), tmp_path / folder / f"sub{s}.nii.gz")
    cand = tmp_path / "cand"
    cand.mkdir()
    rng = np.random.default_rng(0)
    copy = np.clip(_volume(2) + rng.normal(0, 0.01, (128, 128, 12)), 0, 1).astype(np.float32)
    nib.save(nib.Nifti1Image(copy, np.eye(4)), cand / "gen_a.nii.gz")
    nib.save(nib.Nifti1Image(_volume(301), np.eye(4)), cand / "gen_b.nii.gz")
    policy = write_check_policy(tmp_path / "p.yaml", tmp_path / "train", tmp_path / "holdout", "memorization",
                                rules="[{metric: n_copied_volumes, lte: 0}]")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(cand), "--out",
                                   str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1, res.output
    check = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]
    assert check["metrics"]["n_copied_volumes"] == 1
    vols = {v["volume"]: v for v in check["diagnostics"]["volumes"]}
    assert vols["gen_a.nii.gz"]["copied"] and vols["gen_a.nii.gz"]["train_volume"] == "sub2.nii.gz"
    assert not vols["gen_b.nii.gz"]["copied"]
