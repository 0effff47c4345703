"""Matching under the invariance transforms on either side: every train image transformed (the reference
side) or every query (the query side), chosen by cost; and the nuisance covariance from a fixed sample."""

import numpy as np
import pytest

from gate_plugins.memorization import maths
from gate_plugins.memorization.detector import Detector, choose_match_side, inverse_transforms
from gate_plugins.memorization.transforms import apply, transform_set
from gate_plugins.mri.subjects import subject_slices
from gate_plugins.toolkit.extractors import build_extractor

DIHEDRAL = transform_set("dihedral")


def _pixels(images: np.ndarray) -> list[np.ndarray]:
    """Real slices as 16x16 block means, flattened: a feature that turns with the image (a dihedral
    transform of the image permutes it), the one kind of feature for which both sides must agree exactly."""
    n, h, w = images.shape
    small = images.reshape(n, 16, h // 16, 16, w // 16).mean(axis=(2, 4))
    return [small.reshape(n, -1).astype(np.float64), small.reshape(n, 8, 2, 8, 2).mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)]


def _turned(images: np.ndarray) -> maths.Turned:
    inverse = inverse_transforms("dihedral")
    return maths.Turned(np.arange(len(images)), [_pixels(apply(images, DIHEDRAL[inverse[t]][1]))
                                                 for t in range(1, len(DIHEDRAL))])


def test_inverse_transforms_undo_each_transform():
    x = np.random.default_rng(0).standard_normal((1, 5, 5))
    for t, u in enumerate(inverse_transforms("dihedral")):
        assert np.array_equal(apply(apply(x, DIHEDRAL[t][1]), DIHEDRAL[u][1]), x)


def test_both_sides_give_the_same_scores_when_the_features_turn_with_the_image():
    """With features that a transform permutes and a whitening that commutes with it (a train set closed
    under the group), matching the transformed queries against the train set is matching the queries
    against the transformed train set: the same similarities, null and p-values to float precision."""
    base, _ = subject_slices(range(1, 4), 6)
    train = np.concatenate([apply(base, fn) for _, fn in DIHEDRAL])  # closed under the group
    holdout, _ = subject_slices(range(201, 204), 8)
    novel, _ = subject_slices(range(301, 303), 8)
    rng = np.random.default_rng(3)
    copies = np.stack([apply(base[i][None], DIHEDRAL[t][1])[0] * 0.97 + rng.normal(0, 0.003, base[i].shape)
                       for i, t in zip(rng.integers(0, len(base), 8), rng.integers(0, 8, 8))])
    queries = np.concatenate([novel, copies]).astype(np.float64)
    reference = [np.concatenate(parts) for parts in zip(*[_pixels(apply(train, fn)) for _, fn in DIHEDRAL])]

    by_reference = maths.MemorizationIndex().fit(_pixels(train), reference, 8, _pixels(holdout))
    by_query = maths.MemorizationIndex().fit(_pixels(train), None, 8, _pixels(holdout),
                                             calibration_turned=_turned(holdout), null_turned=_turned(train))
    assert by_reference.side_ == "reference" and by_query.side_ == "query"
    np.testing.assert_allclose(by_query.null_, by_reference.null_, atol=1e-5)
    np.testing.assert_allclose(np.sort(by_query.paper_null_), np.sort(by_reference.paper_null_), atol=1e-5)
    a, b = by_reference.score(_pixels(queries)), by_query.score(_pixels(queries), _turned(queries))
    np.testing.assert_allclose(b.similarity, a.similarity, atol=1e-5)
    np.testing.assert_allclose(b.p_value, a.p_value, rtol=1e-3, atol=1e-9)
    assert a.similarity[len(novel):].min() > 0.99  # the copies are found, on both sides
    with pytest.raises(ValueError, match="turned views"):
        by_query.score(_pixels(queries))
    with pytest.raises(ValueError, match="turned views"):
        maths.MemorizationIndex().fit(_pixels(train), None, 8)


@pytest.fixture(scope="module")
def ext():
    return build_extractor("efficientnet-lite0", None, 2.0)


class _Counting:
    """The real extractor, counting the images it extracts."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, images, batch_size, progress):
        self.images += len(images)
        return self.inner.extract(images, batch_size, progress)


def test_query_side_finds_transformed_copies_as_the_reference_side_does(mri, ext):
    """On a network's features the sides differ for novel images, but a copy under any transform of the set
    is found on both, at similarity 1, with its train image and the transform it was copied under; the
    verification and p-values follow."""
    train = mri["train_images"][:40]
    holdout, ids = subject_slices(range(201, 205), 6)
    groups = [i.split("_")[0] for i in ids]
    rng = np.random.default_rng(5)
    src, how = rng.choice(len(train), 6, replace=False), rng.integers(1, 8, 6)
    copies = np.stack([apply(train[i][None], DIHEDRAL[t][1])[0] for i, t in zip(src, how)])
    novel, _ = subject_slices(range(301, 302), 6)
    queries = np.concatenate([copies, novel])
    scores = {}
    for side in ("reference", "query"):
        det = Detector(ext, "dihedral", match_side=side, verify_k=2)
        det.fit(train, calibration=holdout, calibration_groups=groups)
        assert det.side_ == side
        scores[side] = det.score(queries)
    for s in scores.values():
        np.testing.assert_allclose(s.similarity[:6], 1.0, atol=1e-3)
        assert s.nn_index[0][:6].tolist() == src.tolist() and s.nn_transform[0][:6].tolist() == how.tolist()
        assert s.verified_nn_index[:6].tolist() == src.tolist()
        # 24 holdout images fit no tail: a copy gets the smallest p-value there is, 2 x 1/25 (Bonferroni)
        np.testing.assert_allclose(s.p_value[:6], 2 / 25)
    np.testing.assert_allclose(scores["query"].verified[:6], scores["reference"].verified[:6], atol=1e-3)


def test_the_cheaper_side_is_chosen_and_a_train_image_costs_one_extraction(mri, ext):
    assert choose_match_side(200, 212, 8, 256) == "reference"      # the demo: 200 train, 212 queries
    assert choose_match_side(100_000, 400, 8, 256) == "query"
    assert choose_match_side(100_000, 400, 1, 256) == "reference"  # nothing to transform
    counted = _Counting(ext)
    train = mri["train_images"]
    det = Detector(counted, "dihedral", match_side="query", nuisance_images=16, null_sample=8, verify_k=0)
    det.fit(train[:48])
    first = counted.images
    counted.images = 0
    Detector(counted, "dihedral", match_side="query", nuisance_images=16, null_sample=8, verify_k=0).fit(train[:96])
    # 48 more train images cost 48 extractions: the nuisance copies (16 x 2) and the null's views (8 x 7) are fixed
    assert counted.images - first == 48
    assert first == 48 + 16 * 2 + 8 * 7
    counted.images = 0
    det.score(train[:5])
    assert counted.images == 5 * 8  # a query costs one extraction per transform


def test_nuisance_copies_come_from_a_fixed_seeded_sample(mri, ext, tmp_path):
    det = Detector(ext, "dihedral", nuisance_images=20)
    assert det.nuisance_sources(12).tolist() == list(range(12))  # all of a small set, as before
    pick = det.nuisance_sources(96)
    assert len(pick) == 20 and len(set(pick.tolist())) == 20 and np.array_equal(pick, det.nuisance_sources(96))
    train = mri["train_images"]
    _, nuisance, _ = Detector(ext, "dihedral", match_side="query", nuisance_images=20,
                              cache_dir=tmp_path).reference_features(train, side="query")
    assert all(len(d) == 40 for d in nuisance)
    # another sample size is another cache entry; the same one is a hit
    assert Detector(ext, "dihedral", nuisance_images=20, cache_dir=tmp_path).reference_features(
        train, side="query")[2] is True
    assert Detector(ext, "dihedral", nuisance_images=24, cache_dir=tmp_path).reference_features(
        train, side="query")[2] is False
