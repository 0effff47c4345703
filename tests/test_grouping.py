"""Which holdout images belong to one subject: the membership contrast excludes a holdout image's own
subject from its non-members, so the grouping decides whether the verification null is fair."""

import shutil

from typer.testing import CliRunner

from conftest import write_policy
from gate.cli import app
from gate_plugins.memorization.grouping import subjects_of


def test_slice_numbers_are_dropped_so_slices_of_one_subject_group_together():
    ids = ["subj0201_z03.npy", "subj0201_z04.npy", "subj0202_z03.npy", "sub-01_T1w_slice-040.png",
           "sub-01_T1w_slice-041.png", "patient12_z7.png"]
    g = subjects_of(ids)
    assert g[0] == g[1] != g[2] and g[3] == g[4] != g[0] and len(set(g)) == 4


def test_a_volumes_slices_share_their_file_and_a_pattern_overrides_the_names():
    assert len(set(subjects_of(["a/x.nii.gz#3", "a/x.nii.gz#4", "a/y.nii.gz#3"]))) == 2
    g = subjects_of(["site1/sub-07_run-1.png", "site2/sub-07_run-2.png", "site1/sub-08_run-1.png", "other.png"],
                    r"sub-([0-9]+)")
    assert g[0] == g[1] != g[2] and g[3] not in g[:3]


def test_names_without_a_subject_make_each_image_its_own():
    g = subjects_of(["img_0001.png", "img_0002.png", "img_0003.png"])
    assert len(set(g)) == 3


def test_a_holdout_of_one_named_subject_is_refused_before_any_compute(tmp_path, mri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = tmp_path / "one-subject"
    one.mkdir()
    for p in sorted(mri["holdout"].glob("subj0201_*.npy")):
        shutil.copy(p, one / p.name)
    # by the names alone one subject's numbered slices look like names without a subject (each its own);
    # a pattern that finds the subject says there is one
    policy = write_policy(tmp_path / "p.yaml", mri["train"], one, params="{subject_pattern: 'subj([0-9]+)'}")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    # known from the names alone: refused by the check's preflight, exit 2, before any feature is computed
    assert res.exit_code == 2, res.output
    assert "spec.checks.0 (memorization)" in res.output and "one subject" in res.output
    assert "verify_contrast" in res.output and not (tmp_path / "out").exists()


def test_a_subject_pattern_that_is_no_regular_expression_is_a_policy_error(tmp_path, mri):
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"], params="{subject_pattern: 'sub-(['}")
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(mri["novel"]),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2 and "subject_pattern" in res.output, res.output


def test_retrieval_skips_the_querys_own_subject_and_keeps_k_distinct_images():
    """A holdout image's non-members: its own subject's images are never retrieved, even when they are
    its nearest, and k distinct other images are (each under one transform)."""
    import faiss
    import numpy as np

    from gate_plugins.memorization.detector import Detector

    rng = np.random.default_rng(0)
    n, d, t = 12, 16, 8
    base = rng.normal(size=(n, d))
    rows = np.concatenate([base + 0.01 * rng.normal(size=(n, d)) for _ in range(t)])  # transform-major
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(d)
    index.add(rows.astype(np.float32))
    groups = np.repeat(np.arange(4), 3)
    det = Detector(None, "dihedral", verify_k=3)
    queries = rows[:n]  # each image is its own nearest, then its transforms
    pairs = det.retrieve_pairs(queries, index, n, (groups, groups))
    for j, found in enumerate(pairs):
        images = [i for i, _ in found]
        assert len(images) == 3 == len(set(images)) and all(groups[i] != groups[j] for i in images), (j, found)
    plain = det.retrieve_pairs(queries, index, n)
    assert all(found[0][0] == j for j, found in enumerate(plain))
