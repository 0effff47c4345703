"""The quality check on real slices as they come (Colin27 with and without skull, read by the MRI reader)
and on what a broken generator emits: near-empty, constant, one voxel, one tissue, 8-bit and 16-bit
ranges. Never a raw library exception; a degenerate sample is counted and named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gate.imageio import read_folder
from gate.imageset import ImageSet
from gate.policy import Preprocess
from gate.validators import CheckContext
from gate_plugins.quality import iqms
from gate_plugins.quality.niqe import fit_niqe, niqe_score
from gate_plugins.quality.validator import QualityParams, QualityValidator

TEMPLATES = Path("/usr/share/mricron/templates")


@pytest.fixture(scope="module")
def colin(tmp_path_factory):
    """Axial slices of Colin27 with skull (ch2) and without (ch2bet) at 2 mm, as the reader gives them."""
    out = {}
    for name in ("ch2", "ch2bet"):
        src = TEMPLATES / f"{name}.nii.gz"
        assert src.exists(), f"{src}: install Debian's mricron-data (.ci/run does)"
        folder = tmp_path_factory.mktemp(name)
        shutil.copy(src, folder / src.name)
        out[name] = read_folder(folder, name, Preprocess(spacing=2.0, size=(112, 112)))
    return out


def _odd_slices(real: np.ndarray) -> dict[str, np.ndarray]:
    h, w = real.shape
    one_voxel = np.zeros((h, w))
    one_voxel[h // 2, w // 2] = 1.0
    speck = np.zeros((h, w))
    speck[50:53, 50:53] = 1.0
    yy, xx = np.mgrid[:h, :w]
    disk = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2) * 0.6  # one tissue, nothing to split
    rng = np.random.default_rng(0)
    return {
        "blank": np.zeros((h, w)), "constant": np.full((h, w), 1000.0), "one_voxel": one_voxel,
        "one_denormal_voxel": one_voxel * 5e-324, "speck": speck,
        "one_tissue": disk + rng.normal(0, 0.01, (h, w)) * (disk > 0),
        "uint8": np.round(real / real.max() * 255), "uint16": np.round(real / real.max() * 65535),
        "negative_background": real - 1000.0, "noise_only": rng.random((h, w)),
    }


def test_every_measure_is_finite_on_real_and_broken_slices(colin):
    real = colin["ch2"].images[len(colin["ch2"]) // 2].astype(np.float64)
    model = fit_niqe(colin["ch2bet"].images[::4], 16)
    slices = _odd_slices(real) | {"skull_on": real, "skull_off": colin["ch2bet"].images[len(colin["ch2bet"]) // 2]}
    for name, img in slices.items():
        values = iqms.all_iqms(img)
        assert all(np.isfinite(v) for v in values.values()), (name, values)
        assert np.isfinite(niqe_score(img, model)), name
    degenerate = {name for name, img in slices.items() if iqms.is_degenerate(img)}
    assert {"blank", "constant", "one_voxel", "one_denormal_voxel", "speck"} <= degenerate
    assert not degenerate & {"skull_on", "skull_off", "uint8", "uint16", "one_tissue"}


def test_the_check_counts_and_names_degenerate_samples(colin, tmp_path):
    train = colin["ch2bet"]
    mid = len(train) // 2
    good = train.images[mid - 6:mid + 6]
    odd = _odd_slices(good[0].astype(np.float64))
    broken = [odd[k] for k in ("blank", "one_voxel", "constant")]
    images = np.concatenate([good, np.stack(broken)]).astype(np.float32)
    ids = tuple(f"good{i}" for i in range(len(good))) + ("blank", "one_voxel", "constant")
    cand = ImageSet("candidate", ids, images)
    context = CheckContext(train=train, candidate=cand, holdout=None, seed=0, cache_dir=tmp_path / "cache",
                           batch_size=8)
    out = QualityValidator().run(context, QualityParams(self_test=False, niqe_block=16, cache=False))
    assert out.table["degenerate"].mean() == pytest.approx(3 / len(ids))  # degenerate_fraction
    named = out.diagnostics["degenerate_samples"]
    assert named == {"count": 3, "ids": ["blank", "one_voxel", "constant"]}
