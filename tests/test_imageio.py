"""Reading image folders: every bad input is one clear error naming the file."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from gate.errors import InputError
from gate.imageio import check_same_size, read_image_folder


def test_reads_npy_png_and_splits_nifti_volumes(tmp_path, mri):
    img = np.load(next(mri["train"].glob("*.npy")))
    np.save(tmp_path / "a.npy", img)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "b.png")
    vol = np.stack([img, img * 0.5, img * 0.25], axis=-1)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "c.nii.gz")
    s = read_image_folder(tmp_path, "samples")
    assert s.ids == ("a.npy", "b.png", "c.nii.gz#0", "c.nii.gz#1", "c.nii.gz#2")
    assert s.images.shape == (5, 128, 128) and s.images.dtype == np.float32
    assert np.allclose(s.images[1], img, atol=1 / 255)
    assert np.allclose(s.images[3], img * 0.5)
    assert len(s.manifest) == 3 and all(len(e.sha256) == 64 for e in s.manifest)
    assert len(s.manifest_sha256()) == 64


@pytest.mark.parametrize("make, expect", [
    (lambda d: (d / "x.png").write_bytes(b"not a png"), "x.png: cannot read image"),
    (lambda d: np.save(d / "x.npy", np.full((16, 16), np.nan)), "x.npy: 256 non-finite values"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 16, 16))), "x.npy: expected a 2D image"),
    (lambda d: np.save(d / "x.npy", np.zeros((4, 4))), "too small"),
    (lambda d: np.save(d / "x.npy", np.array(["a"] * 256).reshape(16, 16)), "expected real numbers"),
    (lambda d: None, "holds no images"),
])
def test_bad_inputs_name_the_file(tmp_path, make, expect):
    make(tmp_path)
    with pytest.raises(InputError) as info:
        read_image_folder(tmp_path, "samples")
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_inf_inside_a_nifti_slice_names_the_slice(tmp_path):
    vol = np.zeros((16, 16, 3), np.float32)
    vol[2, 2, 1] = np.inf
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(InputError, match=r"v.nii#1: 1 non-finite"):
        read_image_folder(tmp_path, "samples")


def test_mixed_sizes_and_missing_folder(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((16, 16)))
    np.save(tmp_path / "b.npy", np.zeros((16, 20)))
    with pytest.raises(InputError, match=r"b.npy: shape \(16, 20\) differs"):
        read_image_folder(tmp_path, "samples")
    with pytest.raises(InputError, match="does not exist"):
        read_image_folder(tmp_path / "nope", "train")


def test_size_mismatch_between_sets(tmp_path):
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "x.npy", np.zeros((16, 16)))
    np.save(tmp_path / "b" / "x.npy", np.zeros((32, 32)))
    with pytest.raises(InputError, match="candidate images are 32x32 but train images are 16x16"):
        check_same_size(read_image_folder(tmp_path / "a", "train"), read_image_folder(tmp_path / "b", "candidate"))
