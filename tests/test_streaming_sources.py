"""Cohort-sized image sets: read one file at a time, held on disk past a size (memory follows the file, not
the set), and sets spread over storage given as a manifest of paths."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_policy
from gate.cli import app
from gate.errors import InputError
from gate.imageio import DEFAULT_LIMITS, read_image_folder


def _read_peak(folder, limits):
    tracemalloc.start()
    try:
        images = read_image_folder(folder, "train", limits)
        return images, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_set_past_the_memory_bound_is_mapped_from_disk_and_reads_the_same(mri):
    whole = read_image_folder(mri["train"], "train")
    small = dataclasses.replace(DEFAULT_LIMITS, in_memory_bytes=whole.images[0].nbytes * 10)
    mapped, peak = _read_peak(mri["train"], small)
    _, peak_in_memory = _read_peak(mri["train"], DEFAULT_LIMITS)
    assert isinstance(mapped.images, np.memmap) and not isinstance(whole.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, whole.images)
    assert mapped.ids == whole.ids and mapped.manifest_sha256() == whole.manifest_sha256()
    # the set is 96 slices: in memory the read holds all of them at once, mapped it holds about ten
    assert peak_in_memory >= whole.images.nbytes and peak < whole.images.nbytes / 3
    with pytest.raises(ValueError):
        mapped.images[0, 0, 0] = 1.0  # read-only: nothing downstream changes what was read


def test_a_manifest_lists_a_set_spread_over_folders(mri, tmp_path):
    files = sorted(mri["train"].glob("*.npy"))
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / files[0].name
    moved.write_bytes(files[0].read_bytes())
    manifest = tmp_path / "train.txt"
    manifest.write_text("# train slices on two volumes\n" + f"elsewhere/{moved.name}\n"
                        + "".join(f"{f}\n" for f in files[1:]) + "\n")
    listed = read_image_folder(manifest, "train")
    whole = read_image_folder(mri["train"], "train")
    np.testing.assert_array_equal(listed.images, whole.images)
    assert listed.manifest[0].path == str(moved) and len(listed.manifest) == len(files)
    assert listed.manifest[0].sha256 == whole.manifest[0].sha256

    manifest.write_text(f"{files[0]}\nmissing/slice.npy\n")
    with pytest.raises(InputError, match=r"train\.txt:2: missing/slice\.npy is not a file"):
        read_image_folder(manifest, "train")
    manifest.write_text(f"{tmp_path / 'train.txt'}\n")
    with pytest.raises(InputError, match="is not a supported image"):
        read_image_folder(manifest, "train")


def test_a_policy_trains_on_a_manifest(mri, tmp_path, monkeypatch):
    from conftest import CHEAP_MEMORIZATION

    manifest = tmp_path / "train.txt"
    manifest.write_text("".join(f"{f}\n" for f in sorted(mri["train"].glob("*.npy"))))
    policy = write_policy(tmp_path / "policy.yaml", manifest, mri["holdout"], params=CHEAP_MEMORIZATION)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["copies"]),
                                   "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert res.exit_code == 1, res.output  # the copies are refused against the listed train set
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "fail"
