"""The detector on real-template MRI: dihedral invariance and the content-addressed reference cache."""

import numpy as np
import pytest

from gate_plugins.memorization.detector import Detector
from gate_plugins.toolkit.extractors import build_extractor
from gate_plugins.memorization.transforms import apply, transform_set


def test_dihedral_set_is_the_eight_distinct_symmetries():
    x = np.arange(16.0).reshape(1, 4, 4)
    outs = [apply(x, fn) for _, fn in transform_set("dihedral")]
    assert len(outs) == 8 and np.array_equal(outs[0], x)
    assert len({o.tobytes() for o in outs}) == 8
    assert [n for n, _ in transform_set("none")] == ["identity"]


@pytest.fixture(scope="module")
def ext():
    return build_extractor("efficientnet-lite0", None, 2.0)


def test_flipped_copies_are_found_under_the_matching_transform(mri, ext, tmp_path):
    train = mri["train_images"][:48]
    det = Detector(ext, "dihedral", cache_dir=None).fit(train)
    flipped = np.ascontiguousarray(train[:6, ::-1, :])  # vertical flip = rot180 + hflip
    s = det.score(flipped)
    assert np.allclose(s.similarity, 1.0, atol=1e-3)
    assert [det.transforms[t] for t in s.nn_transform[0]] == ["rot180+hflip"] * 6
    assert s.nn_index[0].tolist() == list(range(6))
    plain = Detector(ext, "none").fit(train).score(flipped)
    assert plain.similarity.max() < 0.95  # the paper's plain matching misses them


def test_reference_features_are_cached_by_content(mri, ext, tmp_path):
    train = mri["train_images"][:24]
    first = Detector(ext, "dihedral", cache_dir=tmp_path).fit(train, digest="abc")
    assert first.cache_hit_ is False and len(list(tmp_path.glob("*.npz"))) == 1
    second = Detector(ext, "dihedral", cache_dir=tmp_path).fit(train, digest="abc")
    assert second.cache_hit_ is True
    q = train[:3] * 0.9
    assert np.allclose(first.score(q).similarity, second.score(q).similarity)
    other = Detector(ext, "none", cache_dir=tmp_path).fit(train, digest="abc")  # other transforms: other key
    assert other.cache_hit_ is False and len(list(tmp_path.glob("*.npz"))) == 2
    # a damaged entry is recomputed, not trusted
    for f in tmp_path.glob("*.npz"):
        f.write_bytes(b"garbage")
    assert Detector(ext, "dihedral", cache_dir=tmp_path).fit(train, digest="abc").cache_hit_ is False


def test_dihedral_needs_square_images(ext):
    with pytest.raises(ValueError, match="square"):
        Detector(ext, "dihedral").fit(np.zeros((8, 32, 48), np.float32))


def test_benchmark_set_level_score_rises_with_duplication(mri, ext):
    from gate.imageio import read_image_folder
    from gate_plugins.memorization.benchmark import run_benchmark
    from gate_plugins.memorization.grouping import subjects_of

    test = read_image_folder(mri["novel"], "test").images
    holdout = read_image_folder(mri["holdout"], "holdout")
    det = Detector(ext, "dihedral")
    det.use_calibration = True
    levels = (0.1, 0.3, 0.6, 0.9)
    result = run_benchmark(mri["train_images"], test, {"default": det}, calibration=holdout.images,
                           calibration_groups=subjects_of(holdout.ids),
                           conditions=("clean", "vflip", "noise_0.02"), levels=levels)
    for cond in ("clean", "vflip", "noise_0.02"):
        rows = result.by_condition("default", cond)
        cf = [r.copied_fraction for r in rows]
        assert all(b >= a for a, b in zip(cf, cf[1:])) and cf[-1] - cf[0] > 0.5, (cond, cf)
        assert min(r.auc for r in rows) > 0.99, cond
    scores = result.set_scores
    assert scores[("clean", 0.9)]["ct"] < scores[("clean", 0.1)]["ct"]
    assert scores[("clean", 0.9)]["authenticity"] < scores[("clean", 0.1)]["authenticity"]


def test_batched_views_give_the_same_features_as_materialised_arrays(mri, ext):
    from gate_plugins.memorization.detector import _Misaligned, _Transformed
    from gate_plugins.memorization.transforms import misalign

    train = mri["train_images"][:10]
    fn = transform_set("dihedral")[3][1]
    det = Detector(ext, "dihedral", batch_size=4)
    lazy = det.features(_Transformed(train, fn))
    eager = det.features(apply(train, fn))
    assert all(np.allclose(a, b) for a, b in zip(lazy, eager))
    src = np.tile(np.arange(10), 2)
    moved = det.features(_Misaligned(train, src, np.random.default_rng(0)))
    rng = np.random.default_rng(0)
    direct = det.features(np.stack([misalign(train[i].astype(np.float64), rng) for i in src]).astype(np.float32))
    assert all(np.allclose(a, b) for a, b in zip(moved, direct))
